package scheduler

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Operator says whether a rule wants the new instance on the same node as the
// instances it names ("==") or on a different one ("!=").
type Operator string

// The two affinity operators.
const (
	OpEqual    Operator = "=="
	OpNotEqual Operator = "!="
)

// ValueType says how a rule's value is compared.
type ValueType string

// The value types, chosen from the value's shape exactly as Triton does: a
// regular expression if wrapped in slashes (length >= 3), a glob if it
// contains '*', otherwise an exact string.
const (
	ValueExact ValueType = "exact"
	ValueGlob  ValueType = "glob"
	ValueRegex ValueType = "re"
)

// Keys that name instances rather than tags.
const (
	KeyInstance  = "instance"
	KeyContainer = "container"
)

// DockerAffinitiesLabel is the container label that carries a JSON array of
// affinity expressions.
const DockerAffinitiesLabel = "com.docker.swarm.affinities"

// dockerLabelTagPrefix is how Docker labels are stored among instance tags;
// tag rules look at both spellings.
const dockerLabelTagPrefix = "docker:label:"

// The patterns printed in parse errors, spelt as CloudAPI prints them.
const (
	keyPattern   = `/^[a-z_][a-z0-9\-_.]+$/i`
	valuePattern = `/^[-a-z0-9:_\s.*/()?+[\]\\^$|]+$/i`
)

// Rule is one parsed affinity rule, e.g. `instance!=web*` or `role==~db`.
// Its zero value is not a valid rule; build rules with ParseRule.
//
// A Rule marshals to and from JSON as its text form.
type Rule struct {
	Key       string    // "instance", "container" or a tag name
	Operator  Operator  // OpEqual or OpNotEqual
	Value     string    // without the soft marker '~'
	Soft      bool      // "~": a preference, not a requirement
	ValueType ValueType // how Value is compared

	re *regexp.Regexp // compiled Value when ValueType is ValueRegex
}

// ParseRule parses one affinity expression in Triton's syntax:
// <key><op><value> with op "==" or "!=", a leading '~' in the value marking a
// soft rule. It returns an Invalid error carrying CloudAPI's message
// when the expression is malformed, and also when a /regex/ value is not a
// regular expression Go can compile.
func ParseRule(s string) (Rule, error) {
	op := OpEqual
	idx := strings.Index(s, string(OpEqual))
	if idx < 0 {
		op = OpNotEqual
		idx = strings.Index(s, string(OpNotEqual))
	}
	if idx < 0 {
		return Rule{}, errInvalid(
			`could not find operator in affinity rule: expected one of "==", "!=": %s`, jsonQuote(s))
	}
	r := Rule{Key: s[:idx], Operator: op, Value: s[idx+len(op):]}
	if !validKey(r.Key) {
		return Rule{}, errInvalid("invalid key in affinity rule: %s: %s does not match %s",
			jsonQuote(s), jsonQuote(r.Key), keyPattern)
	}
	if strings.HasPrefix(r.Value, "~") {
		r.Soft = true
		r.Value = r.Value[1:]
	}
	if !validValue(r.Value) {
		return Rule{}, errInvalid("invalid value in affinity rule: %s: %s does not match %s",
			jsonQuote(s), jsonQuote(r.Value), valuePattern)
	}
	switch {
	case len(r.Value) >= 3 && r.Value[0] == '/' && r.Value[len(r.Value)-1] == '/':
		r.ValueType = ValueRegex
		re, err := regexp.Compile(r.Value[1 : len(r.Value)-1])
		if err != nil {
			return Rule{}, errInvalid("invalid regular expression in affinity rule: %s: %v",
				jsonQuote(s), err)
		}
		r.re = re
	case strings.Contains(r.Value, "*"):
		r.ValueType = ValueGlob
	default:
		r.ValueType = ValueExact
	}
	return r, nil
}

// ParseRules parses each expression with ParseRule and returns the first
// error. An empty list gives no rules and no error.
func ParseRules(exprs []string) ([]Rule, error) {
	if len(exprs) == 0 {
		return nil, nil
	}
	rules := make([]Rule, 0, len(exprs))
	for _, s := range exprs {
		r, err := ParseRule(s)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// ParseDockerAffinities collects the affinity rules of a Docker container
// create: first the expressions in the com.docker.swarm.affinities label (a
// JSON array of strings), then every environment entry of the form
// "affinity:<expr>", in order. It returns an Invalid error when the label is
// not a JSON array of strings or an expression does not parse.
func ParseDockerAffinities(env []string, labels map[string]string) ([]Rule, error) {
	var exprs []string
	if label, ok := labels[DockerAffinitiesLabel]; ok && label != "" {
		var raw any
		dec := json.NewDecoder(strings.NewReader(label))
		dec.UseNumber()
		if err := dec.Decode(&raw); err != nil || dec.More() {
			if err == nil {
				err = fmt.Errorf("unexpected data after the array")
			}
			return nil, errInvalid("invalid affinities label: %s: %v", jsonQuote(label), err)
		}
		list, ok := raw.([]any)
		if !ok {
			return nil, errInvalid("affinities label is not an array: %s", label)
		}
		for i, v := range list {
			s, ok := v.(string)
			if !ok {
				return nil, errInvalid("affinities label element %d is not a string: %s", i, label)
			}
			exprs = append(exprs, s)
		}
	}
	for _, kv := range env {
		if rest, ok := strings.CutPrefix(kv, "affinity:"); ok {
			exprs = append(exprs, rest)
		}
	}
	return ParseRules(exprs)
}

// Locality is CloudAPI's deprecated placement hint: near and far are
// instance ids; strict makes them requirements rather than preferences.
// Near and Far accept a single string or an array in JSON.
type Locality struct {
	Strict bool   `json:"strict"`
	Near   IDList `json:"near,omitempty"`
	Far    IDList `json:"far,omitempty"`
}

// IDList is a list of instance ids that also decodes from a lone JSON string.
type IDList []string

func (s *IDList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = IDList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errInvalid("locality near/far must be an instance id or an array of them")
	}
	*s = many
	return nil
}

// LocalityToRules turns a deprecated locality hint into affinity rules: each
// near id becomes instance==<id> and each far id instance!=<id>, soft ("~")
// unless l.Strict. It returns Invalid for an id that is not a valid
// affinity value.
func LocalityToRules(l Locality) ([]Rule, error) {
	soft := ""
	if !l.Strict {
		soft = "~"
	}
	var exprs []string
	for _, id := range l.Near {
		exprs = append(exprs, KeyInstance+string(OpEqual)+soft+id)
	}
	for _, id := range l.Far {
		exprs = append(exprs, KeyInstance+string(OpNotEqual)+soft+id)
	}
	return ParseRules(exprs)
}

// String returns the rule's expression; ParseRule(r.String()) gives r back.
func (r Rule) String() string {
	soft := ""
	if r.Soft {
		soft = "~"
	}
	return r.Key + string(r.Operator) + soft + r.Value
}

// Equal reports whether two rules are the same rule.
func (r Rule) Equal(o Rule) bool {
	return r.Key == o.Key && r.Operator == o.Operator && r.Value == o.Value &&
		r.Soft == o.Soft && r.ValueType == o.ValueType
}

// MarshalText encodes the rule as its expression.
func (r Rule) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses an expression with ParseRule.
func (r *Rule) UnmarshalText(b []byte) error {
	p, err := ParseRule(string(b))
	if err != nil {
		return err
	}
	*r = p
	return nil
}

// Matches reports whether the resident is one of the instances the rule
// names; the operator is not applied here. Placement only offers residents of
// the requesting owner.
//
// For key instance/container an exact value matches the instance name, the
// id, or (for Docker short ids) a prefix of at least 12 hex digits of the id
// without dashes; globs and regular expressions match the name only, as in
// Triton. Any other key matches the stringified value of the tag with that
// name or of the Docker label stored as tag "docker:label:<key>".
// A glob's only wildcard is '*', matching any run of characters.
func (r Rule) Matches(res Resident) bool {
	if r.Key == KeyInstance || r.Key == KeyContainer {
		switch r.ValueType {
		case ValueExact:
			return res.Name == r.Value || res.ID == r.Value || idPrefixMatch(res.ID, r.Value)
		default:
			return res.Name != "" && r.matchValue(res.Name)
		}
	}
	if v, ok := tagString(res.Tags[r.Key]); ok && r.matchValue(v) {
		return true
	}
	if v, ok := tagString(res.Tags[dockerLabelTagPrefix+r.Key]); ok && r.matchValue(v) {
		return true
	}
	return false
}

// exactKeys returns the index keys under which the snapshot finds the
// residents r matches, or false when r needs testing resident by resident
// (globs, regular expressions, possible Docker short ids).
func (r Rule) exactKeys() ([]string, bool) {
	if r.ValueType != ValueExact {
		return nil, false
	}
	if r.Key == KeyInstance || r.Key == KeyContainer {
		if len(r.Value) >= 12 && isLowerHex(r.Value) { // maybe a Docker short id
			return nil, false
		}
		return []string{nameKey(r.Value), idKey(r.Value)}, true
	}
	return []string{tagKey(r.Key, r.Value)}, true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func (r Rule) matchValue(s string) bool {
	switch r.ValueType {
	case ValueGlob:
		return globMatch(r.Value, s)
	case ValueRegex:
		re := r.re
		if re == nil { // a Rule built by hand rather than parsed
			var err error
			if re, err = regexp.Compile(r.Value[1 : len(r.Value)-1]); err != nil {
				return false
			}
		}
		return re.MatchString(s)
	default:
		return s == r.Value
	}
}

// idPrefixMatch reports whether v is a Docker-style short id of id: at least
// 12 lowercase hex digits that prefix id with its dashes removed.
func idPrefixMatch(id, v string) bool {
	if len(v) < 12 || id == "" || !isLowerHex(v) {
		return false
	}
	return strings.HasPrefix(strings.ReplaceAll(id, "-", ""), v)
}

// tagString renders a tag value the way Triton compares it: strings as they
// are, booleans and numbers in their JSON spelling.
func tagString(v any) (string, bool) {
	switch t := v.(type) {
	case string:
		return t, true
	case bool:
		return strconv.FormatBool(t), true
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64), true
	case float32:
		return strconv.FormatFloat(float64(t), 'f', -1, 32), true
	case int:
		return strconv.Itoa(t), true
	case int64:
		return strconv.FormatInt(t, 10), true
	case json.Number:
		return t.String(), true
	}
	return "", false
}

// globMatch matches s against a pattern whose only wildcard is '*'.
func globMatch(pattern, s string) bool {
	px, sx := 0, 0
	starP, starS := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pattern) && pattern[px] == '*':
			starP, starS = px, sx
			px++
		case px < len(pattern) && pattern[px] == s[sx]:
			px++
			sx++
		case starP >= 0:
			starS++
			px, sx = starP+1, starS
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}

func isASCIILetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool       { return c >= '0' && c <= '9' }

// validKey implements /^[a-z_][a-z0-9\-_.]+$/i.
func validKey(k string) bool {
	if len(k) < 2 || !(isASCIILetter(k[0]) || k[0] == '_') {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !(isASCIILetter(c) || isDigit(c) || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validValue implements /^[-a-z0-9:_\s.*/()?+[\]\\^$|]+$/i with JavaScript's
// meaning of \s.
func validValue(v string) bool {
	if v == "" {
		return false
	}
	for _, c := range v {
		if c < 0x80 {
			b := byte(c)
			if isASCIILetter(b) || isDigit(b) || strings.IndexByte("-:_.*/()?+[]\\^$|", b) >= 0 {
				continue
			}
		}
		if !jsSpace(c) {
			return false
		}
	}
	return true
}

// jsSpace reports whether c is in JavaScript's \s class.
func jsSpace(c rune) bool {
	switch c {
	case '\t', '\n', '\v', '\f', '\r', ' ', 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000, 0xfeff:
		return true
	}
	return c >= 0x2000 && c <= 0x200a
}

// jsonQuote quotes s as JSON, as CloudAPI's %j does in its messages.
func jsonQuote(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return strconv.Quote(s)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

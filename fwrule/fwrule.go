// Package fwrule parses and renders Triton's firewall rule language:
//
//	FROM <targets> TO <targets> <ALLOW|BLOCK> <protocol> <ports or types>
//
// Targets are `any`, `all vms`, `vm <uuid>`, `ip <address>`,
// `subnet <cidr>`, `tag "<name>"` and `tag "<name>" = "<value>"`, alone or as
// a parenthesised list joined by OR. Protocols are tcp and udp with
// `PORT <n>`, `PORT all`, `PORTS <n>, <lo> - <hi>` or `(PORT a AND PORT b)`,
// and icmp with `TYPE <n> [CODE <m>]` or `TYPE all`. Keywords are
// case-insensitive. A rule may end with `PRIORITY <0-100>`. Rule.String renders the canonical text, which parses back
// to the same rule.
//
// It is pure: no I/O. Imports: the standard library and api/errdefs.
package fwrule

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"flotilla/api/errdefs"
)

// MaxLen bounds the text of one rule.
const MaxLen = 4096

// Action is what a rule does with the traffic it matches.
type Action string

// The two actions.
const (
	Allow Action = "ALLOW"
	Block Action = "BLOCK"
)

// Kind is the sort of a target.
type Kind string

// The target kinds.
const (
	KindAny    Kind = "any"
	KindAllVMs Kind = "all vms"
	KindVM     Kind = "vm"
	KindIP     Kind = "ip"
	KindSubnet Kind = "subnet"
	KindTag    Kind = "tag"
)

// Target is one side's element: Value is the instance id, address, CIDR or
// tag name; TagValue is set for `tag "name" = "value"`.
type Target struct {
	Kind     Kind
	Value    string
	TagValue *string
}

// PortRange is an inclusive range of ports; a single port has Lo == Hi.
type PortRange struct {
	Lo int `json:"lo"`
	Hi int `json:"hi"`
}

// Rule is a parsed rule.
type Rule struct {
	From, To []Target
	Action   Action
	Protocol string // "tcp", "udp" or "icmp"
	// AllPorts is `PORT all` (tcp/udp) or `TYPE all` (icmp).
	AllPorts bool
	Ports    []PortRange // tcp/udp, sorted, merged
	// ICMPType and ICMPCode are set for icmp without TYPE all; ICMPCode is
	// -1 when no CODE was given.
	ICMPType, ICMPCode int
	// Priority (0-100, `PRIORITY n`) orders rules on an instance: higher
	// first; at equal priority BLOCK comes before ALLOW.
	Priority int
}

// Matches reports whether target t selects an instance with the given id,
// addresses and tags. `any`, `ip` and `subnet` select an instance when one
// of its addresses is in them.
func (t Target) Matches(id string, ips []netip.Addr, tags map[string]any) bool {
	switch t.Kind {
	case KindAny, KindAllVMs:
		return true
	case KindVM:
		return strings.EqualFold(t.Value, id)
	case KindIP:
		for _, ip := range ips {
			if ip.String() == t.Value {
				return true
			}
		}
	case KindSubnet:
		p, err := netip.ParsePrefix(t.Value)
		if err != nil {
			return false
		}
		for _, ip := range ips {
			if p.Contains(ip) {
				return true
			}
		}
	case KindTag:
		v, ok := tags[t.Value]
		if !ok {
			return false
		}
		return t.TagValue == nil || TagString(v) == *t.TagValue
	}
	return false
}

// SelectsInstances reports whether t names instances (rather than addresses).
func (t Target) SelectsInstances() bool {
	return t.Kind == KindAllVMs || t.Kind == KindVM || t.Kind == KindTag
}

// TagString renders a tag's JSON value the way rules compare it: strings as
// they are, numbers and booleans in their JSON form.
func TagString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case nil:
		return ""
	default:
		return fmt.Sprint(x)
	}
}

// String renders the rule's canonical text.
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString("FROM ")
	writeTargets(&b, r.From)
	b.WriteString(" TO ")
	writeTargets(&b, r.To)
	b.WriteString(" " + string(r.Action) + " " + r.Protocol + " ")
	switch {
	case r.Protocol == "icmp" && r.AllPorts:
		b.WriteString("TYPE all")
	case r.Protocol == "icmp":
		b.WriteString("TYPE " + strconv.Itoa(r.ICMPType))
		if r.ICMPCode >= 0 {
			b.WriteString(" CODE " + strconv.Itoa(r.ICMPCode))
		}
	case r.AllPorts:
		b.WriteString("PORT all")
	case len(r.Ports) == 1 && r.Ports[0].Lo == r.Ports[0].Hi:
		b.WriteString("PORT " + strconv.Itoa(r.Ports[0].Lo))
	default:
		b.WriteString("PORTS ")
		for i, p := range r.Ports {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(strconv.Itoa(p.Lo))
			if p.Hi != p.Lo {
				b.WriteString(" - " + strconv.Itoa(p.Hi))
			}
		}
	}
	if r.Priority > 0 {
		b.WriteString(" PRIORITY " + strconv.Itoa(r.Priority))
	}
	return b.String()
}

func writeTargets(b *strings.Builder, ts []Target) {
	if len(ts) > 1 {
		b.WriteString("(")
	}
	for i, t := range ts {
		if i > 0 {
			b.WriteString(" OR ")
		}
		b.WriteString(t.String())
	}
	if len(ts) > 1 {
		b.WriteString(")")
	}
}

// String renders one target.
func (t Target) String() string {
	switch t.Kind {
	case KindAny, KindAllVMs:
		return string(t.Kind)
	case KindTag:
		s := "tag " + quote(t.Value)
		if t.TagValue != nil {
			s += " = " + quote(*t.TagValue)
		}
		return s
	}
	return string(t.Kind) + " " + t.Value
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// Parse parses one rule. Errors are Invalid and say what was expected where.
func Parse(text string) (Rule, error) {
	if len(text) > MaxLen {
		return Rule{}, errdefs.InvalidArgument("rule is %d bytes long; the limit is %d", len(text), MaxLen)
	}
	toks, err := lex(text)
	if err != nil {
		return Rule{}, err
	}
	p := &parser{toks: toks}
	r, err := p.rule()
	if err != nil {
		return Rule{}, errdefs.InvalidArgument("invalid firewall rule %q: %s (rules look like: FROM any TO tag \"role\" = \"web\" ALLOW tcp PORT 80)", text, err)
	}
	return r, nil
}

type token struct {
	text   string
	quoted bool
}

func lex(s string) ([]token, error) {
	var out []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '(' || c == ')' || c == ',' || c == '=':
			out = append(out, token{text: string(c)})
			i++
		case c == '"':
			var b strings.Builder
			j := i + 1
			for ; j < len(s) && s[j] != '"'; j++ {
				if s[j] == '\\' && j+1 < len(s) {
					j++
				}
				b.WriteByte(s[j])
			}
			if j >= len(s) {
				return nil, errdefs.InvalidArgument("invalid firewall rule %q: unterminated quoted string", s)
			}
			out = append(out, token{text: b.String(), quoted: true})
			i = j + 1
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t\n\r(),=\"", rune(s[j])) {
				j++
			}
			out = append(out, token{text: s[i:j]})
			i = j
		}
	}
	return out, nil
}

type parser struct {
	toks []token
	pos  int
}

func (p *parser) peek() (token, bool) {
	if p.pos >= len(p.toks) {
		return token{}, false
	}
	return p.toks[p.pos], true
}

func (p *parser) next() (token, error) {
	t, ok := p.peek()
	if !ok {
		return token{}, fmt.Errorf("unexpected end of rule")
	}
	p.pos++
	return t, nil
}

// keyword reports whether the next token is the unquoted word kw and
// consumes it if so.
func (p *parser) keyword(kw string) bool {
	t, ok := p.peek()
	if ok && !t.quoted && strings.EqualFold(t.text, kw) {
		p.pos++
		return true
	}
	return false
}

func (p *parser) expect(kw string) error {
	if p.keyword(kw) {
		return nil
	}
	t, ok := p.peek()
	if !ok {
		return fmt.Errorf("expected %s at the end", kw)
	}
	return fmt.Errorf("expected %s, found %q", kw, t.text)
}

func (p *parser) rule() (Rule, error) {
	var r Rule
	var err error
	if err = p.expect("FROM"); err != nil {
		return r, err
	}
	if r.From, err = p.targets(); err != nil {
		return r, err
	}
	if err = p.expect("TO"); err != nil {
		return r, err
	}
	if r.To, err = p.targets(); err != nil {
		return r, err
	}
	switch {
	case p.keyword("ALLOW"):
		r.Action = Allow
	case p.keyword("BLOCK"):
		r.Action = Block
	default:
		return r, fmt.Errorf("expected ALLOW or BLOCK after the targets")
	}
	t, err := p.next()
	if err != nil {
		return r, fmt.Errorf("expected a protocol (tcp, udp or icmp)")
	}
	r.Protocol = strings.ToLower(t.text)
	r.ICMPCode = -1
	switch {
	case t.quoted:
		return r, fmt.Errorf("expected a protocol (tcp, udp or icmp), found %q", t.text)
	case r.Protocol == "tcp" || r.Protocol == "udp":
		err = p.ports(&r)
	case r.Protocol == "icmp":
		err = p.icmp(&r)
	default:
		return r, fmt.Errorf("unknown protocol %q: use tcp, udp or icmp", t.text)
	}
	if err != nil {
		return r, err
	}
	if p.keyword("PRIORITY") {
		t, err := p.next()
		n, aerr := strconv.Atoi(t.text)
		if err != nil || t.quoted || aerr != nil || n < 0 || n > 100 {
			return r, fmt.Errorf("PRIORITY needs a number from 0 to 100")
		}
		r.Priority = n
	}
	if t, ok := p.peek(); ok {
		return r, fmt.Errorf("unexpected %q after the end of the rule", t.text)
	}
	if !anySelectsInstances(r.From) && !anySelectsInstances(r.To) {
		return r, fmt.Errorf("one side must name instances (all vms, vm <uuid> or tag \"name\")")
	}
	return r, nil
}

func anySelectsInstances(ts []Target) bool {
	for _, t := range ts {
		if t.SelectsInstances() {
			return true
		}
	}
	return false
}

func (p *parser) targets() ([]Target, error) {
	if !p.keyword("(") {
		t, err := p.target()
		if err != nil {
			return nil, err
		}
		return []Target{t}, nil
	}
	var out []Target
	for {
		t, err := p.target()
		if err != nil {
			return nil, err
		}
		if !contains(out, t) {
			out = append(out, t)
		}
		if p.keyword(")") {
			break
		}
		if err := p.expect("OR"); err != nil {
			return nil, fmt.Errorf("in a target list: %w", err)
		}
	}
	if len(out) > 1 {
		for _, t := range out {
			if t.Kind == KindAny || t.Kind == KindAllVMs {
				return nil, fmt.Errorf("%q cannot be combined with other targets", string(t.Kind))
			}
		}
	}
	return out, nil
}

func contains(ts []Target, t Target) bool {
	for _, x := range ts {
		if x.String() == t.String() {
			return true
		}
	}
	return false
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

func (p *parser) target() (Target, error) {
	t, err := p.next()
	if err != nil {
		return Target{}, fmt.Errorf("expected a target (any, all vms, vm, ip, subnet or tag)")
	}
	if t.quoted {
		return Target{}, fmt.Errorf("expected a target (any, all vms, vm, ip, subnet or tag), found %q", t.text)
	}
	switch strings.ToLower(t.text) {
	case "any":
		return Target{Kind: KindAny}, nil
	case "all":
		if !p.keyword("vms") {
			return Target{}, fmt.Errorf(`expected "vms" after "all"`)
		}
		return Target{Kind: KindAllVMs}, nil
	case "vm":
		v, err := p.next()
		if err != nil || v.quoted || !uuidRE.MatchString(v.text) {
			return Target{}, fmt.Errorf("vm needs an instance UUID")
		}
		return Target{Kind: KindVM, Value: strings.ToLower(v.text)}, nil
	case "ip":
		v, err := p.next()
		if err != nil || v.quoted {
			return Target{}, fmt.Errorf("ip needs an address")
		}
		a, err := netip.ParseAddr(v.text)
		if err != nil || a.Zone() != "" {
			return Target{}, fmt.Errorf("%q is not an IP address", v.text)
		}
		return Target{Kind: KindIP, Value: a.Unmap().String()}, nil
	case "subnet":
		v, err := p.next()
		if err != nil || v.quoted {
			return Target{}, fmt.Errorf("subnet needs a CIDR (like 10.0.0.0/24)")
		}
		pr, err := netip.ParsePrefix(v.text)
		if err != nil || pr.Addr().Zone() != "" {
			return Target{}, fmt.Errorf("%q is not a CIDR (like 10.0.0.0/24)", v.text)
		}
		if pr.Masked() != pr {
			return Target{}, fmt.Errorf("subnet %s has host bits set; write %s", pr, pr.Masked())
		}
		return Target{Kind: KindSubnet, Value: pr.String()}, nil
	case "tag":
		name, err := p.next()
		if err != nil || !name.quoted && !plainWord(name.text) || name.text == "" {
			return Target{}, fmt.Errorf("tag needs a name (tag \"role\")")
		}
		tg := Target{Kind: KindTag, Value: name.text}
		if p.keyword("=") {
			v, err := p.next()
			if err != nil || !v.quoted && !plainWord(v.text) {
				return Target{}, fmt.Errorf("tag %q = needs a value", name.text)
			}
			tg.TagValue = &v.text
		}
		return tg, nil
	}
	return Target{}, fmt.Errorf("unknown target %q: use any, all vms, vm <uuid>, ip <address>, subnet <cidr> or tag \"name\"", t.text)
}

// plainWord reports whether an unquoted token may stand for a tag name or
// value (not a keyword or punctuation).
func plainWord(s string) bool {
	switch strings.ToUpper(s) {
	case "", "(", ")", ",", "=", "OR", "TO", "ALLOW", "BLOCK", "FROM", "AND":
		return false
	}
	return true
}

func (p *parser) ports(r *Rule) error {
	paren := p.keyword("(")
	switch {
	case p.keyword("PORTS"):
		if paren {
			return fmt.Errorf("PORTS takes no parentheses: write PORTS 80, 443")
		}
		for {
			lo, hi, err := p.portRange()
			if err != nil {
				return err
			}
			r.Ports = append(r.Ports, PortRange{lo, hi})
			if !p.keyword(",") {
				break
			}
		}
	case p.keyword("PORT"):
		if !paren && p.keyword("all") {
			r.AllPorts = true
			return nil
		}
		for {
			n, err := p.port()
			if err != nil {
				return err
			}
			r.Ports = append(r.Ports, PortRange{n, n})
			if !paren || !p.keyword("AND") {
				break
			}
			if err := p.expect("PORT"); err != nil {
				return err
			}
		}
		if paren {
			if err := p.expect(")"); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%s needs PORT <n>, PORTS <n>, <lo> - <hi> or PORT all", r.Protocol)
	}
	r.Ports = mergePorts(r.Ports)
	return nil
}

func (p *parser) port() (int, error) {
	t, err := p.next()
	if err != nil || t.quoted {
		return 0, fmt.Errorf("expected a port number")
	}
	n, err := strconv.Atoi(t.text)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", t.text)
	}
	return n, nil
}

func (p *parser) portRange() (int, int, error) {
	t, ok := p.peek()
	if ok && !t.quoted && strings.Contains(t.text, "-") && t.text != "-" {
		// "50-60" written without spaces.
		p.pos++
		a, b, _ := strings.Cut(t.text, "-")
		p.toks = append(p.toks[:p.pos], append([]token{{text: a}, {text: "-"}, {text: b}}, p.toks[p.pos:]...)...)
	}
	lo, err := p.port()
	if err != nil {
		return 0, 0, err
	}
	if !p.keyword("-") {
		return lo, lo, nil
	}
	hi, err := p.port()
	if err != nil {
		return 0, 0, err
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("port range %d - %d runs backwards", lo, hi)
	}
	return lo, hi, nil
}

func mergePorts(ps []PortRange) []PortRange {
	sort.Slice(ps, func(i, j int) bool { return ps[i].Lo < ps[j].Lo || ps[i].Lo == ps[j].Lo && ps[i].Hi < ps[j].Hi })
	var out []PortRange
	for _, p := range ps {
		if n := len(out); n > 0 && p.Lo <= out[n-1].Hi+1 {
			out[n-1].Hi = max(out[n-1].Hi, p.Hi)
			continue
		}
		out = append(out, p)
	}
	return out
}

func (p *parser) icmp(r *Rule) error {
	if err := p.expect("TYPE"); err != nil {
		return fmt.Errorf("icmp needs TYPE <n> [CODE <m>] or TYPE all")
	}
	if p.keyword("all") {
		r.AllPorts = true
		return nil
	}
	n, err := p.byteNum("TYPE")
	if err != nil {
		return err
	}
	r.ICMPType = n
	if p.keyword("CODE") {
		if r.ICMPCode, err = p.byteNum("CODE"); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) byteNum(what string) (int, error) {
	t, err := p.next()
	if err != nil || t.quoted {
		return 0, fmt.Errorf("%s needs a number from 0 to 255", what)
	}
	n, err := strconv.Atoi(t.text)
	if err != nil || n < 0 || n > 255 {
		return 0, fmt.Errorf("%s %q is not a number from 0 to 255", what, t.text)
	}
	return n, nil
}

package dockerfile

import (
	"fmt"
	"strings"
	"unicode"
)

// Lookup returns the value of a build variable (an ARG or ENV) and whether
// it is set.
type Lookup func(name string) (string, bool)

// Words splits s at unquoted whitespace into words, removing quotes and
// escapes and expanding $VAR, ${VAR}, ${VAR:-word}, ${VAR-word},
// ${VAR:+word}, ${VAR+word}, ${VAR:?msg} and ${VAR?msg} with lookup. An
// unquoted expansion is split at whitespace too, as the shell does.
func Words(s string, escape rune, lookup Lookup) ([]string, error) {
	p := &wordProc{in: []rune(s), esc: escape, lookup: lookup, split: true}
	return p.run()
}

// Word processes s as one word: quotes and escapes removed, variables
// expanded, whitespace kept.
func Word(s string, escape rune, lookup Lookup) (string, error) {
	p := &wordProc{in: []rune(s), esc: escape, lookup: lookup}
	ws, err := p.run()
	if err != nil {
		return "", err
	}
	return strings.Join(ws, ""), nil
}

type wordProc struct {
	in     []rune
	pos    int
	esc    rune
	lookup Lookup
	split  bool

	words []string
	cur   strings.Builder
	has   bool // cur is a word, even if empty ("")
}

func (p *wordProc) peek() (rune, bool) {
	if p.pos >= len(p.in) {
		return 0, false
	}
	return p.in[p.pos], true
}

func (p *wordProc) next() (rune, bool) {
	r, ok := p.peek()
	if ok {
		p.pos++
	}
	return r, ok
}

func (p *wordProc) add(r rune) {
	p.cur.WriteRune(r)
	p.has = true
}

func (p *wordProc) end() {
	if p.has {
		p.words = append(p.words, p.cur.String())
	}
	p.cur.Reset()
	p.has = false
}

// addUnquoted adds an unquoted expansion, split at whitespace when words
// are being split.
func (p *wordProc) addUnquoted(v string) {
	if !p.split {
		p.cur.WriteString(v)
		p.has = p.has || v != ""
		return
	}
	for _, r := range v {
		if unicode.IsSpace(r) {
			p.end()
			continue
		}
		p.add(r)
	}
}

func (p *wordProc) run() ([]string, error) {
	for {
		r, ok := p.next()
		if !ok {
			break
		}
		switch {
		case p.split && unicode.IsSpace(r):
			p.end()
		case r == p.esc:
			n, ok := p.next()
			if !ok {
				p.add(r) // a trailing escape stays
				break
			}
			p.add(n)
		case r == '\'':
			p.has = true
			if err := p.single(); err != nil {
				return nil, err
			}
		case r == '"':
			p.has = true
			if err := p.double(); err != nil {
				return nil, err
			}
		case r == '$':
			v, literal, err := p.dollar()
			if err != nil {
				return nil, err
			}
			if literal {
				p.add('$')
			} else {
				p.addUnquoted(v)
			}
		default:
			p.add(r)
		}
	}
	p.end()
	if p.words == nil {
		p.words = []string{}
	}
	return p.words, nil
}

func (p *wordProc) single() error {
	for {
		r, ok := p.next()
		if !ok {
			return fmt.Errorf("unexpected end of statement while looking for matching single-quote")
		}
		if r == '\'' {
			return nil
		}
		p.cur.WriteRune(r)
	}
}

func (p *wordProc) double() error {
	for {
		r, ok := p.next()
		if !ok {
			return fmt.Errorf("unexpected end of statement while looking for matching double-quote")
		}
		switch r {
		case '"':
			return nil
		case '$':
			v, literal, err := p.dollar()
			if err != nil {
				return err
			}
			if literal {
				p.cur.WriteRune('$')
			} else {
				p.cur.WriteString(v)
			}
		case p.esc:
			n, ok := p.peek()
			if ok && (n == '"' || n == '$' || n == p.esc) {
				p.pos++
				p.cur.WriteRune(n)
			} else {
				p.cur.WriteRune(r)
			}
		default:
			p.cur.WriteRune(r)
		}
	}
}

func isNameRune(r rune, first bool) bool {
	return r == '_' || unicode.IsLetter(r) && r < unicode.MaxASCII || !first && r >= '0' && r <= '9'
}

func (p *wordProc) get(name string) (string, bool) {
	if p.lookup == nil {
		return "", false
	}
	return p.lookup(name)
}

// dollar reads what follows a '$': the expansion's value, or literal when
// the '$' is not followed by a variable.
func (p *wordProc) dollar() (string, bool, error) {
	r, ok := p.peek()
	if !ok {
		return "", true, nil
	}
	if r != '{' {
		if !isNameRune(r, true) {
			return "", true, nil
		}
		start := p.pos
		for p.pos < len(p.in) && isNameRune(p.in[p.pos], false) {
			p.pos++
		}
		v, _ := p.get(string(p.in[start:p.pos]))
		return v, false, nil
	}
	p.pos++ // '{'
	start := p.pos
	for p.pos < len(p.in) && isNameRune(p.in[p.pos], p.pos == start) {
		p.pos++
	}
	name := string(p.in[start:p.pos])
	if name == "" {
		return "", false, fmt.Errorf("bad substitution: a variable name must follow ${")
	}
	r, ok = p.next()
	if !ok {
		return "", false, fmt.Errorf("missing '}' in ${%s", name)
	}
	if r == '}' {
		v, _ := p.get(name)
		return v, false, nil
	}
	colon := false
	if r == ':' {
		colon = true
		if r, ok = p.next(); !ok {
			return "", false, fmt.Errorf("missing '}' in ${%s:", name)
		}
	}
	if r != '-' && r != '+' && r != '?' {
		return "", false, fmt.Errorf("unsupported modifier (%c) in substitution ${%s...}: use :-, -, :+, +, :? or ?", r, name)
	}
	// The word runs to the matching '}', itself processed as a word.
	depth, wstart := 1, p.pos
	for p.pos < len(p.in) {
		c := p.in[p.pos]
		if c == p.esc {
			p.pos += 2
			continue
		}
		if c == '{' {
			depth++
		}
		if c == '}' {
			if depth--; depth == 0 {
				break
			}
		}
		p.pos++
	}
	if p.pos >= len(p.in) {
		return "", false, fmt.Errorf("missing '}' in ${%s", name)
	}
	raw := string(p.in[wstart:p.pos])
	p.pos++ // '}'
	word, err := Word(raw, p.esc, p.lookup)
	if err != nil {
		return "", false, err
	}
	v, set := p.get(name)
	present := set && (!colon || v != "")
	switch r {
	case '-':
		if present {
			return v, false, nil
		}
		return word, false, nil
	case '+':
		if present {
			return word, false, nil
		}
		return "", false, nil
	default: // '?'
		if present {
			return v, false, nil
		}
		if word == "" {
			word = "is not allowed to be unset"
		}
		return "", false, fmt.Errorf("%s: %s", name, word)
	}
}

// Fields splits s at whitespace outside quotes, keeping quotes and
// escapes for Word to process.
func Fields(s string, escape rune) []string {
	var out []string
	var cur strings.Builder
	var quote rune
	has := false
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote == 0 && unicode.IsSpace(r):
			if has {
				out = append(out, cur.String())
				cur.Reset()
				has = false
			}
			continue
		case r == escape && quote != '\'' && i+1 < len(rs):
			cur.WriteRune(r)
			i++
			r = rs[i]
		case quote == 0 && (r == '\'' || r == '"'):
			quote = r
		case r == quote:
			quote = 0
		}
		cur.WriteRune(r)
		has = true
	}
	if has {
		out = append(out, cur.String())
	}
	return out
}

// Pair is one key=value of ENV, LABEL or ARG.
type Pair struct {
	Key, Value string
	HasValue   bool
}

// Pairs parses the arguments of ENV and LABEL: key=value words (quotes,
// escapes and variables processed in each part), or the legacy form "KEY
// value words" (one pair, the value the rest of the line).
func Pairs(cmd, rest string, escape rune, lookup Lookup) ([]Pair, error) {
	fields := Fields(rest, escape)
	if len(fields) == 0 {
		return nil, fmt.Errorf("%s requires at least one argument", cmd)
	}
	if !strings.Contains(fields[0], "=") {
		// Legacy form.
		if len(fields) < 2 {
			return nil, fmt.Errorf("%s %s: give it a value (%s %s=value)", cmd, fields[0], cmd, fields[0])
		}
		key, err := Word(fields[0], escape, lookup)
		if err != nil {
			return nil, err
		}
		val := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), fields[0]))
		if val, err = Word(val, escape, lookup); err != nil {
			return nil, err
		}
		if key == "" {
			return nil, fmt.Errorf("%s names can not be blank", cmd)
		}
		return []Pair{{Key: key, Value: val, HasValue: true}}, nil
	}
	out := make([]Pair, 0, len(fields))
	for _, f := range fields {
		rk, rv, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("%s: %q is not of the form key=value (quote values that hold spaces)", cmd, f)
		}
		key, err := Word(rk, escape, lookup)
		if err != nil {
			return nil, err
		}
		if key == "" {
			return nil, fmt.Errorf("%s names can not be blank", cmd)
		}
		val, err := Word(rv, escape, lookup)
		if err != nil {
			return nil, err
		}
		out = append(out, Pair{Key: key, Value: val, HasValue: true})
	}
	return out, nil
}

// Args parses the arguments of ARG: NAME or NAME=default words. Defaults
// are processed with lookup (the variables defined before it).
func Args(rest string, escape rune, lookup Lookup) ([]Pair, error) {
	fields := Fields(rest, escape)
	if len(fields) == 0 {
		return nil, fmt.Errorf("ARG requires at least one argument")
	}
	out := make([]Pair, 0, len(fields))
	for _, f := range fields {
		rk, rv, ok := strings.Cut(f, "=")
		if rk == "" || strings.ContainsFunc(rk, func(r rune) bool { return !isNameRune(r, false) }) {
			return nil, fmt.Errorf("ARG: invalid name %q: use letters, digits and _", rk)
		}
		p := Pair{Key: rk, HasValue: ok}
		if ok {
			v, err := Word(rv, escape, lookup)
			if err != nil {
				return nil, err
			}
			p.Value = v
		}
		out = append(out, p)
	}
	return out, nil
}

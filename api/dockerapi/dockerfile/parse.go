// Package dockerfile parses Dockerfiles for the Docker endpoint's builder
// (`docker build`, the classic builder's protocol): parser directives
// (escape, syntax), comments, line continuations, instructions with their
// --flags and their JSON (exec) or shell forms, and the shell-like word
// processing (quotes, escapes, $VAR and ${VAR...} expansion) that
// instructions apply to their arguments at build time.
//
// Imports: the standard library only.
package dockerfile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// MaxSize bounds the Dockerfiles Parse accepts.
const MaxSize = 4 << 20

// Instruction is one instruction of a Dockerfile.
type Instruction struct {
	// Cmd is the instruction's keyword in upper case ("RUN").
	Cmd string
	// Line is the 1-based line the instruction starts on.
	Line int
	// Original is the instruction as written, continuations joined (as
	// "Step N/M : ..." shows it).
	Original string
	// Flags are the leading --name=value (or --name) options, by name.
	Flags []Flag
	// Rest is the argument text after the flags, trimmed.
	Rest string
	// JSON is set when Rest is a JSON array of strings (the exec form);
	// Args then holds its elements.
	JSON bool
	Args []string
}

// Flag is one --name[=value] option of an instruction.
type Flag struct {
	Name, Value string
	HasValue    bool
}

// Flag returns the value of flag name and whether it was given.
func (in Instruction) Flag(name string) (string, bool) {
	for _, f := range in.Flags {
		if f.Name == name {
			return f.Value, true
		}
	}
	return "", false
}

// File is a parsed Dockerfile.
type File struct {
	// Escape is the escape character (the escape directive: '\\' or '`').
	Escape rune
	// Syntax is the syntax directive's value, if any (a frontend image
	// for BuildKit; the classic builder ignores it).
	Syntax       string
	Instructions []Instruction
}

// Error is a parse error with its line.
type Error struct {
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("Dockerfile parse error on line %d: %s", e.Line, e.Msg)
	}
	return "Dockerfile parse error: " + e.Msg
}

// flagged lists the instructions whose leading --options are flags.
var flagged = map[string]bool{"FROM": true, "RUN": true, "COPY": true, "ADD": true, "HEALTHCHECK": true}

// jsonForms lists the instructions with an exec (JSON array) form.
var jsonForms = map[string]bool{"RUN": true, "CMD": true, "ENTRYPOINT": true, "COPY": true, "ADD": true,
	"SHELL": true, "VOLUME": true, "HEALTHCHECK": true}

// Known lists every instruction keyword Parse accepts.
var Known = map[string]bool{"FROM": true, "RUN": true, "CMD": true, "ENTRYPOINT": true, "COPY": true, "ADD": true,
	"ENV": true, "ARG": true, "WORKDIR": true, "USER": true, "LABEL": true, "EXPOSE": true, "VOLUME": true,
	"STOPSIGNAL": true, "SHELL": true, "HEALTHCHECK": true, "ONBUILD": true, "MAINTAINER": true}

// Parse reads a Dockerfile. It returns an *Error for an unknown
// instruction, an instruction without arguments, a bad escape directive or
// a file over MaxSize; it never panics on any input.
func Parse(r io.Reader) (*File, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, &Error{Msg: "read the Dockerfile: " + err.Error()}
	}
	if len(data) > MaxSize {
		return nil, &Error{Msg: fmt.Sprintf("the Dockerfile is larger than %d bytes", MaxSize)}
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	f := &File{Escape: '\\'}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), MaxSize+1)
	var lines []string
	for sc.Scan() {
		lines = append(lines, strings.TrimSuffix(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		return nil, &Error{Msg: "read the Dockerfile: " + err.Error()}
	}
	i := 0
	// Parser directives: "# key=value" lines at the very top.
	seen := map[string]bool{}
	for ; i < len(lines); i++ {
		k, v, ok := directive(lines[i])
		if !ok {
			break
		}
		if seen[k] {
			return nil, &Error{Line: i + 1, Msg: fmt.Sprintf("only one %s parser directive can be used", k)}
		}
		seen[k] = true
		switch k {
		case "escape":
			if v != "\\" && v != "`" {
				return nil, &Error{Line: i + 1, Msg: fmt.Sprintf("invalid escape token '%s' does not match ` or \\", v)}
			}
			f.Escape = rune(v[0])
		case "syntax":
			f.Syntax = v
		}
	}
	esc := string(f.Escape)
	for i < len(lines) {
		line := strings.TrimLeftFunc(lines[i], unicode.IsSpace)
		start := i
		i++
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// Join continuations; comment lines inside them are dropped.
		var b strings.Builder
		cur := line
		for {
			trimmed := strings.TrimRightFunc(cur, unicode.IsSpace)
			if !strings.HasSuffix(trimmed, esc) || i >= len(lines) {
				if strings.HasSuffix(trimmed, esc) {
					trimmed = strings.TrimSuffix(trimmed, esc)
				}
				b.WriteString(trimmed)
				break
			}
			b.WriteString(strings.TrimSuffix(trimmed, esc))
			for i < len(lines) {
				next := strings.TrimLeftFunc(lines[i], unicode.IsSpace)
				if strings.HasPrefix(next, "#") || next == "" {
					i++
					continue
				}
				break
			}
			if i >= len(lines) {
				break
			}
			cur = lines[i]
			i++
		}
		in, err := parseInstruction(b.String(), start+1)
		if err != nil {
			return nil, err
		}
		f.Instructions = append(f.Instructions, in)
	}
	return f, nil
}

// directive recognises a "# key=value" parser directive line.
func directive(line string) (string, string, bool) {
	t := strings.TrimSpace(line)
	if !strings.HasPrefix(t, "#") {
		return "", "", false
	}
	t = strings.TrimSpace(t[1:])
	k, v, ok := strings.Cut(t, "=")
	if !ok {
		return "", "", false
	}
	k = strings.ToLower(strings.TrimSpace(k))
	if k == "" || strings.ContainsFunc(k, unicode.IsSpace) {
		return "", "", false
	}
	switch k {
	case "escape", "syntax", "check":
		return k, strings.TrimSpace(v), true
	}
	return "", "", false
}

func parseInstruction(text string, line int) (Instruction, error) {
	text = strings.TrimSpace(text)
	word, rest, _ := strings.Cut(text, " ")
	if i := strings.IndexFunc(text, unicode.IsSpace); i >= 0 {
		word, rest = text[:i], text[i:]
	} else {
		word, rest = text, ""
	}
	cmd := strings.ToUpper(word)
	in := Instruction{Cmd: cmd, Line: line, Original: text}
	if !Known[cmd] {
		return in, &Error{Line: line, Msg: fmt.Sprintf("unknown instruction: %s", word)}
	}
	rest = strings.TrimSpace(rest)
	if flagged[cmd] {
		for strings.HasPrefix(rest, "--") {
			var tok string
			if i := strings.IndexFunc(rest, unicode.IsSpace); i >= 0 {
				tok, rest = rest[:i], strings.TrimSpace(rest[i:])
			} else {
				tok, rest = rest, ""
			}
			name, val, has := strings.Cut(tok[2:], "=")
			if name == "" {
				return in, &Error{Line: line, Msg: fmt.Sprintf("%s: bad flag %q", cmd, tok)}
			}
			in.Flags = append(in.Flags, Flag{Name: strings.ToLower(name), Value: val, HasValue: has})
		}
	}
	in.Rest = rest
	if rest == "" && cmd != "HEALTHCHECK" {
		return in, &Error{Line: line, Msg: fmt.Sprintf("%s requires at least one argument", cmd)}
	}
	if jsonForms[cmd] && strings.HasPrefix(rest, "[") {
		var args []string
		if err := json.Unmarshal([]byte(rest), &args); err == nil {
			in.JSON, in.Args = true, args
		}
	}
	return in, nil
}

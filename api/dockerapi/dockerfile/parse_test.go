package dockerfile

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	src := "# syntax=docker/dockerfile:1\n" +
		"# escape=\\\n" +
		"\n" +
		"# a comment\n" +
		"ARG BASE=busybox\n" +
		"from $BASE AS build\n" +
		"RUN echo one && \\\n" +
		"  # a comment inside\n" +
		"\n" +
		"  echo two\n" +
		"RUN [\"/bin/echo\", \"exec form\"]\n" +
		"RUN [not json\n" +
		"COPY --chown=1:2 --chmod=0640 a b /dst/\n" +
		"  ENV A=1 B=\"two words\"\r\n" +
		"HEALTHCHECK NONE\n" +
		"CMD echo \\\n"
	f, err := Parse(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	if f.Syntax != "docker/dockerfile:1" || f.Escape != '\\' {
		t.Errorf("directives: syntax %q escape %q", f.Syntax, f.Escape)
	}
	var cmds []string
	for _, in := range f.Instructions {
		cmds = append(cmds, in.Cmd)
	}
	if want := []string{"ARG", "FROM", "RUN", "RUN", "RUN", "COPY", "ENV", "HEALTHCHECK", "CMD"}; !reflect.DeepEqual(cmds, want) {
		t.Fatalf("instructions %v, want %v", cmds, want)
	}
	in := f.Instructions
	if in[1].Rest != "$BASE AS build" || in[1].Line != 6 {
		t.Errorf("FROM: %+v", in[1])
	}
	if in[2].Rest != "echo one &&   echo two" || in[2].JSON || in[2].Line != 7 {
		t.Errorf("continued RUN: %+v", in[2])
	}
	if !in[3].JSON || !reflect.DeepEqual(in[3].Args, []string{"/bin/echo", "exec form"}) {
		t.Errorf("exec RUN: %+v", in[3])
	}
	if in[4].JSON || in[4].Rest != "[not json" {
		t.Errorf("RUN with bad JSON is shell form: %+v", in[4])
	}
	if v, ok := in[5].Flag("chown"); !ok || v != "1:2" || in[5].Rest != "a b /dst/" {
		t.Errorf("COPY flags: %+v", in[5])
	}
	if v, _ := in[5].Flag("chmod"); v != "0640" {
		t.Errorf("COPY --chmod: %+v", in[5])
	}
	if in[6].Rest != `A=1 B="two words"` {
		t.Errorf("ENV: %q", in[6].Rest)
	}
	if in[8].Rest != "echo" {
		t.Errorf("a continuation at the end of the file: %q", in[8].Rest)
	}
}

func TestParseEscapeBacktick(t *testing.T) {
	f, err := Parse(strings.NewReader("# escape=`\nFROM busybox\nRUN echo a `\n  b\nCOPY x C:\\dir\\\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Escape != '`' || f.Instructions[1].Rest != "echo a   b" || f.Instructions[2].Rest != `x C:\dir\` {
		t.Errorf("escape ` parsed as %+v", f)
	}
}

func TestParseErrors(t *testing.T) {
	for name, src := range map[string]string{
		"ErrUnknownInstruction": "FROM busybox\nFROBNICATE x\n",
		"ErrNoArguments":        "FROM busybox\nRUN\n",
		"ErrBadEscape":          "# escape=x\nFROM busybox\n",
		"ErrTwoEscapes":         "# escape=`\n# escape=\\\nFROM busybox\n",
		"ErrBadFlag":            "FROM busybox\nCOPY -- x y\n",
		"ErrTooLarge":           strings.Repeat("#", MaxSize+1),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(src))
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("Parse = %v, want a parse error", err)
			}
		})
	}
	_, err := Parse(strings.NewReader("FROM busybox\n\nFROBNICATE\n"))
	if err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "unknown instruction: FROBNICATE") {
		t.Errorf("error %v does not name line 3 and the instruction", err)
	}
}

func TestWords(t *testing.T) {
	vars := map[string]string{"A": "a", "SP": "x y", "EMPTY": ""}
	look := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{`one two`, []string{"one", "two"}},
		{`$A ${A}b "$A c" '$A'`, []string{"a", "ab", "a c", "$A"}},
		{`\$A \"q`, []string{"$A", `"q`}},
		{`$SP "$SP"`, []string{"x", "y", "x y"}},
		{`${NOPE:-def} ${EMPTY:-e} ${EMPTY-e} ${A:+set} ${NOPE:+set}z`, []string{"def", "e", "set", "z"}},
		{`"" ''`, []string{"", ""}},
		{`a$ $1 "\n"`, []string{"a$", "$1", `\n`}},
		{`${NOPE:-${A}x}`, []string{"ax"}},
	} {
		got, err := Words(tc.in, '\\', look)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Words(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{`'open`, `"open`, `${A`, `${}`, `${A/x/y}`, `${NOPE:?must be set}`} {
		if _, err := Words(bad, '\\', look); err == nil {
			t.Errorf("Words(%q) succeeded", bad)
		}
	}
	if w, err := Word(`  "$A"  b `, '\\', look); err != nil || w != "  a  b " {
		t.Errorf("Word keeps whitespace: %q %v", w, err)
	}
}

func TestPairs(t *testing.T) {
	look := func(k string) (string, bool) {
		if k == "V" {
			return "val ue", true
		}
		return "", false
	}
	got, err := Pairs("ENV", `A=1 B="two words" C=$V D=${V}x E= "F G"=h`, '\\', look)
	if err != nil {
		t.Fatal(err)
	}
	want := []Pair{{"A", "1", true}, {"B", "two words", true}, {"C", "val ue", true}, {"D", "val uex", true},
		{"E", "", true}, {"F G", "h", true}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Pairs = %+v\nwant %+v", got, want)
	}
	got, err = Pairs("ENV", `KEY some value $V`, '\\', look)
	if err != nil || !reflect.DeepEqual(got, []Pair{{"KEY", "some value val ue", true}}) {
		t.Errorf("legacy form: %+v %v", got, err)
	}
	for _, bad := range []string{"", "ONLY", "A=1 B", `=x`} {
		if _, err := Pairs("ENV", bad, '\\', look); err == nil {
			t.Errorf("Pairs(%q) succeeded", bad)
		}
	}
	args, err := Args(`A B=2 C=$V`, '\\', look)
	if err != nil || !reflect.DeepEqual(args, []Pair{{"A", "", false}, {"B", "2", true}, {"C", "val ue", true}}) {
		t.Errorf("Args = %+v %v", args, err)
	}
	if _, err := Args(`BAD-NAME=1`, '\\', look); err == nil {
		t.Errorf("ARG with a bad name succeeded")
	}
}

// FuzzParse checks that no input makes the parser or the word processing
// panic, and that what parses has instructions with known keywords.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"FROM busybox\nRUN echo hi\n",
		"# escape=`\nFROM x AS y\nRUN a `\n b\n",
		"FROM a\nCOPY --from=x --chown=1:1 [\"a\", \"b\"] /c/\nENV A=\"b c\" D='e'\n",
		"ARG X=${Y:-z}\nFROM $X\nLABEL \"k k\"=v\nEXPOSE 80/tcp 53/udp\n",
		"FROM a\nRUN \\\n",
		"\xef\xbb\xbfFROM a\r\nCMD [\"x\"\r\n",
		"FROM a\nENV ${A:?x} ${B:+${C}} $\n",
		"# syntax=x\n#escape=\\\n\n\n# c\nHEALTHCHECK --interval=5s CMD true\n",
	} {
		f.Add(seed)
	}
	look := func(k string) (string, bool) { return k + " v", len(k)%2 == 0 }
	f.Fuzz(func(t *testing.T, src string) {
		df, err := Parse(strings.NewReader(src))
		if err != nil {
			return
		}
		for _, in := range df.Instructions {
			if !Known[in.Cmd] {
				t.Fatalf("unknown instruction %q accepted", in.Cmd)
			}
			Words(in.Rest, df.Escape, look)
			Word(in.Rest, df.Escape, look)
			Pairs(in.Cmd, in.Rest, df.Escape, look)
			Args(in.Rest, df.Escape, look)
			Fields(in.Rest, df.Escape)
		}
	})
}

package scheduler

import (
	"encoding/json"
	"strings"
	"testing"

	"flotilla/api/errdefs"
)

func TestParseRule(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Rule
	}{
		{"OKInstanceNotEqual", "instance!=webhead3", Rule{Key: "instance", Operator: OpNotEqual, Value: "webhead3", ValueType: ValueExact}},
		{"OKContainerEqual", "container==webhead3", Rule{Key: "container", Operator: OpEqual, Value: "webhead3", ValueType: ValueExact}},
		{"OKSoftGlob", "role!=~datab*se", Rule{Key: "role", Operator: OpNotEqual, Value: "datab*se", Soft: true, ValueType: ValueGlob}},
		{"OKRegex", "role==/^data/", Rule{Key: "role", Operator: OpEqual, Value: "/^data/", ValueType: ValueRegex}},
		{"OKSoftEqual", "instance==~db0", Rule{Key: "instance", Operator: OpEqual, Value: "db0", Soft: true, ValueType: ValueExact}},
		{"OKShortSlashesAreExact", "role==//", Rule{Key: "role", Operator: OpEqual, Value: "//", ValueType: ValueExact}},
		{"OKDottedKey", "com.example_x-y==a b", Rule{Key: "com.example_x-y", Operator: OpEqual, Value: "a b", ValueType: ValueExact}},
		{"OKUppercase", "Role==DB", Rule{Key: "Role", Operator: OpEqual, Value: "DB", ValueType: ValueExact}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRule(tt.in)
			if err != nil {
				t.Fatalf("ParseRule(%q): %v", tt.in, err)
			}
			if !got.Equal(tt.want) {
				t.Fatalf("ParseRule(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if got.String() != tt.in {
				t.Fatalf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestParseRuleErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"ErrNoOperator", "instance=webhead3", `could not find operator in affinity rule: expected one of "==", "!=": "instance=webhead3"`},
		{"ErrTripleEquals", "instance===webhead3", `invalid value in affinity rule: "instance===webhead3": "=webhead3" does not match /^[-a-z0-9:_\s.*/()?+[\]\\^$|]+$/i`},
		{"ErrKeyTooShort", "a==b", `invalid key in affinity rule: "a==b": "a" does not match /^[a-z_][a-z0-9\-_.]+$/i`},
		{"ErrKeyDigitFirst", "1role==b", `invalid key in affinity rule`},
		{"ErrEmptyValue", "role==", `invalid value in affinity rule: "role==": "" does not match`},
		{"ErrSoftEmptyValue", "role!=~", `invalid value in affinity rule`},
		{"ErrValueChars", "role==a,b", `invalid value in affinity rule`},
		{"ErrBadRegex", "role==/a(/", `invalid regular expression in affinity rule`},
		{"ErrEmpty", "", `could not find operator`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRule(tt.in)
			if err == nil {
				t.Fatalf("ParseRule(%q) succeeded", tt.in)
			}
			if errdefs.CodeOf(err) != errdefs.Invalid {
				t.Fatalf("code = %s, want invalid", errdefs.CodeOf(err))
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("error = %q, want prefix %q", err.Error(), tt.want)
			}
		})
	}
}

func TestParseRules(t *testing.T) {
	t.Run("OKEmpty", func(t *testing.T) {
		rules, err := ParseRules(nil)
		if err != nil || rules != nil {
			t.Fatalf("ParseRules(nil) = %v, %v", rules, err)
		}
	})
	t.Run("ErrSecondBad", func(t *testing.T) {
		_, err := ParseRules([]string{"instance==webhead3", "instance=webhead3"})
		if err == nil || !strings.Contains(err.Error(), "could not find operator") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("OKOrder", func(t *testing.T) {
		rules, err := ParseRules([]string{"instance==webhead*", "role==database", "instance!=webhead3"})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"instance==webhead*", "role==database", "instance!=webhead3"}
		for i, r := range rules {
			if r.String() != want[i] {
				t.Fatalf("rule %d = %s, want %s", i, r, want[i])
			}
		}
	})
}

func TestParseDockerAffinities(t *testing.T) {
	tests := []struct {
		name    string
		env     []string
		labels  map[string]string
		want    []string
		wantErr string
	}{
		{"OKLabelThenEnv", []string{"PATH=/bin", "affinity:container==db0", "affinity:role!=~web*"},
			map[string]string{DockerAffinitiesLabel: `["container!=db*"]`},
			[]string{"container!=db*", "container==db0", "role!=~web*"}, ""},
		{"OKNone", []string{"A=b"}, map[string]string{"other": "x"}, nil, ""},
		{"OKColonInValue", []string{"affinity:tier==a:b"}, nil, []string{"tier==a:b"}, ""},
		{"ErrLabelNotJSON", nil, map[string]string{DockerAffinitiesLabel: `[container!=db]`}, nil, "invalid affinities label"},
		{"ErrLabelNotArray", nil, map[string]string{DockerAffinitiesLabel: `"container!=db"`}, nil, "affinities label is not an array"},
		{"ErrLabelElementNotString", nil, map[string]string{DockerAffinitiesLabel: `[1]`}, nil, "is not a string"},
		{"ErrLabelTrailing", nil, map[string]string{DockerAffinitiesLabel: `[] []`}, nil, "invalid affinities label"},
		{"ErrEnvRule", []string{"affinity:container=db0"}, nil, nil, "could not find operator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := ParseDockerAffinities(tt.env, tt.labels)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errdefs.CodeOf(err) != errdefs.Invalid {
					t.Fatalf("err = %v, want invalid %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(rules) != len(tt.want) {
				t.Fatalf("got %d rules %v, want %v", len(rules), rules, tt.want)
			}
			for i := range rules {
				if rules[i].String() != tt.want[i] {
					t.Fatalf("rule %d = %s, want %s", i, rules[i], tt.want[i])
				}
			}
		})
	}
}

func TestLocalityToRules(t *testing.T) {
	const a, b = "6e9e3e0c-3b2b-4c59-a0b4-1f1f1f1f1f1f", "0d3c2b1a-1111-2222-3333-444455556666"
	t.Run("OKSoftFromJSONString", func(t *testing.T) {
		var l Locality
		if err := json.Unmarshal([]byte(`{"strict":false,"near":"`+a+`","far":["`+b+`"]}`), &l); err != nil {
			t.Fatal(err)
		}
		rules, err := LocalityToRules(l)
		if err != nil {
			t.Fatal(err)
		}
		if len(rules) != 2 || rules[0].String() != "instance==~"+a || rules[1].String() != "instance!=~"+b {
			t.Fatalf("rules = %v", rules)
		}
	})
	t.Run("OKStrict", func(t *testing.T) {
		rules, err := LocalityToRules(Locality{Strict: true, Far: []string{a}})
		if err != nil || len(rules) != 1 || rules[0].String() != "instance!="+a || rules[0].Soft {
			t.Fatalf("rules = %v, err = %v", rules, err)
		}
	})
	t.Run("OKEmpty", func(t *testing.T) {
		var l Locality
		if err := json.Unmarshal([]byte(`{"strict":false}`), &l); err != nil {
			t.Fatal(err)
		}
		rules, err := LocalityToRules(l)
		if err != nil || len(rules) != 0 {
			t.Fatalf("rules = %v, err = %v", rules, err)
		}
	})
	t.Run("ErrBadNear", func(t *testing.T) {
		var l Locality
		if err := json.Unmarshal([]byte(`{"near":{"x":1}}`), &l); err == nil {
			t.Fatal("decoded an object as near")
		}
		if _, err := LocalityToRules(Locality{Near: []string{"a,b"}}); errdefs.CodeOf(err) != errdefs.Invalid {
			t.Fatalf("err = %v, want invalid", err)
		}
	})
}

func TestRuleMatches(t *testing.T) {
	web1 := Resident{ID: "0f0e0d0c-0b0a-4909-8807-060504030201", OwnerID: "o", Name: "web1",
		Tags: map[string]any{"role": "web", "tier": 2.0, "public": true, "docker:label:app": "shop"}}
	tests := []struct {
		name string
		rule string
		want bool
	}{
		{"OKName", "instance==web1", true},
		{"OKContainerKey", "container!=web1", true},
		{"OKFullID", "instance==0f0e0d0c-0b0a-4909-8807-060504030201", true},
		{"OKShortID", "container==0f0e0d0c0b0a", true},
		{"NoMatchShortIDTooShort", "container==0f0e0d0c", false},
		{"OKGlob", "instance==we*", true},
		{"OKGlobMiddle", "instance==w*1", true},
		{"NoMatchGlob", "instance==db*", false},
		{"NoMatchGlobOnID", "instance==0f0e*", false},
		{"OKRegex", "instance==/^web[0-9]$/", true},
		{"NoMatchRegex", "instance==/^db/", false},
		{"OKTag", "role==web", true},
		{"OKTagNumber", "tier==2", true},
		{"OKTagBool", "public==true", true},
		{"OKTagGlob", "role!=w*", true},
		{"OKTagRegex", "role==/e/", true},
		{"OKDockerLabel", "app==shop", true},
		{"NoMatchMissingTag", "zone==a", false},
		{"NoMatchTagValue", "role==db", false},
		{"NoMatchCase", "role==WEB", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRule(tt.rule)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Matches(web1); got != tt.want {
				t.Fatalf("%s matches web1 = %v, want %v", tt.rule, got, tt.want)
			}
		})
	}
}

func TestRuleJSON(t *testing.T) {
	r, err := ParseRule("role!=~/^db/")
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(struct{ Rules []Rule }{[]Rule{r}})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"Rules":["role!=~/^db/"]}` {
		t.Fatalf("json = %s", b)
	}
	var back struct{ Rules []Rule }
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Rules) != 1 || !back.Rules[0].Equal(r) || !back.Rules[0].Matches(Resident{Tags: map[string]any{"role": "dbx"}}) {
		t.Fatalf("round trip = %+v", back.Rules)
	}
	if err := json.Unmarshal([]byte(`{"Rules":["nope"]}`), &back); err == nil {
		t.Fatal("unmarshalled an invalid rule")
	}
}

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		p, s string
		want bool
	}{
		{"*", "", true}, {"a*", "a", true}, {"*b", "ab", true}, {"a*b*c", "aXbYbc", true},
		{"a*b", "ac", false}, {"abc", "abc", true}, {"abc", "abcd", false}, {"**", "x", true},
		{"a*a", "a", false}, {"*x*", "yyy", false},
	}
	for _, tt := range tests {
		if got := globMatch(tt.p, tt.s); got != tt.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tt.p, tt.s, got, tt.want)
		}
	}
}

// FuzzParseRule checks that parsing never panics, that every accepted rule
// prints to an expression that parses back to the same rule, and that
// matching never panics.
func FuzzParseRule(f *testing.F) {
	for _, s := range []string{
		"instance==web1", "instance!=web*", "role!=/^db/", "instance==~db0", "role!=~datab*se",
		"container==0f0e0d0c0b0a", "a==b", "instance===x", "role==//", "role==/(/", "k_.-1==a b\t",
		"x!=y==z", "", "==", "!=~", "role==\u3000", "role==/[/",
	} {
		f.Add(s)
	}
	res := Resident{ID: "0f0e0d0c-0b0a", Name: "web1", Tags: map[string]any{"role": "db", "n": 1.5}}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			if errdefs.CodeOf(err) != errdefs.Invalid {
				t.Fatalf("ParseRule(%q) error code %s", s, errdefs.CodeOf(err))
			}
			return
		}
		back, err := ParseRule(r.String())
		if err != nil {
			t.Fatalf("ParseRule(%q) ok but its String %q fails: %v", s, r.String(), err)
		}
		if !back.Equal(r) {
			t.Fatalf("round trip of %q: %+v != %+v", s, back, r)
		}
		if r.String() != s {
			t.Fatalf("String() = %q, input %q", r.String(), s)
		}
		_ = r.Matches(res)
	})
}

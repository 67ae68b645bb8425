package dockerapi

import (
	"testing"

	"flotilla/api/errdefs"
)

func TestParseFilters(t *testing.T) {
	for name, tc := range map[string]struct {
		raw     string
		wantErr bool
		key     string
		values  int
	}{
		"OK":            {raw: `{"status":{"exited":true,"created":true}}`, key: "status", values: 2},
		"OKLegacyArray": {raw: `{"label":["a=b"]}`, key: "label", values: 1},
		"OKEmpty":       {raw: ``, key: "status", values: 0},
		"ErrUnknownKey": {raw: `{"colour":{"red":true}}`, wantErr: true},
		"ErrNotJSON":    {raw: `{status`, wantErr: true},
	} {
		t.Run(name, func(t *testing.T) {
			args, err := parseFilters(tc.raw, "status", "label")
			if tc.wantErr {
				if !errdefs.Is(err, errdefs.Invalid) {
					t.Fatalf("err = %v, want Invalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := len(args.Get(tc.key)); n != tc.values {
				t.Fatalf("%s has %d values, want %d", tc.key, n, tc.values)
			}
		})
	}
}

func TestMatchLabelsAllMustMatch(t *testing.T) {
	args, err := parseFilters(`{"label":{"a=1":true,"b":true}}`, "label")
	if err != nil {
		t.Fatal(err)
	}
	if !matchLabels(args, "label", map[string]string{"a": "1", "b": "x"}) {
		t.Error("a=1,b should match")
	}
	if matchLabels(args, "label", map[string]string{"a": "1"}) {
		t.Error("missing b should not match")
	}
	if matchLabels(args, "label", map[string]string{"a": "2", "b": ""}) {
		t.Error("a=2 should not match a=1")
	}
}

// FuzzParseFilters: any input either parses into allowed keys or is an
// Invalid error; matching never panics.
func FuzzParseFilters(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"status":{"running":true}}`, `{"label":["a=b","c"]}`,
		`{"name":{"^web$":true}}`, `{"name":{"[":true}}`, `{"id":{"0a1b":true}}`, `[1]`, `{"status":{"x":false}}`, `null`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		args, err := parseFilters(raw, "status", "label", "name", "id")
		if err != nil {
			if !errdefs.Is(err, errdefs.Invalid) {
				t.Fatalf("error %v is not Invalid", err)
			}
			return
		}
		for _, k := range args.Keys() {
			switch k {
			case "status", "label", "name", "id":
			default:
				t.Fatalf("key %q passed the allow list", k)
			}
		}
		matchLabels(args, "label", map[string]string{"a": "b"})
		matchAny(args, "name", func(v string) bool { return matchRegexp(v, "web") })
	})
}

func TestPickContainerAndImage(t *testing.T) {
	if _, _, code := splitRefCase("docker.io/library/busybox:1.36"); code != "busybox 1.36" {
		t.Fatalf("splitRef = %q", code)
	}
	if _, _, code := splitRefCase("localhost:5000/app"); code != "localhost:5000/app latest" {
		t.Fatalf("splitRef = %q", code)
	}
	if compareVersions("1.44", "1.5") <= 0 || compareVersions("1.51", "1.51") != 0 || compareVersions("1.9", "1.44") >= 0 {
		t.Fatal("compareVersions orders numerically")
	}
}

func splitRefCase(ref string) (string, string, string) {
	repo, tag, _ := splitRef(ref)
	return repo, tag, repo + " " + tag
}

package service

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestParseCNSServices(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		wantErr  bool
	}{
		{in: "web", want: "[{web 0}]"},
		{in: "Web:8080, api ,,db:5432", want: "[{web 8080} {api 0} {db 5432}]"},
		{in: "", want: "[]"},
		{in: "web:0", wantErr: true},
		{in: "web:65536", wantErr: true},
		{in: "web:+80", wantErr: true},
		{in: "web:080", wantErr: true},
		{in: "we.b", wantErr: true},
		{in: "-web", wantErr: true},
		{in: strings.Repeat("a", 64), wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseCNSServices(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseCNSServices(%q) = %v, want an error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := fmt.Sprint(got); s != tc.want && !(tc.want == "[]" && len(got) == 0) {
				t.Fatalf("ParseCNSServices(%q) = %s, want %s", tc.in, s, tc.want)
			}
		})
	}
}

func TestCNSNames(t *testing.T) {
	z := CNSZone{Suffix: "cns.test", DC: "dc1"}
	const owner, id = "0b0b0b0b-0000-4000-8000-000000000001", "1c1c1c1c-0000-4000-8000-000000000002"
	got := z.DNSNames("Alice", owner, id, "Web", map[string]any{TagCNSServices: "api:80,bad name"})
	want := []string{
		"web.inst.alice.dc1.cns.test", id + ".inst.alice.dc1.cns.test",
		"web.inst." + owner + ".dc1.cns.test", id + ".inst." + owner + ".dc1.cns.test",
		"api.svc." + owner + ".dc1.cns.test", "api.svc.alice.dc1.cns.test",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("DNSNames = %q\nwant %q", got, want)
	}
	// A name or login that is not a DNS label is published by uuid only.
	if got := z.InstanceNames("a.b@c", owner, id, "my_box", nil); !slices.Equal(got, []string{id + ".inst." + owner + ".dc1.cns.test"}) {
		t.Fatalf("InstanceNames = %q", got)
	}
	for _, v := range []any{true, "true", "TRUE"} {
		if got := z.DNSNames("alice", owner, id, "web", map[string]any{TagCNSDisable: v, TagCNSServices: "api"}); len(got) != 0 {
			t.Fatalf("disabled with %v: %q", v, got)
		}
	}
}

// FuzzParseCNSServices checks that an accepted tag gives DNS-label names
// and real ports, and that the result survives a round trip.
func FuzzParseCNSServices(f *testing.F) {
	for _, s := range []string{"web", "web:8080,api", " a , b:1 ", "x:99999", "é", "a:", ":80", "a:1:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		svcs, err := ParseCNSServices(v)
		if err != nil {
			return
		}
		var parts []string
		for _, s := range svcs {
			if !ValidDNSLabel(s.Name) || s.Name != strings.ToLower(s.Name) || s.Port < 0 || s.Port > 65535 {
				t.Fatalf("%q gave %+v", v, s)
			}
			p := s.Name
			if s.Port != 0 {
				p += fmt.Sprintf(":%d", s.Port)
			}
			parts = append(parts, p)
		}
		again, err := ParseCNSServices(strings.Join(parts, ","))
		if err != nil || !slices.Equal(again, svcs) {
			t.Fatalf("%q: round trip gave %v, %v", v, again, err)
		}
	})
}

package cloudapi

import "testing"

func TestNegotiate(t *testing.T) {
	cases := []struct {
		rng  string
		want string
		ok   bool
	}{
		{"~9||~8", "9.0.0", true},
		{"8", "8.0.0", true},
		{"*", "9.0.0", true},
		{"~7.2", "7.2.0", true},
		{">=7.0.0 <8", "7.3.0", true},
		{"^7.1.0", "7.3.0", true},
		{"7.x", "7.3.0", true},
		{"~10", "", false},
		{"garbage!", "", false},
	}
	for _, c := range cases {
		got, ok := negotiate(c.rng, apiVersions)
		if ok != c.ok || got != c.want {
			t.Errorf("negotiate(%q) = %q, %v; want %q, %v", c.rng, got, ok, c.want, c.ok)
		}
	}
}

package dockerapi

import (
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"

	"flotilla/api/errdefs"
)

func TestDNSSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hc      container.HostConfig
		want    string // rendered resolv.conf
		wantErr bool
	}{
		{name: "OK", hc: container.HostConfig{DNS: []string{"192.0.2.53", "2001:db8::53"}, DNSSearch: []string{"example.com.", "corp"},
			DNSOptions: []string{"ndots:2", "edns0"}},
			want: "nameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch example.com corp\noptions ndots:2 edns0\n"},
		{name: "OKNoSearch", hc: container.HostConfig{DNSSearch: []string{"."}}, want: ""},
		{name: "OKEmpty", want: ""},
		{name: "ErrNotAnAddress", hc: container.HostConfig{DNS: []string{"ns1.example.com"}}, wantErr: true},
		{name: "ErrNewlineInSearch", hc: container.HostConfig{DNSSearch: []string{"a.com\nnameserver 6.6.6.6"}}, wantErr: true},
		{name: "ErrSpaceInOption", hc: container.HostConfig{DNSOptions: []string{"ndots:1 rotate"}}, wantErr: true},
		{name: "ErrEmptyLabel", hc: container.HostConfig{DNSSearch: []string{"a..com"}}, wantErr: true},
		{name: "ErrTooMany", hc: container.HostConfig{DNS: strings.Split(strings.Repeat("10.0.0.1,", 17)[:9*17-1], ",")}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dnsSettings(tc.hc)
			if tc.wantErr {
				if !errdefs.Is(err, errdefs.Invalid) {
					t.Fatalf("err = %v, want an invalid-argument error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := got.ResolvConf(); s != tc.want {
				t.Fatalf("resolv.conf = %q, want %q", s, tc.want)
			}
		})
	}
}

// FuzzDNSSettings checks that whatever a client sends, an accepted setting
// renders one resolv.conf line per directive: no value can add a line.
func FuzzDNSSettings(f *testing.F) {
	f.Add("192.0.2.1", "example.com", "ndots:1")
	f.Add("::1", ".", "rotate")
	f.Add("10.0.0.1\nnameserver 6.6.6.6", "a b", "x\ny")
	f.Fuzz(func(t *testing.T, ns, search, opt string) {
		cfg, err := dnsSettings(container.HostConfig{DNS: []string{ns}, DNSSearch: []string{search}, DNSOptions: []string{opt}})
		if err != nil {
			if !errdefs.Is(err, errdefs.Invalid) {
				t.Fatalf("error %v is not an invalid-argument error", err)
			}
			return
		}
		lines := strings.Split(strings.TrimSuffix(cfg.ResolvConf(), "\n"), "\n")
		want := 2
		if len(cfg.Search) > 0 {
			want = 3
		}
		if len(lines) != want {
			t.Fatalf("accepted %q %q %q renders %d lines: %q", ns, search, opt, len(lines), lines)
		}
		for _, l := range lines {
			if strings.ContainsAny(l, "\r\t\x00") || strings.Count(l, " ") != 1 {
				t.Fatalf("line %q of accepted %q %q %q", l, ns, search, opt)
			}
		}
	})
}

package service

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"flotilla/api/errdefs"
)

// TestPullPolicy: a pull reaches only allowed registries at allowed
// addresses, and an image over a limit or the account's quota is refused
// before it is stored.
func TestPullPolicy(t *testing.T) {
	e := newImageEnv(t)
	ctx := context.Background()
	host := startRegistry(t) // 127.0.0.1:port
	_, port, _ := strings.Cut(host, ":")
	img := smallImage(t, "policy\n")
	pushImage(t, host+"/team/app:1", img)

	t.Run("ErrLoopbackByDefault", func(t *testing.T) {
		e.svc.SetImagePolicy(ImagePolicy{})
		_, err := e.svc.Pull(ctx, &e.owner, host+"/team/app:1", PullOptions{Insecure: true})
		if !errdefs.Is(err, errdefs.Forbidden) || !strings.Contains(errdefs.MessageOf(err), "--registry-allow-private") {
			t.Errorf("err = %v, want Forbidden naming --registry-allow-private", err)
		}
	})
	t.Run("ErrNameResolvingToLoopback", func(t *testing.T) {
		// The allowlist names the host, but it resolves to loopback: the
		// dialed address is what is checked.
		e.svc.SetImagePolicy(ImagePolicy{RegistryAllow: []string{"localhost"}})
		_, err := e.svc.Pull(ctx, &e.owner, "localhost:"+port+"/team/app:1", PullOptions{Insecure: true})
		if !errdefs.Is(err, errdefs.Forbidden) {
			t.Errorf("err = %v, want Forbidden", err)
		}
	})
	t.Run("ErrNotOnAllowlist", func(t *testing.T) {
		e.svc.SetImagePolicy(ImagePolicy{RegistryAllow: []string{"registry.example.com"}, RegistryAllowPrivate: true})
		_, err := e.svc.Pull(ctx, &e.owner, host+"/team/app:1", PullOptions{Insecure: true})
		if !errdefs.Is(err, errdefs.Forbidden) || !strings.Contains(errdefs.MessageOf(err), "allowlist") {
			t.Errorf("err = %v, want Forbidden (allowlist)", err)
		}
	})
	t.Run("ErrLayerTooLarge", func(t *testing.T) {
		e.svc.SetImagePolicy(ImagePolicy{RegistryAllowPrivate: true, MaxLayerBytes: 20})
		_, err := e.svc.Pull(ctx, &e.owner, host+"/team/app:1", PullOptions{Insecure: true})
		if !errdefs.Is(err, errdefs.Invalid) || !errors.Is(err, errdefs.ErrTooLarge) || !strings.Contains(errdefs.MessageOf(err), "per layer") {
			t.Errorf("err = %v, want Invalid/ErrTooLarge per layer", err)
		}
	})
	t.Run("ErrManifestTooLarge", func(t *testing.T) {
		e.svc.SetImagePolicy(ImagePolicy{RegistryAllowPrivate: true, MaxManifestBytes: 10})
		_, err := e.svc.Pull(ctx, &e.owner, host+"/team/app:1", PullOptions{Insecure: true})
		if !errors.Is(err, errdefs.ErrTooLarge) {
			t.Errorf("err = %v, want ErrTooLarge", err)
		}
	})
	t.Run("OKAllowedHostPort", func(t *testing.T) {
		e.svc.SetImagePolicy(ImagePolicy{RegistryAllow: []string{host}, RegistryAllowPrivate: true})
		if _, err := e.svc.Pull(ctx, &e.owner, host+"/team/app:1", PullOptions{Insecure: true}); err != nil {
			t.Fatalf("Pull: %v", err)
		}
	})
	t.Run("ErrAccountQuota", func(t *testing.T) {
		used, err := e.st.AccountImageBytes(ctx, e.owner)
		if err != nil || used <= 0 {
			t.Fatalf("AccountImageBytes = %d, %v", used, err)
		}
		e.svc.SetImagePolicy(ImagePolicy{RegistryAllowPrivate: true, AccountImageBytes: used + 10})
		other := smallImage(t, "another image\n")
		pushImage(t, host+"/team/other:1", other)
		_, err = e.svc.Pull(ctx, &e.owner, host+"/team/other:1", PullOptions{Insecure: true})
		if !errors.Is(err, errdefs.ErrTooLarge) || !strings.Contains(errdefs.MessageOf(err), "quota") {
			t.Errorf("err = %v, want quota ErrTooLarge", err)
		}
		// The same over a docker load.
		var buf bytes.Buffer
		if err := e.svc.SaveImage(ctx, &e.owner, host+"/team/app:1", &buf); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.LoadArchiveReader(ctx, &e.other, bytes.NewReader(buf.Bytes())); err != nil {
			t.Errorf("bob's quota is his own: %v", err)
		}
		e.svc.SetImagePolicy(ImagePolicy{AccountImageBytes: 10})
		if _, err := e.svc.ImportRootfs(ctx, &e.other, bytes.NewReader(layerTar(map[string]string{"a": "b"})),
			ImageMeta{Name: "x", Version: "1"}); !errors.Is(err, errdefs.ErrTooLarge) {
			t.Errorf("import over quota: %v, want ErrTooLarge", err)
		}
	})
}

func TestPrivateAddr(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		want bool
	}{{"127.0.0.1", true}, {"10.1.2.3", true}, {"172.20.0.1", true}, {"192.168.1.1", true}, {"169.254.169.254", true},
		{"100.64.0.1", true}, {"::1", true}, {"fd00::1", true}, {"fe80::1", true}, {"::ffff:127.0.0.1", true}, {"0.0.0.0", true},
		{"8.8.8.8", false}, {"172.32.0.1", false}, {"2001:4860::8888", false}} {
		if got := PrivateAddr(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("PrivateAddr(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
}

package service

// The operator's limits on image content: how big an image, a layer, a
// manifest and an account's stored images may be, and which registries a
// pull may reach. Pulls dial through pullDialer, which checks the address
// it actually connects to (after DNS, so a name that resolves to a private
// address the second time is still refused).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"flotilla/api/errdefs"
)

// Default image limits (see ImagePolicy).
const (
	DefaultMaxManifestBytes  = 4 << 20
	DefaultMaxConfigBytes    = 8 << 20
	DefaultMaxLayerBytes     = 4 << 30
	DefaultMaxImageBytes     = 10 << 30
	DefaultAccountImageBytes = 50 << 30
)

// ImagePolicy is what the operator allows into the blob store. A zero
// field takes its default; a negative size means no limit.
type ImagePolicy struct {
	// RegistryAllow lists the registries pulls may reach ("host" or
	// "host:port"; a host alone allows any port). Empty: any registry.
	RegistryAllow []string
	// RegistryAllowPrivate lets pulls connect to loopback, link-local,
	// RFC 1918, CGNAT and unique-local addresses. Off by default, so a
	// tenant cannot make the control plane fetch from its own network.
	RegistryAllowPrivate bool

	MaxManifestBytes int64 // one manifest
	MaxConfigBytes   int64 // one image config
	MaxLayerBytes    int64 // one layer, compressed
	MaxImageBytes    int64 // one image: config and layers
	// AccountImageBytes bounds the total size of the images an account
	// owns (pulled, loaded, imported).
	AccountImageBytes int64
}

// SetImagePolicy sets the limits on image content and pulls.
func (s *Service) SetImagePolicy(p ImagePolicy) { s.imagePolicy = p }

func limit(v, def int64) int64 {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 1<<63 - 1
	}
	return v
}

func (p ImagePolicy) maxManifest() int64 { return limit(p.MaxManifestBytes, DefaultMaxManifestBytes) }
func (p ImagePolicy) maxConfig() int64   { return limit(p.MaxConfigBytes, DefaultMaxConfigBytes) }
func (p ImagePolicy) maxLayer() int64    { return limit(p.MaxLayerBytes, DefaultMaxLayerBytes) }
func (p ImagePolicy) maxImage() int64    { return limit(p.MaxImageBytes, DefaultMaxImageBytes) }
func (p ImagePolicy) accountQuota() int64 {
	return limit(p.AccountImageBytes, DefaultAccountImageBytes)
}

// tooLarge is the Invalid error (413 on the wire) for a size over a limit.
func tooLarge(format string, args ...any) error {
	return errdefs.Wrap(errdefs.Invalid, errdefs.ErrTooLarge, format, args...)
}

// checkRegistry refuses a registry host[:port] the allowlist does not name.
func (p ImagePolicy) checkRegistry(hostport string) error {
	if len(p.RegistryAllow) == 0 {
		return nil
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	for _, a := range p.RegistryAllow {
		a = strings.ToLower(strings.TrimSpace(a))
		if a == strings.ToLower(hostport) || a == strings.ToLower(host) {
			return nil
		}
	}
	return errdefs.New(errdefs.Forbidden, "registry %s is not on this cloud's allowlist (%s); ask the operator to add it (serve --registry-allow)",
		hostport, strings.Join(p.RegistryAllow, ", "))
}

// privatePrefixes are the ranges a pull may not connect to unless
// RegistryAllowPrivate is set.
var privatePrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
		"172.16.0.0/12", "192.168.0.0/16", "::/128", "::1/128", "fc00::/7", "fe80::/10"} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// PrivateAddr reports whether ip is loopback, link-local, unspecified,
// RFC 1918, CGNAT or unique-local (IPv4-mapped IPv6 included).
func PrivateAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsMulticast() {
		return true
	}
	for _, p := range privatePrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// pullTransport is the HTTP transport of a pull: every connection's
// address is checked when it is dialed, and responses are cut at the
// largest size any registry answer may have.
func (p ImagePolicy) pullTransport() http.RoundTripper {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	allowPrivate := p.RegistryAllowPrivate
	tr := &http.Transport{
		Proxy:                 nil,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          10,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if !allowPrivate {
				ap, err := netip.ParseAddrPort(conn.RemoteAddr().String())
				if err != nil || PrivateAddr(ap.Addr()) {
					conn.Close()
					return nil, errdefs.New(errdefs.Forbidden, "registry address %s (%s) is private (loopback, link-local or a private network); this cloud pulls only from public addresses unless the operator allows private ones (serve --registry-allow-private)",
						addr, conn.RemoteAddr())
				}
			}
			return conn, nil
		},
	}
	max := p.maxLayer()
	if m := p.maxImage(); m < max {
		max = m
	}
	return &boundedTransport{rt: tr, manifest: p.maxManifest(), blob: max}
}

// boundedTransport fails a response body that runs past the limit of its
// kind (manifests, or blobs and anything else).
type boundedTransport struct {
	rt             http.RoundTripper
	manifest, blob int64
}

func (b *boundedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := b.rt.RoundTrip(r)
	if err != nil || resp.Body == nil {
		return resp, err
	}
	n, what := b.blob, "blob"
	if strings.Contains(r.URL.Path, "/manifests/") {
		n, what = b.manifest, "manifest"
	}
	if resp.ContentLength > n {
		resp.Body.Close()
		return nil, tooLarge("the registry's %s %s is %d bytes, over this cloud's limit of %d", what, r.URL.Path, resp.ContentLength, n)
	}
	resp.Body = &boundedBody{rc: resp.Body, left: n, what: what, limit: n}
	return resp, nil
}

type boundedBody struct {
	rc    io.ReadCloser
	left  int64
	limit int64
	what  string
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte would pass the limit: see whether there is one.
		var one [1]byte
		if n, _ := b.rc.Read(one[:]); n > 0 {
			return 0, tooLarge("a registry %s is over this cloud's limit of %d bytes", b.what, b.limit)
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *boundedBody) Close() error { return b.rc.Close() }

// checkImageSize applies the per-image limits to what a manifest declares
// and the account's quota to what owner would store.
func (s *Service) checkImageSize(ctx context.Context, owner *string, manifestLen int, configSize int64, layers []int64) (int64, error) {
	p := s.imagePolicy
	if int64(manifestLen) > p.maxManifest() {
		return 0, tooLarge("the image manifest is %d bytes, over this cloud's limit of %d", manifestLen, p.maxManifest())
	}
	if configSize > p.maxConfig() {
		return 0, tooLarge("the image config is %d bytes, over this cloud's limit of %d", configSize, p.maxConfig())
	}
	total := configSize
	for i, l := range layers {
		if l < 0 {
			return 0, errdefs.InvalidArgument("layer %d declares a negative size", i+1)
		}
		if l > p.maxLayer() {
			return 0, tooLarge("layer %d is %s, over this cloud's limit of %s per layer", i+1, human(l), human(p.maxLayer()))
		}
		total += l
	}
	if total > p.maxImage() {
		return 0, tooLarge("the image is %s, over this cloud's limit of %s per image", human(total), human(p.maxImage()))
	}
	if owner == nil {
		return total, nil
	}
	used, err := s.Store.AccountImageBytes(ctx, *owner)
	if err != nil {
		return 0, err
	}
	if q := p.accountQuota(); used+total > q {
		return 0, tooLarge("storing this image (%s) would take the account's images to %s, over its quota of %s; remove images you no longer need (docker rmi, docker image prune)",
			human(total), human(used+total), human(q))
	}
	return total, nil
}

// human renders a byte count for an error message.
func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

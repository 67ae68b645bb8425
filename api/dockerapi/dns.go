package dockerapi

import (
	"context"
	"net/netip"
	"regexp"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/api/service"
)

var (
	dnsOptionRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_:.-]{0,63}$`)
	dnsLabelRE  = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$`)
	aliasRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
)

// maxDNSEntries bounds each of --dns, --dns-search and --dns-option.
const maxDNSEntries = 16

// dnsSettings checks Docker's --dns, --dns-search and --dns-option: every
// value goes into the container's resolv.conf, so anything that could
// break a line (or is not what it claims to be) is refused.
func dnsSettings(hc container.HostConfig) (driver.DNSConfig, error) {
	var out driver.DNSConfig
	if len(hc.DNS) > maxDNSEntries || len(hc.DNSSearch) > maxDNSEntries || len(hc.DNSOptions) > maxDNSEntries {
		return out, errdefs.InvalidArgument("at most %d values each of --dns, --dns-search and --dns-option are allowed", maxDNSEntries)
	}
	for _, ns := range hc.DNS {
		a, err := netip.ParseAddr(ns)
		if err != nil || a.Zone() != "" {
			return out, errdefs.InvalidArgument("invalid --dns %q: give a nameserver's IP address, such as 192.0.2.53", ns)
		}
		out.Nameservers = append(out.Nameservers, a.String())
	}
	for _, d := range hc.DNSSearch {
		if !validSearchDomain(d) {
			return out, errdefs.InvalidArgument("invalid --dns-search %q: give a domain name such as example.com", d)
		}
		if d != "." {
			out.Search = append(out.Search, strings.TrimSuffix(d, "."))
		}
	}
	for _, o := range hc.DNSOptions {
		if !dnsOptionRE.MatchString(o) {
			return out, errdefs.InvalidArgument("invalid --dns-option %q: give a resolv.conf option such as ndots:2", o)
		}
		out.Options = append(out.Options, o)
	}
	return out, nil
}

// validSearchDomain accepts a domain name (or ".", Docker's "no search").
func validSearchDomain(d string) bool {
	if d == "." {
		return true
	}
	d = strings.TrimSuffix(d, ".")
	if d == "" || len(d) > 253 {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if !dnsLabelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// networkAliases maps --network-alias (the endpoints' Aliases) to network
// ids. Aliases are names on user networks only, as Docker says.
func (s *Server) networkAliases(ctx context.Context, c service.Caller, nc *network.NetworkingConfig) (map[string][]string, error) {
	if nc == nil {
		return nil, nil
	}
	var out map[string][]string
	for ref, ep := range nc.EndpointsConfig {
		if ep == nil || len(ep.Aliases) == 0 {
			continue
		}
		if ref == "bridge" || ref == "default" {
			return nil, errdefs.InvalidArgument("network-scoped aliases are supported only for containers in user defined networks")
		}
		if len(ep.Aliases) > maxDNSEntries {
			return nil, errdefs.InvalidArgument("at most %d aliases per network are allowed", maxDNSEntries)
		}
		for _, a := range ep.Aliases {
			if !aliasRE.MatchString(a) {
				return nil, errdefs.InvalidArgument("invalid network alias %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, up to 63 characters", a)
			}
		}
		n, err := s.resolveNetwork(ctx, c, ref)
		if err != nil {
			return nil, errdefs.InvalidArgument("network %s not found", ref)
		}
		if out == nil {
			out = map[string][]string{}
		}
		out[n.ID] = append(out[n.ID], ep.Aliases...)
	}
	return out, nil
}

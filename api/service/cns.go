package service

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// CNS tags (Triton's): the services an instance offers and the switch that
// keeps it out of DNS.
const (
	TagCNSServices = "triton.cns.services"
	TagCNSDisable  = "triton.cns.disable"
)

// DefaultCNSSuffix is the zone the CNS server is authoritative for unless
// configured otherwise.
const DefaultCNSSuffix = "cns.flotilla.local"

// CNSZone names the zone an instance's CNS names live in: names are
// <instance>.inst.<account>.<dc>.<suffix> and <service>.svc.<account>.<dc>.<suffix>,
// where <account> is the login or the account's uuid.
type CNSZone struct {
	Suffix string // e.g. cns.flotilla.local
	DC     string // e.g. flotilla-1
}

// CNSService is one entry of the triton.cns.services tag.
type CNSService struct {
	Name string
	Port int // 0 when none was given
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidDNSLabel reports whether s (lower-cased) can be one DNS label.
func ValidDNSLabel(s string) bool { return dnsLabel.MatchString(strings.ToLower(s)) }

// ParseCNSServices parses a triton.cns.services value:
// "name[:port][,name[:port]...]". Names are DNS labels (compared
// lower-cased), ports 1-65535; a bad entry is an error naming it.
func ParseCNSServices(v string) ([]CNSService, error) {
	var out []CNSService
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, portStr, hasPort := strings.Cut(item, ":")
		name = strings.ToLower(name)
		if !dnsLabel.MatchString(name) {
			return nil, fmt.Errorf("service name %q is not a DNS label (letters, digits and '-', at most 63)", name)
		}
		svc := CNSService{Name: name}
		if hasPort {
			p, err := strconv.Atoi(portStr)
			if err != nil || p < 1 || p > 65535 || strconv.Itoa(p) != portStr {
				return nil, fmt.Errorf("service %q has port %q: give a number from 1 to 65535", name, portStr)
			}
			svc.Port = p
		}
		out = append(out, svc)
	}
	return out, nil
}

// CNSDisabled reports whether tags keep an instance out of CNS.
func CNSDisabled(tags map[string]any) bool {
	switch v := tags[TagCNSDisable].(type) {
	case bool:
		return v
	case string:
		return strings.EqualFold(v, "true")
	}
	return false
}

// CNSServicesOf returns an instance's valid services from its tags (bad
// entries are left out: a tag is not a place to fail a query).
func CNSServicesOf(tags map[string]any) []CNSService {
	v, ok := tags[TagCNSServices].(string)
	if !ok {
		return nil
	}
	var out []CNSService
	for _, item := range strings.Split(v, ",") {
		if s, err := ParseCNSServices(item); err == nil {
			out = append(out, s...)
		}
	}
	return out
}

// accountLabels are the labels an account is known by in CNS names: its
// uuid and, when it is a DNS label, its login.
func accountLabels(login, ownerID string) []string {
	out := []string{strings.ToLower(ownerID)}
	if ValidDNSLabel(login) {
		out = append([]string{strings.ToLower(login)}, out...)
	}
	return out
}

// InstanceNames returns an instance's CNS instance names (without the
// trailing dot): by name (when it is a DNS label) and by uuid, each under
// the account's login and uuid. A disabled instance has none.
func (z CNSZone) InstanceNames(login, ownerID, id, name string, tags map[string]any) []string {
	if CNSDisabled(tags) {
		return nil
	}
	var out []string
	for _, acct := range accountLabels(login, ownerID) {
		tail := ".inst." + acct + "." + strings.ToLower(z.DC) + "." + strings.ToLower(z.Suffix)
		if ValidDNSLabel(name) {
			out = append(out, strings.ToLower(name)+tail)
		}
		out = append(out, strings.ToLower(id)+tail)
	}
	return out
}

// ServiceNames returns the CNS service names an instance belongs to, with
// the service each stands for.
func (z CNSZone) ServiceNames(login, ownerID string, tags map[string]any) map[string]CNSService {
	if CNSDisabled(tags) {
		return nil
	}
	out := map[string]CNSService{}
	for _, svc := range CNSServicesOf(tags) {
		for _, acct := range accountLabels(login, ownerID) {
			out[svc.Name+".svc."+acct+"."+strings.ToLower(z.DC)+"."+strings.ToLower(z.Suffix)] = svc
		}
	}
	return out
}

// DNSNames is CloudAPI's dns_names of an instance: its instance names and
// its service names.
func (z CNSZone) DNSNames(login, ownerID, id, name string, tags map[string]any) []string {
	out := z.InstanceNames(login, ownerID, id, name, tags)
	svcs := slices.Sorted(maps.Keys(z.ServiceNames(login, ownerID, tags)))
	return append(out, svcs...)
}

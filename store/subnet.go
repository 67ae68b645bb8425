package store

import (
	"net/netip"
	"strconv"

	"flotilla/api/errdefs"
)

// reservedRanges are IPv4 ranges no network may use: a node would take
// such an address for itself (loopback, link-local — which includes the
// metadata address 169.254.169.254), or it is not unicast.
var reservedRanges = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "the unspecified network 0.0.0.0/8"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback 127.0.0.0/8"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local 169.254.0.0/16"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast 224.0.0.0/4"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved 240.0.0.0/4"},
}

// checkUsableSubnet refuses subnets that overlap a reserved range.
func checkUsableSubnet(p netip.Prefix) error {
	for _, r := range reservedRanges {
		if r.prefix.Overlaps(p) {
			return errdefs.InvalidArgument("subnet %s overlaps %s, which no network may use: choose a private range such as 192.168.10.0/24", p, r.what)
		}
	}
	return nil
}

// DefaultSubnetPool is the address space tenants number their fabric
// networks from while the operator has not defined a pool: RFC 1918's
// private ranges.
var DefaultSubnetPool = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
}

// ParseSubnet parses an IPv4 subnet in CIDR notation ("10.1.2.0/24"),
// returns it masked, and refuses IPv6, host bits beyond the mask only when
// strict, and reserved ranges. Errors are Invalid and say what to send.
func ParseSubnet(s string, strict bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, errdefs.InvalidArgument("invalid subnet %q: use IPv4 CIDR notation such as 192.168.10.0/24", s)
	}
	if strict && p.Masked() != p {
		return netip.Prefix{}, errdefs.InvalidArgument("subnet %s has host bits set: did you mean %s?", p, p.Masked())
	}
	p = p.Masked()
	if err := checkUsableSubnet(p); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// checkTenantSubnet applies the rules for a tenant's fabric subnet: it lies
// inside one prefix of the operator's pool, overlaps no shared network
// (whose addresses belong to other tenants' instances and the nodes), and
// overlaps no other network on the same VLAN.
func checkTenantSubnet(p netip.Prefix, pool []netip.Prefix, shared, siblings []Network) error {
	inPool := false
	for _, q := range pool {
		if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
			inPool = true
			break
		}
	}
	if !inPool {
		return errdefs.InvalidArgument("subnet %s is outside the address pool for tenant networks (%s): choose a subnet inside it", p, prefixList(pool))
	}
	for _, n := range shared {
		if q, err := netip.ParsePrefix(n.Subnet); err == nil && q.Overlaps(p) {
			return errdefs.InvalidArgument("subnet %s overlaps %s of the shared network %s: choose another subnet", p, q, n.Name)
		}
	}
	for _, n := range siblings {
		if q, err := netip.ParsePrefix(n.Subnet); err == nil && q.Overlaps(p) {
			return errdefs.Conflictf("subnet %s overlaps %s of network %s on the same VLAN: choose another subnet or VLAN", p, q, n.Name)
		}
	}
	return nil
}

func prefixList(ps []netip.Prefix) string {
	s := ""
	for i, p := range ps {
		if i > 0 {
			s += ", "
		}
		s += p.String()
	}
	return s
}

// freeSubnetIn returns the first /bits subnet of pool that overlaps none of
// used, or false.
func freeSubnetIn(pool []netip.Prefix, used []netip.Prefix, bits int) (netip.Prefix, bool) {
	for _, q := range pool {
		if q.Bits() > bits {
			continue
		}
		step := uint32(1) << (32 - bits)
		start := addrUint(q.Addr())
		count := uint64(1) << (bits - q.Bits())
		for i := uint64(0); i < count && i < 1<<16; i++ {
			cand := netip.PrefixFrom(uintAddr(start+uint32(i)*step), bits)
			clash := checkUsableSubnet(cand) != nil
			for _, u := range used {
				if clash || u.Overlaps(cand) {
					clash = true
					break
				}
			}
			if !clash {
				return cand, true
			}
		}
	}
	return netip.Prefix{}, false
}

func addrUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uintAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func itoa(i int) string { return strconv.Itoa(i) }

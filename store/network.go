package store

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Network is an IPv4 network instances get addresses on. OwnerID nil means
// shared by every account (public networks, the default private network).
type Network struct {
	ID             string         `db:"id"`
	OwnerID        *string        `db:"owner_id"`
	Name           string         `db:"name"`
	Public         bool           `db:"public"`
	Description    string         `db:"description"`
	Subnet         string         `db:"subnet"`
	Gateway        *string        `db:"gateway"`
	ProvisionStart string         `db:"provision_start"`
	ProvisionEnd   string         `db:"provision_end"`
	Resolvers      []string       `db:"resolvers"`
	Routes         map[string]any `db:"routes"`
	Fabric         bool           `db:"fabric"`
	VLANID         int            `db:"vlan_id"`
	InternetNAT    bool           `db:"internet_nat"`
	Bridge         string         `db:"bridge"`
	CreatedAt      time.Time      `db:"created_at"`
	// VNI is the VXLAN network identifier of a fabric network's VLAN (0 for
	// shared networks): nodes carry the VLAN between them under it.
	VNI int `db:"vni"`
	// Labels are a Docker network's labels (empty for other networks).
	Labels map[string]string `db:"labels"`
}

const networkColumns = `id::text, owner_id::text, name, public, description, subnet::text, host(gateway),
	host(provision_start), host(provision_end), resolvers, routes, fabric, vlan_id, internet_nat, bridge, created_at, vni, labels`

// BridgeName is the Linux bridge that carries a network on every node.
func BridgeName(networkID string) string {
	return "fltb" + strings.ReplaceAll(networkID, "-", "")[:8]
}

const sqlCreateNetwork = `INSERT INTO networks (id, owner_id, name, public, description, subnet, gateway,
	provision_start, provision_end, resolvers, routes, fabric, vlan_id, internet_nat, bridge, vni, labels)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING ` + networkColumns

// CreateNetwork validates and records a network. Missing provision bounds
// default to the subnet's usable range after the gateway. A network with an
// owner is a fabric network on the owner's VLAN n.VLANID (see
// CreateFabricNetwork); one without is shared, offered by the operator.
// Errors: Invalid (bad or reserved subnet, addresses outside it), Conflict
// (name taken, overlap), NotFound (no such VLAN).
func (s *Store) CreateNetwork(ctx context.Context, n Network) (Network, error) {
	if n.OwnerID != nil {
		return s.CreateFabricNetwork(ctx, *n.OwnerID, n.VLANID, n)
	}
	if n.ID == "" {
		n.ID = uuid.NewString()
	}
	if err := normaliseNetwork(&n); err != nil {
		return Network{}, err
	}
	n.Fabric, n.VLANID = false, 0
	return insertNetwork(ctx, s.pool, n)
}

func insertNetwork(ctx context.Context, q querier, n Network) (Network, error) {
	n.Bridge = BridgeName(n.ID)
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	rows, _ := q.Query(ctx, sqlCreateNetwork, n.ID, n.OwnerID, n.Name, n.Public, n.Description, n.Subnet, n.Gateway,
		n.ProvisionStart, n.ProvisionEnd, n.Resolvers, n.Routes, n.Fabric, n.VLANID, n.InternetNAT, n.Bridge, n.VNI, n.Labels)
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Network])
	if err != nil {
		switch pgCode(err) {
		case sqlUniqueViolation:
			return Network{}, errdefs.Conflictf("network %q already exists", n.Name)
		case sqlCheckViolation:
			return Network{}, errdefs.InvalidArgument("network %s: provision range %s-%s must lie inside %s", n.Name, n.ProvisionStart, n.ProvisionEnd, n.Subnet)
		}
		return Network{}, translate(err)
	}
	return out, nil
}

func normaliseNetwork(n *Network) error {
	if n.Name == "" {
		return errdefs.InvalidArgument("network name is required")
	}
	prefix, err := netip.ParsePrefix(n.Subnet)
	if err != nil || !prefix.Addr().Is4() {
		return errdefs.InvalidArgument("invalid subnet %q: use IPv4 CIDR notation such as 10.10.0.0/24", n.Subnet)
	}
	prefix = prefix.Masked()
	if prefix.Bits() > 29 {
		return errdefs.InvalidArgument("subnet %s is too small: use /29 or larger", prefix)
	}
	if err := checkUsableSubnet(prefix); err != nil {
		return err
	}
	n.Subnet = prefix.String()
	first := prefix.Addr().Next()
	last := lastAddr(prefix).Prev() // skip broadcast
	if n.Gateway == nil || *n.Gateway == "" {
		g := first.String()
		n.Gateway = &g
	} else if gw, err := netip.ParseAddr(*n.Gateway); err != nil || !prefix.Contains(gw) {
		return errdefs.InvalidArgument("gateway %s is not inside subnet %s", *n.Gateway, prefix)
	} else if gw == prefix.Addr() || gw == lastAddr(prefix) {
		return errdefs.InvalidArgument("gateway %s is the network or broadcast address of %s: use a host address such as %s", gw, prefix, first)
	}
	gw, _ := netip.ParseAddr(*n.Gateway)
	if n.ProvisionStart == "" {
		start := first
		if start == gw {
			start = start.Next()
		}
		n.ProvisionStart = start.String()
	}
	if n.ProvisionEnd == "" {
		n.ProvisionEnd = last.String()
	}
	var bounds [2]netip.Addr
	for i, a := range []string{n.ProvisionStart, n.ProvisionEnd} {
		ip, err := netip.ParseAddr(a)
		if err != nil || !prefix.Contains(ip) {
			return errdefs.InvalidArgument("provision address %q is not inside subnet %s", a, prefix)
		}
		if ip == prefix.Addr() || ip == lastAddr(prefix) {
			return errdefs.InvalidArgument("provision address %s is the network or broadcast address of %s", ip, prefix)
		}
		bounds[i] = ip
	}
	if bounds[1].Less(bounds[0]) {
		return errdefs.InvalidArgument("provision range %s-%s is backwards: the start must not come after the end", bounds[0], bounds[1])
	}
	if n.Resolvers == nil {
		n.Resolvers = []string{}
	}
	if len(n.Resolvers) > 4 {
		return errdefs.InvalidArgument("at most 4 resolvers are allowed")
	}
	if n.Routes == nil {
		n.Routes = map[string]any{}
	}
	return nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	hostBits := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1 << hostBits) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// visibleNetwork: shared networks and the owner's own.
const visibleNetwork = `(owner_id IS NULL OR owner_id = $1)`

const sqlListNetworks = `SELECT ` + networkColumns + ` FROM networks WHERE ` + visibleNetwork + ` ORDER BY public DESC, name`

// ListNetworks returns the networks the owner may use.
func (s *Store) ListNetworks(ctx context.Context, ownerID string) ([]Network, error) {
	rows, _ := s.pool.Query(ctx, sqlListNetworks, ownerID)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Network])
	return out, translate(err)
}

const sqlGetNetwork = `SELECT ` + networkColumns + ` FROM networks WHERE ` + visibleNetwork + ` AND (id::text = $2 OR name = $2)
ORDER BY (id::text = $2) DESC, owner_id NULLS LAST LIMIT 1`

// GetNetwork finds a network the owner may use by uuid or name.
func (s *Store) GetNetwork(ctx context.Context, ownerID, idOrName string) (Network, error) {
	rows, _ := s.pool.Query(ctx, sqlGetNetwork, ownerID, idOrName)
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Network])
	if err != nil {
		return Network{}, notFound(err, "network "+idOrName+" not found")
	}
	return n, nil
}

const sqlNetworkByID = `SELECT ` + networkColumns + ` FROM networks WHERE id = $1`

// NetworkByID returns any network (agents, operators).
func (s *Store) NetworkByID(ctx context.Context, id string) (Network, error) {
	rows, _ := s.pool.Query(ctx, sqlNetworkByID, id)
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Network])
	if err != nil {
		return Network{}, notFound(err, "network "+id+" not found")
	}
	return n, nil
}

const sqlDeleteNetwork = `DELETE FROM networks WHERE id = $2 AND owner_id = $1`

// DeleteNetwork removes an owner's own network; one with addresses in use is a Conflict.
func (s *Store) DeleteNetwork(ctx context.Context, ownerID, id string) error {
	var inUse bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM nics WHERE network_id = $1)`, id).Scan(&inUse); err != nil {
		return translate(err)
	}
	if inUse {
		return errdefs.Conflictf("network %s has active endpoints", id)
	}
	tag, err := s.pool.Exec(ctx, sqlDeleteNetwork, ownerID, id)
	if err != nil {
		return translate(err)
	}
	if tag.RowsAffected() == 0 {
		return errdefs.NotFoundf("network %s not found", id)
	}
	return nil
}

// NetworkIP is one address of a network.
type NetworkIP struct {
	IP         string  `db:"ip"`
	Reserved   bool    `db:"reserved"`
	OwnerID    *string `db:"owner_id"`
	InstanceID *string `db:"instance_id"`
}

const sqlListNetworkIPs = `SELECT host(ip), reserved, owner_id::text, instance_id::text FROM network_ips
WHERE network_id = $1 AND (owner_id IS NULL OR owner_id = $2) ORDER BY ip LIMIT $3 OFFSET $4`

// ListNetworkIPs returns the allocated addresses of a network the owner may see.
func (s *Store) ListNetworkIPs(ctx context.Context, ownerID, networkID string, limit, offset int) ([]NetworkIP, error) {
	rows, _ := s.pool.Query(ctx, sqlListNetworkIPs, networkID, ownerID, limit, offset)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[NetworkIP])
	return out, translate(err)
}

// sqlAllocateRandomIP tries one pseudo-random address of the provision
// range: in a sparse network it succeeds at once, in one round trip.
const sqlAllocateRandomIP = `INSERT INTO network_ips (network_id, ip, instance_id, owner_id)
SELECT id, provision_start + ($4::bigint % (provision_end - provision_start + 1)), $2, $3 FROM networks
WHERE id = $1 AND provision_start + ($4::bigint % (provision_end - provision_start + 1)) IS DISTINCT FROM gateway
ON CONFLICT DO NOTHING
RETURNING host(ip)`

// sqlAllocateFirstFreeIP takes the lowest free address: the range start or
// the address after an allocated one. It is the fallback for dense networks.
const sqlAllocateFirstFreeIP = `WITH n AS (
	SELECT provision_start AS s, provision_end AS e, gateway AS g FROM networks WHERE id = $1
), used AS (
	SELECT ip FROM network_ips WHERE network_id = $1
	UNION SELECT g FROM n WHERE g IS NOT NULL
), cand AS (
	SELECT n.s AS ip FROM n WHERE NOT EXISTS (SELECT 1 FROM used WHERE used.ip = n.s)
	UNION ALL
	SELECT u.ip + 1 FROM used u, n WHERE u.ip >= n.s AND u.ip < n.e
		AND NOT EXISTS (SELECT 1 FROM used u2 WHERE u2.ip = u.ip + 1)
)
INSERT INTO network_ips (network_id, ip, instance_id, owner_id)
SELECT $1, min(ip), $2, $3 FROM cand HAVING min(ip) IS NOT NULL
ON CONFLICT DO NOTHING
RETURNING host(ip)`

// allocateIP takes a free address of the network for the instance: a few
// random tries (cheap while the network is sparse, and concurrent creates
// rarely meet), then the first free address.
func allocateIP(ctx context.Context, q querier, networkID, instanceID, ownerID string) (string, error) {
	var ip string
	for attempt := 0; attempt < 4; attempt++ {
		err := q.QueryRow(ctx, sqlAllocateRandomIP, networkID, instanceID, ownerID, rand.Int64N(1<<40)).Scan(&ip)
		if err == nil {
			return ip, nil
		}
		if err != pgx.ErrNoRows {
			return "", translate(err)
		}
	}
	for attempt := 0; attempt < 4; attempt++ {
		err := q.QueryRow(ctx, sqlAllocateFirstFreeIP, networkID, instanceID, ownerID).Scan(&ip)
		if err == nil {
			return ip, nil
		}
		if err != pgx.ErrNoRows {
			return "", translate(err)
		}
		// Either the range is full or a concurrent create took that address.
		var free bool
		if err := q.QueryRow(ctx, `SELECT (provision_end - provision_start + 1) >
	(SELECT count(*) FROM network_ips WHERE network_id = $1 AND ip BETWEEN provision_start AND provision_end)
	+ (CASE WHEN gateway BETWEEN provision_start AND provision_end THEN 1 ELSE 0 END)
FROM networks WHERE id = $1`, networkID).Scan(&free); err != nil {
			return "", notFound(err, "network "+networkID+" not found")
		}
		if !free {
			break
		}
	}
	return "", errdefs.New(errdefs.InsufficientCapacity, "network %s has no free addresses", networkID)
}

const sqlGetNetworkIP = `SELECT host(ip), reserved, owner_id::text, instance_id::text FROM network_ips
WHERE network_id = $1 AND ip = $2::inet`

// GetNetworkIP returns address ip of network n (one the caller has already
// found visible to ownerID): its allocation or reservation, or a free
// address with no owner. Another account's allocation on a shared network
// shows without its owner and instance. Errors: NotFound (ip is not an
// IPv4 address of n's subnet).
func (s *Store) GetNetworkIP(ctx context.Context, ownerID string, n Network, ip string) (NetworkIP, error) {
	return getNetworkIP(ctx, s.pool, ownerID, n, ip)
}

func getNetworkIP(ctx context.Context, q querier, ownerID string, n Network, ip string) (NetworkIP, error) {
	a, err := addrOf(n, ip)
	if err != nil {
		return NetworkIP{}, err
	}
	rows, _ := q.Query(ctx, sqlGetNetworkIP, n.ID, a.String())
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[NetworkIP])
	if errors.Is(err, pgx.ErrNoRows) {
		return NetworkIP{IP: a.String()}, nil
	}
	if err != nil {
		return NetworkIP{}, translate(err)
	}
	if out.OwnerID == nil || *out.OwnerID != ownerID {
		out.OwnerID, out.InstanceID = nil, nil
	}
	return out, nil
}

// addrOf parses ip as an address of n's subnet.
func addrOf(n Network, ip string) (netip.Addr, error) {
	a, err := netip.ParseAddr(ip)
	p, perr := netip.ParsePrefix(n.Subnet)
	if err != nil || perr != nil || !a.Is4() || !p.Contains(a) {
		return netip.Addr{}, errdefs.NotFoundf("IP %s is not an address of network %s (%s)", ip, n.Name, n.Subnet)
	}
	return a, nil
}

// SetNetworkIPReserved reserves a free address of one of the owner's own
// networks, so that no instance is given it, or releases such a
// reservation. Errors: NotFound (network or address), Forbidden (a shared
// network: its addresses are the operator's), Conflict (the address is an
// instance's, or the network's gateway).
func (s *Store) SetNetworkIPReserved(ctx context.Context, ownerID string, n Network, ip string, reserved bool) (NetworkIP, error) {
	if n.OwnerID == nil || *n.OwnerID != ownerID {
		return NetworkIP{}, errdefs.New(errdefs.Forbidden, "addresses of the shared network %s are reserved by operators only", n.Name)
	}
	a, err := addrOf(n, ip)
	if err != nil {
		return NetworkIP{}, err
	}
	if n.Gateway != nil && *n.Gateway == a.String() {
		return NetworkIP{}, errdefs.Conflictf("%s is the gateway of network %s", a, n.Name)
	}
	var out NetworkIP
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		cur, err := getNetworkIP(ctx, tx, ownerID, n, ip)
		if err != nil {
			return err
		}
		if cur.InstanceID != nil {
			return errdefs.Conflictf("%s is in use by instance %s: only free addresses can be reserved or released", a, *cur.InstanceID)
		}
		switch {
		case reserved && !cur.Reserved:
			_, err = tx.Exec(ctx, `INSERT INTO network_ips (network_id, ip, owner_id, reserved) VALUES ($1, $2::inet, $3, true)`,
				n.ID, a.String(), ownerID)
		case !reserved && cur.Reserved:
			_, err = tx.Exec(ctx, `DELETE FROM network_ips WHERE network_id = $1 AND ip = $2::inet AND instance_id IS NULL`,
				n.ID, a.String())
		}
		if err != nil {
			if pgCode(err) == sqlUniqueViolation {
				return errdefs.Conflictf("%s was just given to an instance", a)
			}
			return translate(err)
		}
		out, err = getNetworkIP(ctx, tx, ownerID, n, ip)
		return err
	})
	return out, err
}

package store

import (
	"context"
	"encoding/json"
	"net/netip"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// FabricVLAN is one of an account's layer-2 segments. VNI is the
// datacenter-wide VXLAN identifier nodes carry it under.
type FabricVLAN struct {
	OwnerID     string    `db:"owner_id"`
	VLANID      int       `db:"vlan_id"`
	Name        string    `db:"name"`
	Description string    `db:"description"`
	VNI         int       `db:"vni"`
	CreatedAt   time.Time `db:"created_at"`
}

const vlanColumns = `owner_id::text, vlan_id, name, description, vni, created_at`

// Default fabric: what every account gets on first use, as Triton names it.
const (
	DefaultFabricVLANID      = 2
	DefaultFabricVLANName    = "My-Fabric-VLAN"
	DefaultFabricNetworkName = "My-Fabric-Network"
	defaultFabricSubnet      = "192.168.128.0/22"
)

func validVLANID(id int) error {
	if id < 0 || id > 4095 {
		return errdefs.InvalidArgument("vlan_id %d is out of range: use 0 to 4095", id)
	}
	return nil
}

const sqlListVLANs = `SELECT ` + vlanColumns + ` FROM fabric_vlans WHERE owner_id = $1 ORDER BY vlan_id`

// ListFabricVLANs returns the owner's VLANs by vlan_id.
func (s *Store) ListFabricVLANs(ctx context.Context, ownerID string) ([]FabricVLAN, error) {
	rows, _ := s.pool.Query(ctx, sqlListVLANs, ownerID)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[FabricVLAN])
	return out, translate(err)
}

const sqlGetVLAN = `SELECT ` + vlanColumns + ` FROM fabric_vlans WHERE owner_id = $1 AND vlan_id = $2`

// GetFabricVLAN returns one of the owner's VLANs; NotFound otherwise.
func (s *Store) GetFabricVLAN(ctx context.Context, ownerID string, vlanID int) (FabricVLAN, error) {
	rows, _ := s.pool.Query(ctx, sqlGetVLAN, ownerID, vlanID)
	v, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[FabricVLAN])
	if err != nil {
		return FabricVLAN{}, notFound(err, "VLAN "+itoa(vlanID)+" not found")
	}
	return v, nil
}

const sqlCreateVLAN = `INSERT INTO fabric_vlans (owner_id, vlan_id, name, description) VALUES ($1, $2, $3, $4)
RETURNING ` + vlanColumns

// CreateFabricVLAN records a VLAN of the owner's and gives it a VNI.
// Errors: Invalid (vlan_id out of range, no name), Conflict (id or name taken).
func (s *Store) CreateFabricVLAN(ctx context.Context, v FabricVLAN) (FabricVLAN, error) {
	if err := validVLANID(v.VLANID); err != nil {
		return FabricVLAN{}, err
	}
	if v.Name == "" {
		return FabricVLAN{}, errdefs.InvalidArgument("VLAN name is required")
	}
	rows, _ := s.pool.Query(ctx, sqlCreateVLAN, v.OwnerID, v.VLANID, v.Name, v.Description)
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[FabricVLAN])
	if err != nil {
		if pgCode(err) == sqlUniqueViolation {
			if constraintOf(err) == "fabric_vlans_owner_id_name_key" {
				return FabricVLAN{}, errdefs.Conflictf("a VLAN named %q already exists", v.Name)
			}
			return FabricVLAN{}, errdefs.Conflictf("VLAN %d already exists", v.VLANID)
		}
		return FabricVLAN{}, translate(err)
	}
	return out, nil
}

// EnsureFabricVLAN returns the owner's VLAN v.VLANID, creating it with v's
// name and description when it does not exist.
func (s *Store) EnsureFabricVLAN(ctx context.Context, v FabricVLAN) (FabricVLAN, error) {
	if err := validVLANID(v.VLANID); err != nil {
		return FabricVLAN{}, err
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO fabric_vlans (owner_id, vlan_id, name, description) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING`, v.OwnerID, v.VLANID, v.Name, v.Description); err != nil {
		return FabricVLAN{}, translate(err)
	}
	return s.GetFabricVLAN(ctx, v.OwnerID, v.VLANID)
}

const sqlUpdateVLAN = `UPDATE fabric_vlans SET name = COALESCE($3, name), description = COALESCE($4, description)
WHERE owner_id = $1 AND vlan_id = $2 RETURNING ` + vlanColumns

// UpdateFabricVLAN renames or re-describes a VLAN (nil leaves a field).
func (s *Store) UpdateFabricVLAN(ctx context.Context, ownerID string, vlanID int, name, description *string) (FabricVLAN, error) {
	if name != nil && *name == "" {
		return FabricVLAN{}, errdefs.InvalidArgument("VLAN name must not be empty")
	}
	rows, _ := s.pool.Query(ctx, sqlUpdateVLAN, ownerID, vlanID, name, description)
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[FabricVLAN])
	if err != nil {
		if pgCode(err) == sqlUniqueViolation {
			return FabricVLAN{}, errdefs.Conflictf("a VLAN named %q already exists", *name)
		}
		return FabricVLAN{}, notFound(err, "VLAN "+itoa(vlanID)+" not found")
	}
	return out, nil
}

// DeleteFabricVLAN removes a VLAN without networks; one with networks is
// a Conflict (delete them first).
func (s *Store) DeleteFabricVLAN(ctx context.Context, ownerID string, vlanID int) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM networks WHERE owner_id = $1 AND vlan_id = $2`, ownerID, vlanID).Scan(&n); err != nil {
			return translate(err)
		}
		if n > 0 {
			return errdefs.Conflictf("VLAN %d still has %d network(s): delete them first", vlanID, n)
		}
		tag, err := tx.Exec(ctx, `DELETE FROM fabric_vlans WHERE owner_id = $1 AND vlan_id = $2`, ownerID, vlanID)
		if err != nil {
			return translate(err)
		}
		if tag.RowsAffected() == 0 {
			return errdefs.NotFoundf("VLAN %d not found", vlanID)
		}
		return nil
	})
}

// SubnetPool returns the operator's pool for tenant subnets, or
// DefaultSubnetPool while none is defined.
func (s *Store) SubnetPool(ctx context.Context) ([]netip.Prefix, error) {
	return subnetPool(ctx, s.pool)
}

func subnetPool(ctx context.Context, q querier) ([]netip.Prefix, error) {
	rows, _ := q.Query(ctx, `SELECT prefix::text FROM fabric_subnet_pool ORDER BY prefix`)
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, translate(err)
	}
	if len(list) == 0 {
		return DefaultSubnetPool, nil
	}
	out := make([]netip.Prefix, 0, len(list))
	for _, p := range list {
		if pp, err := netip.ParsePrefix(p); err == nil {
			out = append(out, pp)
		}
	}
	return out, nil
}

// AddSubnetPool adds prefix to the operator's pool (defining the pool
// replaces the default). Reserved ranges are Invalid.
func (s *Store) AddSubnetPool(ctx context.Context, prefix string) (netip.Prefix, error) {
	p, err := ParseSubnet(prefix, true)
	if err != nil {
		return netip.Prefix{}, err
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO fabric_subnet_pool (prefix) VALUES ($1) ON CONFLICT DO NOTHING`, p.String()); err != nil {
		return netip.Prefix{}, translate(err)
	}
	return p, nil
}

// RemoveSubnetPool removes prefix from the pool; existing networks stay.
func (s *Store) RemoveSubnetPool(ctx context.Context, prefix string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM fabric_subnet_pool WHERE prefix = $1::cidr`, prefix)
	if err != nil {
		return errdefs.InvalidArgument("%q is not a prefix of the pool", prefix)
	}
	if tag.RowsAffected() == 0 {
		return errdefs.NotFoundf("%s is not in the subnet pool", prefix)
	}
	return nil
}

const sqlLockVLAN = `SELECT vni FROM fabric_vlans WHERE owner_id = $1 AND vlan_id = $2 FOR UPDATE`

// CreateFabricNetwork records a network of the owner's on its VLAN vlanID.
// Its subnet must lie in the operator's pool, avoid reserved ranges and
// shared networks, and overlap no other network of that VLAN; its gateway
// and provision range lie inside it. The VLAN row is locked, so two
// concurrent creates cannot both pass the overlap check.
func (s *Store) CreateFabricNetwork(ctx context.Context, ownerID string, vlanID int, n Network) (Network, error) {
	var out Network
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = createFabricNetwork(ctx, tx, ownerID, vlanID, n)
		return err
	})
	return out, err
}

func createFabricNetwork(ctx context.Context, tx pgx.Tx, ownerID string, vlanID int, n Network) (Network, error) {
	if err := validVLANID(vlanID); err != nil {
		return Network{}, err
	}
	if n.ID == "" {
		n.ID = uuid.NewString()
	}
	n.OwnerID, n.VLANID, n.Fabric, n.Public = &ownerID, vlanID, true, false
	if n.Subnet != "" {
		if err := normaliseNetwork(&n); err != nil {
			return Network{}, err
		}
	}
	if err := tx.QueryRow(ctx, sqlLockVLAN, ownerID, vlanID).Scan(&n.VNI); err != nil {
		return Network{}, notFound(err, "VLAN "+itoa(vlanID)+" not found: create it first")
	}
	pool, err := subnetPool(ctx, tx)
	if err != nil {
		return Network{}, err
	}
	rows, _ := tx.Query(ctx, `SELECT `+networkColumns+` FROM networks WHERE owner_id IS NULL OR (owner_id = $1 AND vlan_id = $2)`, ownerID, vlanID)
	others, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Network])
	if err != nil {
		return Network{}, translate(err)
	}
	var shared, siblings []Network
	var used []netip.Prefix
	for _, o := range others {
		if o.OwnerID == nil {
			shared = append(shared, o)
		} else {
			siblings = append(siblings, o)
		}
		if p, err := netip.ParsePrefix(o.Subnet); err == nil {
			used = append(used, p)
		}
	}
	if n.Subnet == "" {
		// No subnet asked for: the first free /24 of the pool.
		p, ok := freeSubnetIn(pool, used, 24)
		if !ok {
			return Network{}, errdefs.New(errdefs.InsufficientCapacity, "no free /24 is left in the subnet pool: give a subnet")
		}
		n.Subnet = p.String()
		if err := normaliseNetwork(&n); err != nil {
			return Network{}, err
		}
	}
	if err := checkTenantSubnet(netip.MustParsePrefix(n.Subnet), pool, shared, siblings); err != nil {
		return Network{}, err
	}
	return insertNetwork(ctx, tx, n)
}

// ensureDefaultFabric returns the account's default network, creating its
// default fabric VLAN and network on first use. The account row is locked
// (FOR NO KEY UPDATE, which the instance insert's key-share lock does not block),
// so concurrent first creates make one network.
func ensureDefaultFabric(ctx context.Context, tx pgx.Tx, ownerID string) (string, error) {
	var def *string
	if err := tx.QueryRow(ctx, `SELECT default_network::text FROM accounts WHERE id = $1 FOR NO KEY UPDATE`, ownerID).Scan(&def); err != nil {
		return "", notFound(err, "account not found")
	}
	if def != nil {
		var ok bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM networks WHERE id = $1 AND (owner_id IS NULL OR owner_id = $2))`,
			*def, ownerID).Scan(&ok); err != nil {
			return "", translate(err)
		}
		if ok {
			return *def, nil
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO fabric_vlans (owner_id, vlan_id, name, description)
VALUES ($1, $2, $3, 'Default fabric VLAN') ON CONFLICT DO NOTHING`, ownerID, DefaultFabricVLANID, DefaultFabricVLANName); err != nil {
		return "", translate(err)
	}
	n := Network{Name: DefaultFabricNetworkName, Description: "Default fabric network", Subnet: defaultFabricSubnet,
		InternetNAT: true}
	created, err := createFabricNetwork(ctx, tx, ownerID, DefaultFabricVLANID, n)
	if errdefs.Is(err, errdefs.Invalid) || errdefs.Is(err, errdefs.Conflict) {
		// The operator's pool or the account's own networks exclude the
		// usual subnet (or name): take the first free /24 of the pool.
		pool, perr := subnetPool(ctx, tx)
		if perr != nil {
			return "", perr
		}
		rows, _ := tx.Query(ctx, `SELECT subnet::text FROM networks WHERE owner_id IS NULL OR owner_id = $1`, ownerID)
		subnets, qerr := pgx.CollectRows(rows, pgx.RowTo[string])
		if qerr != nil {
			return "", translate(qerr)
		}
		var used []netip.Prefix
		for _, s := range subnets {
			if p, err := netip.ParsePrefix(s); err == nil {
				used = append(used, p)
			}
		}
		p, ok := freeSubnetIn(pool, used, 24)
		if !ok {
			return "", errdefs.New(errdefs.InsufficientCapacity, "no free /24 is left in the subnet pool for the account's default fabric network: ask an operator to widen the pool")
		}
		n.Subnet = p.String()
		n.Name = DefaultFabricNetworkName + "-" + p.Addr().String()
		created, err = createFabricNetwork(ctx, tx, ownerID, DefaultFabricVLANID, n)
	}
	if err != nil {
		return "", err
	}
	if _, err := tx.Exec(ctx, `UPDATE accounts SET default_network = $2, updated_at = now() WHERE id = $1`, ownerID, created.ID); err != nil {
		return "", translate(err)
	}
	return created.ID, nil
}

// EnsureDefaultFabric returns the owner's default network id, creating the
// default fabric VLAN and network on first use.
func (s *Store) EnsureDefaultFabric(ctx context.Context, ownerID string) (string, error) {
	var id string
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		id, err = ensureDefaultFabric(ctx, tx, ownerID)
		return err
	})
	return id, err
}

// AddNIC gives one of the owner's instances a NIC on networkID (one the
// owner may use) with an address from its pool, bumping the instance's
// generation so that its node plumbs it. edit, when set, changes the
// instance in the same transaction (a Docker connect's aliases go into its
// spec), and only when the NIC is new. The boolean is false (and the
// existing NIC returned, nothing written) when the instance already has a
// NIC there. Errors: NotFound (instance or network), Gone (deleted
// instance), InsufficientCapacity (network full), Invalid (10 NICs), and
// edit's.
func (s *Store) AddNIC(ctx context.Context, ownerID, instanceID, networkID string, caller map[string]any, edit func(in *Instance) error) (NIC, bool, error) {
	var nic NIC
	created := false
	_, err := s.UpdateInstance(ctx, ownerID, instanceID, Mutation{Action: "add_nics", Caller: caller,
		Params: map[string]any{"network": networkID},
		Apply:  edit,
		applyTx: func(ctx context.Context, tx pgx.Tx, in *Instance) error {
			if in.DesiredState == "deleted" {
				return errGone(*in)
			}
			var visible bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM networks WHERE id::text = $2 AND `+visibleNetwork+`)`,
				ownerID, networkID).Scan(&visible); err != nil {
				return translate(err)
			}
			if !visible {
				return errdefs.NotFoundf("network %s not found", networkID)
			}
			if err := s.loadNICs(ctx, tx, []*Instance{in}); err != nil {
				return err
			}
			pos := 0
			for _, n := range in.NICs {
				if n.NetworkID == networkID {
					nic = n
					return errNICExists
				}
				pos = max(pos, n.Position+1)
			}
			if pos > 9 {
				return errdefs.InvalidArgument("an instance has at most 10 NICs")
			}
			ip, err := allocateIP(ctx, tx, networkID, in.ID, ownerID)
			if err != nil {
				return err
			}
			// UpdateInstance writes the instance at the next generation.
			nic, err = insertNIC(ctx, tx, in.ID, ownerID, networkID, ip, len(in.NICs) == 0, pos, in.Generation+1)
			created = err == nil
			in.NICs = nil // loaded again with the new one
			return err
		}})
	if err == errNICExists {
		return nic, false, nil
	}
	if err != nil {
		return NIC{}, false, err
	}
	return nic, created, nil
}

var errNICExists = errdefs.Conflictf("the instance already has a NIC on that network")

// RemoveNIC removes the NIC with mac (colons optional) from one of the
// owner's instances, frees its address and forgets the instance's Docker
// aliases on that network. When the primary NIC goes, the next one becomes
// primary. Errors: NotFound, Gone.
func (s *Store) RemoveNIC(ctx context.Context, ownerID, instanceID, mac string, caller map[string]any) error {
	mac = NormaliseMAC(mac)
	_, err := s.UpdateInstance(ctx, ownerID, instanceID, Mutation{Action: "remove_nics", Caller: caller,
		Params: map[string]any{"mac": mac},
		applyTx: func(ctx context.Context, tx pgx.Tx, in *Instance) error {
			var ip, networkID string
			var primary bool
			err := tx.QueryRow(ctx, `DELETE FROM nics WHERE instance_id = $1 AND mac = $2 RETURNING host(ip), is_primary, network_id::text`,
				in.ID, mac).Scan(&ip, &primary, &networkID)
			if err != nil {
				return notFound(err, "NIC "+mac+" not found")
			}
			in.Spec = dropNetworkAliases(in.Spec, networkID)
			if _, err := tx.Exec(ctx, `DELETE FROM network_ips WHERE instance_id = $1 AND ip = $2::inet`, in.ID, ip); err != nil {
				return translate(err)
			}
			if primary {
				// The next NIC becomes primary.
				if _, err := tx.Exec(ctx, `UPDATE nics SET is_primary = true WHERE mac = (SELECT mac FROM nics
WHERE instance_id = $1 ORDER BY position LIMIT 1)`, in.ID); err != nil {
					return translate(err)
				}
			}
			return nil
		}})
	return err
}

// dropNetworkAliases removes the names an instance's spec gives it on
// networkID (network_aliases, which node resolvers read): an instance off
// a network has no names there, and a later NIC on it starts without them.
// A spec it cannot read is returned as it is.
func dropNetworkAliases(spec json.RawMessage, networkID string) json.RawMessage {
	var top map[string]json.RawMessage
	if len(spec) == 0 || json.Unmarshal(spec, &top) != nil || top["network_aliases"] == nil {
		return spec
	}
	var aliases map[string]json.RawMessage
	if json.Unmarshal(top["network_aliases"], &aliases) != nil {
		return spec
	}
	if _, ok := aliases[networkID]; !ok {
		return spec
	}
	delete(aliases, networkID)
	if len(aliases) == 0 {
		delete(top, "network_aliases")
	} else {
		b, err := json.Marshal(aliases)
		if err != nil {
			return spec
		}
		top["network_aliases"] = b
	}
	out, err := json.Marshal(top)
	if err != nil {
		return spec
	}
	return out
}

// NormaliseMAC lower-cases a MAC and puts colons in one sent without them
// (CloudAPI paths carry "90b8d0aabbcc").
func NormaliseMAC(mac string) string {
	b := []byte{}
	for i := 0; i < len(mac); i++ {
		c := mac[i]
		switch {
		case c >= 'A' && c <= 'F':
			b = append(b, c+'a'-'A')
		case c >= 'a' && c <= 'f' || c >= '0' && c <= '9':
			b = append(b, c)
		case c == ':' || c == '-':
		default:
			return mac
		}
	}
	if len(b) != 12 {
		return mac
	}
	out := make([]byte, 0, 17)
	for i := 0; i < 12; i += 2 {
		if i > 0 {
			out = append(out, ':')
		}
		out = append(out, b[i], b[i+1])
	}
	return string(out)
}

// UnderlayPeers returns the underlay addresses of the running nodes other
// than nodeID: the VXLAN tunnel endpoints a node floods its fabrics' traffic
// to.
func (s *Store) UnderlayPeers(ctx context.Context, nodeID string) ([]string, error) {
	rows, _ := s.pool.Query(ctx, `SELECT DISTINCT underlay_ip FROM nodes WHERE id <> $1 AND underlay_ip <> ''
	AND state = 'running' ORDER BY underlay_ip`, nodeID)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return out, translate(err)
}

// SetNodeUnderlay records the address other nodes reach nodeID's VXLAN
// endpoint at.
func (s *Store) SetNodeUnderlay(ctx context.Context, nodeID, ip string) error {
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil || !a.Is4() {
			return errdefs.InvalidArgument("underlay address %q is not an IPv4 address", ip)
		}
	}
	_, err := s.pool.Exec(ctx, `UPDATE nodes SET underlay_ip = $2 WHERE id = $1 AND underlay_ip <> $2`, nodeID, ip)
	return translate(err)
}

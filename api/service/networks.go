package service

import (
	"context"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/store"
)

// CreateDockerNetwork makes a Docker network: a fabric network of the
// caller's on the account's default VLAN (made on first use, as the default
// fabric network is), numbered from the operator's subnet pool when n has
// no subnet. The subnet rules are the store's (CreateFabricNetwork).
func (s *Service) CreateDockerNetwork(ctx context.Context, c Caller, n store.Network) (store.Network, error) {
	if _, err := s.Store.EnsureDefaultFabric(ctx, c.AccountID); err != nil {
		return store.Network{}, err
	}
	return s.Store.CreateFabricNetwork(ctx, c.AccountID, store.DefaultFabricVLANID, n)
}

// AddNIC gives one of the caller's instances a NIC on the network named or
// identified by networkRef. created is false when the instance already had
// a NIC there (that NIC is returned). Errors: NotFound (instance), Invalid
// (unknown network, a second public network), Gone (deleted instance).
func (s *Service) AddNIC(ctx context.Context, c Caller, instanceID, networkRef string) (nic store.NIC, created bool, err error) {
	in, err := s.Store.GetInstance(ctx, c.AccountID, instanceID)
	if err != nil {
		return store.NIC{}, false, err
	}
	if in.State == "deleted" || in.DesiredState == "deleted" {
		return store.NIC{}, false, errdefs.New(errdefs.Gone, "VM %s has been deleted", in.ID)
	}
	if err := nicsChangeable(in); err != nil {
		return store.NIC{}, false, err
	}
	n, err := s.Store.GetNetwork(ctx, c.AccountID, networkRef)
	if err != nil {
		if errdefs.Is(err, errdefs.NotFound) {
			return store.NIC{}, false, &errdefs.Error{Code: errdefs.Invalid, Message: "network " + networkRef + " not found", Reason: "InvalidArgument"}
		}
		return store.NIC{}, false, err
	}
	if err := checkNewNIC(in, n); err != nil {
		return store.NIC{}, false, err
	}
	return s.Store.AddNIC(ctx, c.AccountID, in.ID, n.ID, c.Audit(), nil)
}

// checkNewNIC refuses a NIC on n for a deleted instance (Gone), a VM and
// a second public network (Invalid).
func checkNewNIC(in store.Instance, n store.Network) error {
	if in.State == "deleted" || in.DesiredState == "deleted" {
		return errdefs.New(errdefs.Gone, "VM %s has been deleted", in.ID)
	}
	if err := nicsChangeable(in); err != nil {
		return err
	}
	if n.Public {
		for _, x := range in.NICs {
			if x.Public && x.NetworkID != n.ID {
				return errdefs.InvalidArgument("Invalid Networks: only one public network is allowed (the instance is on %s)", x.NetworkName)
			}
		}
	}
	return nil
}

// ConnectNetwork gives one of the caller's instances a NIC on the network
// networkID, with aliases as its extra names there (answered by node
// resolvers), in one change; a running instance gets the NIC live. Errors:
// NotFound (instance, network), Conflict (already on the network), Gone,
// Invalid (a second public network, more than 10 NICs),
// InsufficientCapacity (no free address).
func (s *Service) ConnectNetwork(ctx context.Context, c Caller, instanceID, networkID string, aliases []string) (store.NIC, error) {
	in, err := s.Store.GetInstance(ctx, c.AccountID, instanceID)
	if err != nil {
		return store.NIC{}, err
	}
	n, err := s.Store.GetNetwork(ctx, c.AccountID, networkID)
	if err != nil {
		return store.NIC{}, err
	}
	if err := checkNewNIC(in, n); err != nil {
		return store.NIC{}, err
	}
	var edit func(in *store.Instance) error
	if len(aliases) > 0 {
		edit = func(in *store.Instance) error {
			p := DecodeProcessSpec(in.Spec)
			if p.NetworkAliases == nil {
				p.NetworkAliases = map[string][]string{}
			}
			p.NetworkAliases[n.ID] = append([]string{}, aliases...)
			in.Spec = mustJSON(p)
			return nil
		}
	}
	nic, created, err := s.Store.AddNIC(ctx, c.AccountID, in.ID, n.ID, c.Audit(), edit)
	if err != nil {
		return store.NIC{}, err
	}
	if !created {
		return store.NIC{}, errdefs.Conflictf("instance %s is already on network %s", in.ID, n.Name)
	}
	return nic, nil
}

// DisconnectNetwork removes one of the caller's instances' NIC on the
// network networkID (live for a running instance), its address and its
// aliases there. Errors: NotFound (instance), Conflict (not on the
// network), Gone.
func (s *Service) DisconnectNetwork(ctx context.Context, c Caller, instanceID, networkID string) error {
	in, err := s.Store.GetInstance(ctx, c.AccountID, instanceID)
	if err != nil {
		return err
	}
	if in.State == "deleted" || in.DesiredState == "deleted" {
		return errdefs.New(errdefs.Gone, "VM %s has been deleted", in.ID)
	}
	if err := nicsChangeable(in); err != nil {
		return err
	}
	for _, nic := range in.NICs {
		if nic.NetworkID == networkID {
			err := s.Store.RemoveNIC(ctx, c.AccountID, in.ID, nic.MAC, c.Audit())
			if errdefs.Is(err, errdefs.NotFound) {
				// Removed by a concurrent request between the two reads.
				return errdefs.Conflictf("instance %s is not on network %s", in.ID, networkID)
			}
			return err
		}
	}
	return errdefs.Conflictf("instance %s is not on network %s", in.ID, networkID)
}

// RemoveNIC removes the NIC with mac from one of the caller's instances and
// frees its address. Errors: NotFound (instance or NIC), Gone.
func (s *Service) RemoveNIC(ctx context.Context, c Caller, instanceID, mac string) error {
	in, err := s.Store.GetInstance(ctx, c.AccountID, instanceID)
	if err != nil {
		return err
	}
	if err := nicsChangeable(in); err != nil {
		return err
	}
	return s.Store.RemoveNIC(ctx, c.AccountID, instanceID, mac, c.Audit())
}

// nicsChangeable refuses NIC changes the instance's node cannot apply: a
// QEMU VM keeps the NICs it was created with.
func nicsChangeable(in store.Instance) error {
	if in.Brand == driver.BrandBhyve || in.Brand == driver.BrandKVM {
		return errdefs.InvalidArgument("adding or removing NICs of a VM (brand %s) is not supported: its NICs are fixed when it is created", in.Brand)
	}
	return nil
}

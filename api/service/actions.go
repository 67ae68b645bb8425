package service

import (
	"context"
	"maps"

	"flotilla/api/errdefs"
	"flotilla/store"
)

// Start asks for the instance to run.
func (s *Service) Start(ctx context.Context, c Caller, id string) (store.Instance, error) {
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: "start", Caller: c.Audit(),
		Apply: func(in *store.Instance) error { in.DesiredState = "running"; return nil }})
}

// Stop asks for the instance to stop.
func (s *Service) Stop(ctx context.Context, c Caller, id string) (store.Instance, error) {
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: "stop", Caller: c.Audit(),
		Apply: func(in *store.Instance) error { in.DesiredState = "stopped"; return nil }})
}

// Reboot asks the agent to restart the instance; like every action, its
// audit entry finishes when the agent reports the new generation.
func (s *Service) Reboot(ctx context.Context, c Caller, id string) (store.Instance, error) {
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: "reboot", Caller: c.Audit(),
		Apply: func(in *store.Instance) error {
			in.RebootCount++
			in.DesiredState = "running"
			return nil
		}})
}

// Rename gives the instance a new name, unique among the owner's live instances.
func (s *Service) Rename(ctx context.Context, c Caller, id, name string) (store.Instance, error) {
	if name == "" {
		return store.Instance{}, &errdefs.Error{Code: errdefs.Invalid, Message: "name is required", Reason: "MissingParameter"}
	}
	if !nameRE.MatchString(name) {
		return store.Instance{}, errdefs.InvalidArgument("Invalid machine name %q", name)
	}
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: "rename", Caller: c.Audit(),
		Params: map[string]any{"name": name},
		Apply:  func(in *store.Instance) error { in.Name = name; return nil }})
}

// Resize moves the instance to another package; the node must fit the new size.
func (s *Service) Resize(ctx context.Context, c Caller, id, pkgRef string) (store.Instance, error) {
	if pkgRef == "" {
		return store.Instance{}, &errdefs.Error{Code: errdefs.Invalid, Message: "package is required", Reason: "MissingParameter"}
	}
	pkg, err := s.resolvePackage(ctx, CreateRequest{Package: pkgRef})
	if err != nil {
		return store.Instance{}, err
	}
	cur, err := s.Store.GetInstance(ctx, c.AccountID, id)
	if err != nil {
		return store.Instance{}, err
	}
	if cur.Brand == "kvm" {
		return store.Instance{}, errdefs.InvalidArgument("kvm instances cannot be resized")
	}
	if err := s.checkResizeDisks(ctx, c, cur, pkg); err != nil {
		return store.Instance{}, err
	}
	res := &store.Resources{MemoryMiB: pkg.MemoryMiB, DiskMiB: pkg.DiskMiB, VCPUsMilli: int64(pkg.VCPUs) * 1000}
	out, err := s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: "resize", Caller: c.Audit(),
		Params: map[string]any{"package": pkg.Name}, Resources: res,
		Apply: func(in *store.Instance) error {
			in.PackageID, in.PackageName = &pkg.ID, pkg.Name
			return nil
		}})
	if err == nil {
		s.Placer.Reload(ctx)
	}
	return out, err
}

// SetTags merges tags into the instance's tags (replace: sets them exactly).
func (s *Service) SetTags(ctx context.Context, c Caller, id string, tags map[string]any, replace bool) (store.Instance, error) {
	action := "set_tags"
	if replace {
		action = "replace_tags"
	}
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: action, Caller: c.Audit(), Params: tags,
		Apply: func(in *store.Instance) error {
			if replace {
				in.Tags = map[string]any{}
			}
			maps.Copy(in.Tags, tags)
			return nil
		}})
}

// DeleteTags removes one tag, or all when key is "".
func (s *Service) DeleteTags(ctx context.Context, c Caller, id, key string) (store.Instance, error) {
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: "remove_tags", Caller: c.Audit(),
		Apply: func(in *store.Instance) error {
			if key == "" {
				in.Tags = map[string]any{}
				return nil
			}
			if _, ok := in.Tags[key]; !ok {
				return errdefs.NotFoundf("tag %q not found", key)
			}
			delete(in.Tags, key)
			return nil
		}})
}

// protectedMetadata may not be removed by customers.
var protectedMetadata = map[string]bool{"credentials": true, "administrator_pw": true, "root_authorized_keys": true}

// SetMetadata merges metadata; *_pw keys and credentials are ignored.
func (s *Service) SetMetadata(ctx context.Context, c Caller, id string, md map[string]any) (store.Instance, error) {
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: "set_metadata", Caller: c.Audit(),
		Apply: func(in *store.Instance) error {
			for k, v := range md {
				if k == "credentials" || len(k) > 3 && k[len(k)-3:] == "_pw" {
					continue
				}
				in.Metadata[k] = v
			}
			return nil
		}})
}

// DeleteMetadata removes one key, or all but the protected ones when key is "".
func (s *Service) DeleteMetadata(ctx context.Context, c Caller, id, key string) (store.Instance, error) {
	action := "remove_metadata"
	if key == "" {
		action = "replace_metadata"
	} else if protectedMetadata[key] {
		return store.Instance{}, errdefs.InvalidArgument("%s cannot be deleted", key)
	}
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: action, Caller: c.Audit(),
		Apply: func(in *store.Instance) error {
			if key != "" {
				delete(in.Metadata, key)
				return nil
			}
			for k := range in.Metadata {
				if k != "root_authorized_keys" && k != "administrator_pw" {
					delete(in.Metadata, k)
				}
			}
			return nil
		}})
}

// SetFirewall enables or disables the instance's firewall.
func (s *Service) SetFirewall(ctx context.Context, c Caller, id string, on bool) (store.Instance, error) {
	action := "disable_firewall"
	if on {
		action = "enable_firewall"
	}
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: action, Caller: c.Audit(),
		Apply: func(in *store.Instance) error { in.FirewallEnabled = on; return nil }})
}

// SetDeletionProtection turns deletion protection on or off.
func (s *Service) SetDeletionProtection(ctx context.Context, c Caller, id string, on bool) (store.Instance, error) {
	action := "disable_deletion_protection"
	if on {
		action = "enable_deletion_protection"
	}
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: action, Caller: c.Audit(),
		Apply: func(in *store.Instance) error { in.DeletionProtection = on; return nil }})
}

// Delete asks for the instance to be deleted.
func (s *Service) Delete(ctx context.Context, c Caller, id string) (store.Instance, error) {
	return s.Store.DeleteInstance(ctx, c.AccountID, id, c.Audit())
}

// UpdateProcess replaces the instance's process spec (Docker rename, update).
func (s *Service) UpdateProcess(ctx context.Context, c Caller, id, action string, fn func(p *ProcessSpec) error) (store.Instance, error) {
	return s.Store.UpdateInstance(ctx, c.AccountID, id, store.Mutation{Action: action, Caller: c.Audit(),
		Apply: func(in *store.Instance) error {
			p := DecodeProcessSpec(in.Spec)
			if err := fn(&p); err != nil {
				return err
			}
			in.Spec = mustJSON(p)
			return nil
		}})
}

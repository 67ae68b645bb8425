package service

import (
	"context"

	"flotilla/api/errdefs"
	"flotilla/store"
)

// DefaultPackages are the sizes a new cloud offers: 256 MiB to 16 GiB.
var DefaultPackages = []store.Package{
	{Name: "g1-nano-256M", MemoryMiB: 256, DiskMiB: 10240, VCPUs: 1, Group: "g1", Description: "Nano: 256 MiB, 1 vCPU", Default: true},
	{Name: "g1-micro-512M", MemoryMiB: 512, DiskMiB: 20480, VCPUs: 1, Group: "g1", Description: "Micro: 512 MiB, 1 vCPU"},
	{Name: "g1-small-1G", MemoryMiB: 1024, DiskMiB: 25600, VCPUs: 1, Group: "g1", Description: "Small: 1 GiB, 1 vCPU"},
	{Name: "g1-medium-2G", MemoryMiB: 2048, DiskMiB: 51200, VCPUs: 2, Group: "g1", Description: "Medium: 2 GiB, 2 vCPUs"},
	{Name: "g1-large-4G", MemoryMiB: 4096, DiskMiB: 102400, VCPUs: 2, Group: "g1", Description: "Large: 4 GiB, 2 vCPUs"},
	{Name: "g1-xlarge-8G", MemoryMiB: 8192, DiskMiB: 204800, VCPUs: 4, Group: "g1", Description: "XLarge: 8 GiB, 4 vCPUs"},
	{Name: "g1-2xlarge-16G", MemoryMiB: 16384, DiskMiB: 409600, VCPUs: 8, Group: "g1", Description: "2XLarge: 16 GiB, 8 vCPUs"},
}

// DefaultNetworks are a public and a private network. Their ids are fixed so
// that their bridges keep the same names on every node and every dev cloud.
var DefaultNetworks = []store.Network{
	{ID: "0a1c0de0-0000-4000-8000-0000000000a1", Name: "public", Public: true, Description: "Public network", Subnet: "10.198.0.0/20", InternetNAT: true},
	{ID: "0a2c0de0-0000-4000-8000-0000000000a2", Name: "private", Public: false, Description: "Private network shared by all accounts", Subnet: "10.199.0.0/20", InternetNAT: true},
}

// EnsurePackages creates the default packages that do not exist yet.
func EnsurePackages(ctx context.Context, st *store.Store) error {
	for _, p := range DefaultPackages {
		p.Active = true
		if _, err := st.CreatePackage(ctx, p); err != nil && !errdefs.Is(err, errdefs.Conflict) {
			return err
		}
	}
	return nil
}

// EnsureNetworks creates the default networks that do not exist yet.
func EnsureNetworks(ctx context.Context, st *store.Store) error {
	for _, n := range DefaultNetworks {
		if _, err := st.CreateNetwork(ctx, n); err != nil && !errdefs.Is(err, errdefs.Conflict) {
			return err
		}
	}
	return nil
}

package store

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Package is a size of instance: memory, disk and vCPUs.
type Package struct {
	ID           string    `db:"id"`
	Name         string    `db:"name"`
	Version      string    `db:"version"`
	MemoryMiB    int64     `db:"memory_mib"`
	DiskMiB      int64     `db:"disk_mib"`
	SwapMiB      int64     `db:"swap_mib"`
	LWPs         int       `db:"lwps"`
	VCPUs        int       `db:"vcpus"`
	Group        string    `db:"group_name"`
	Description  string    `db:"description"`
	Brand        string    `db:"brand"`
	FlexibleDisk bool      `db:"flexible_disk"`
	Default      bool      `db:"is_default"`
	Active       bool      `db:"active"`
	CreatedAt    time.Time `db:"created_at"`
}

const packageColumns = `id::text, name, version, memory_mib, disk_mib, swap_mib, lwps, vcpus, group_name,
	description, brand, flexible_disk, is_default, active, created_at`

const sqlCreatePackage = `INSERT INTO packages (id, name, version, memory_mib, disk_mib, swap_mib, lwps, vcpus,
	group_name, description, brand, flexible_disk, is_default, active)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING ` + packageColumns

// CreatePackage adds a package. The same name and version twice is a Conflict.
func (s *Store) CreatePackage(ctx context.Context, p Package) (Package, error) {
	if p.ID == "" {
		p.ID = uuid.NewString()
	}
	if p.Version == "" {
		p.Version = "1.0.0"
	}
	if p.SwapMiB == 0 {
		p.SwapMiB = 2 * p.MemoryMiB
	}
	if p.LWPs == 0 {
		p.LWPs = 4000
	}
	rows, _ := s.pool.Query(ctx, sqlCreatePackage, p.ID, p.Name, p.Version, p.MemoryMiB, p.DiskMiB, p.SwapMiB,
		p.LWPs, p.VCPUs, p.Group, p.Description, p.Brand, p.FlexibleDisk, p.Default, p.Active)
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Package])
	if err != nil {
		switch pgCode(err) {
		case sqlUniqueViolation:
			return Package{}, errdefs.Conflictf("package %s version %s already exists", p.Name, p.Version)
		case sqlCheckViolation:
			return Package{}, errdefs.InvalidArgument("package %s: memory and disk must be positive and vcpus not negative", p.Name)
		}
		return Package{}, translate(err)
	}
	return out, nil
}

const sqlListPackages = `SELECT ` + packageColumns + ` FROM packages WHERE active ORDER BY group_name, memory_mib, name`

// ListPackages returns the active packages.
func (s *Store) ListPackages(ctx context.Context) ([]Package, error) {
	rows, _ := s.pool.Query(ctx, sqlListPackages)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Package])
	return out, translate(err)
}

const sqlGetPackage = `SELECT ` + packageColumns + ` FROM packages
WHERE (id::text = $1 OR name = $1) ORDER BY (id::text = $1) DESC, active DESC,
	string_to_array(regexp_replace(version, '[^0-9.]', '', 'g'), '.')::int[] DESC NULLS LAST LIMIT 1`

// GetPackage finds a package by uuid or name (the highest version of that name).
func (s *Store) GetPackage(ctx context.Context, idOrName string) (Package, error) {
	rows, _ := s.pool.Query(ctx, sqlGetPackage, idOrName)
	p, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Package])
	if err != nil {
		return Package{}, notFound(err, "package "+idOrName+" not found")
	}
	return p, nil
}

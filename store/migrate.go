package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5/stdlib"

	"flotilla/migrations"
)

// Migrator applies the embedded schema migrations. golang-migrate's advisory
// lock makes concurrent replicas safe.
type Migrator struct{ m *migrate.Migrate }

// NewMigrator opens a migrator on the database at url.
func NewMigrator(url string) (*Migrator, error) {
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return nil, err
	}
	cfg, err := pgxConfig(url)
	if err != nil {
		return nil, err
	}
	db := stdlib.OpenDB(*cfg)
	drv, err := pgx.WithInstance(db, &pgx.Config{})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("opening the database for migrations: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	if err != nil {
		return nil, err
	}
	return &Migrator{m: m}, nil
}

// Up applies every pending migration.
func (g *Migrator) Up() error { return ignoreNoChange(g.m.Up()) }

// Down reverts n migrations (all when n <= 0).
func (g *Migrator) Down(n int) error {
	if n <= 0 {
		return ignoreNoChange(g.m.Down())
	}
	return ignoreNoChange(g.m.Steps(-n))
}

// Status returns the current version and whether it is dirty.
func (g *Migrator) Status() (version uint, dirty bool, err error) {
	v, d, err := g.m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return 0, false, nil
	}
	return v, d, err
}

// Close releases the migrator's connection.
func (g *Migrator) Close() error {
	serr, derr := g.m.Close()
	return errors.Join(serr, derr)
}

// Migrate applies every pending migration to the database at url.
func Migrate(ctx context.Context, url string) error {
	g, err := NewMigrator(url)
	if err != nil {
		return err
	}
	defer g.Close()
	if err := g.Up(); err != nil {
		return fmt.Errorf("applying migrations: %w", err)
	}
	return nil
}

func ignoreNoChange(err error) error {
	if errors.Is(err, migrate.ErrNoChange) {
		return nil
	}
	return err
}

// Package storetest gives tests a real PostgreSQL: one private server per test
// binary (started by Main), and a fresh database per test cloned from a
// migrated template, so tests never share rows.
//
// Imports: store, store/pglocal, pgx.
package storetest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/store"
	"flotilla/store/pglocal"
)

var (
	mu       sync.Mutex
	server   *pglocal.Server
	startErr error
	tmpDir   string
	started  bool
	counter  atomic.Int64
)

const template = "flotilla_template"

// Main runs the package's tests with a private PostgreSQL and stops it
// afterwards. Call it from TestMain: os.Exit(storetest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	if server != nil {
		server.Stop()
	}
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
	}
	return code
}

// Server returns the shared server, starting it (and the migrated template
// database) on first use. When PostgreSQL cannot start the test fails under
// CI and is skipped, with the reason, elsewhere.
func Server(t testing.TB) *pglocal.Server {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if !started {
		started = true
		startErr = start()
	}
	if startErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("PostgreSQL is required: %v", startErr)
		}
		t.Skipf("PostgreSQL unavailable on this machine (%v); run `make setup` to install it", startErr)
	}
	return server
}

func start() error {
	var err error
	tmpDir, err = os.MkdirTemp("", "flotilla-pg-")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	server, err = pglocal.Start(ctx, pglocal.Options{Dir: tmpDir})
	if err != nil {
		return err
	}
	if err := exec(ctx, server.URL("postgres"), "CREATE DATABASE "+template); err != nil {
		return err
	}
	if err := store.Migrate(ctx, server.URL(template)); err != nil {
		return err
	}
	return nil
}

func exec(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// NewDatabase creates a fresh, migrated database and returns its URL. It is
// dropped when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	srv := Server(t)
	name := fmt.Sprintf("t_%d_%d", os.Getpid(), counter.Add(1))
	ctx := context.Background()
	if err := exec(ctx, srv.URL("postgres"), fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, template)); err != nil {
		t.Fatalf("creating test database: %v", err)
	}
	t.Cleanup(func() {
		exec(context.Background(), srv.URL("postgres"), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return srv.URL(name)
}

// New returns a Store on a fresh database, closed when the test ends.
func New(t testing.TB) *store.Store {
	t.Helper()
	url := NewDatabase(t)
	st, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(st.Close)
	return st
}

// EmptyDatabase creates an unmigrated database (for migration tests).
func EmptyDatabase(t testing.TB) string {
	t.Helper()
	srv := Server(t)
	name := fmt.Sprintf("e_%d_%d", os.Getpid(), counter.Add(1))
	if err := exec(context.Background(), srv.URL("postgres"), "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating database: %v", err)
	}
	t.Cleanup(func() {
		exec(context.Background(), srv.URL("postgres"), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return srv.URL(name)
}

// Sanitize makes a string safe as part of a database name.
func Sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, strings.ToLower(s))
}

package store_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"flotilla/store"
	"flotilla/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func tableCount(t *testing.T, url string) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(context.Background(),
		`SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> 'schema_migrations'`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMigrateUpDownUp(t *testing.T) {
	url := storetest.EmptyDatabase(t)
	g, err := store.NewMigrator(url)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.Up(); err != nil {
		t.Fatalf("up: %v", err)
	}
	up := tableCount(t, url)
	if up < 10 {
		t.Fatalf("after up: %d tables, want the whole schema", up)
	}
	v, dirty, err := g.Status()
	if err != nil || dirty || v == 0 {
		t.Fatalf("status after up: v=%d dirty=%v err=%v", v, dirty, err)
	}
	if err := g.Down(0); err != nil {
		t.Fatalf("down: %v", err)
	}
	if n := tableCount(t, url); n != 0 {
		t.Fatalf("after down to zero: %d tables left", n)
	}
	if err := g.Up(); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if n := tableCount(t, url); n != up {
		t.Fatalf("after up again: %d tables, want %d", n, up)
	}
}

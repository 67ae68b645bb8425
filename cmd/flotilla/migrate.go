package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"flotilla/store"
)

func runMigrate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	db := dbFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *db == "" {
		return usagef("--db (or $FLOTILLA_DB) is required")
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usagef("say what to do: up, down N or status")
	}
	g, err := store.NewMigrator(*db)
	if err != nil {
		return err
	}
	defer g.Close()
	switch rest[0] {
	case "up":
		if err := g.Up(); err != nil {
			return err
		}
	case "down":
		if len(rest) != 2 {
			return usagef("down needs the number of migrations to revert (0 for all)")
		}
		n, err := strconv.Atoi(rest[1])
		if err != nil || n < 0 {
			return usagef("down needs a non-negative number, not %q", rest[1])
		}
		if err := g.Down(n); err != nil {
			return err
		}
	case "status":
	default:
		return usagef("unknown migrate action %q: use up, down N or status", rest[0])
	}
	v, dirty, err := g.Status()
	if err != nil {
		return err
	}
	state := "clean"
	if dirty {
		state = "dirty (a migration failed half-way; fix it and force the version)"
	}
	fmt.Printf("schema version %d, %s\n", v, state)
	return nil
}

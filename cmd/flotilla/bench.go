package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"flotilla/store/pglocal"
)

const benchUsage = `Usage: flotilla bench e2e|place [flags] --json
  e2e    create instances through CloudAPI on in-process nodes; report creates/s, latency and time to running
  place  place instances through the scheduler and the database commit path; report decisions/s, commits/s
`

func runBench(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("say which benchmark\n%s", benchUsage)
	}
	switch args[0] {
	case "e2e":
		return benchE2E(ctx, args[1:])
	case "place":
		return benchPlace(ctx, args[1:])
	}
	return usagef("unknown benchmark %q\n%s", args[0], benchUsage)
}

// benchPlace is filled in by bench_place.go.
var benchPlace = func(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench place", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	return fmt.Errorf("bench place is not available in this build")
}

// benchDatabase starts a private PostgreSQL in a new temporary directory
// (named after prefix) with an empty "flotilla" database. It returns the
// directory, the database URL, and a stop func that stops the server and
// removes the directory.
func benchDatabase(ctx context.Context, prefix string, settings map[string]string) (dir, url string, stop func(), err error) {
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", "", nil, err
	}
	pg, err := pglocal.Start(ctx, pglocal.Options{Dir: filepath.Join(dir, "pg"), Settings: settings})
	if err != nil {
		os.RemoveAll(dir)
		return "", "", nil, err
	}
	stop = func() {
		pg.Stop()
		os.RemoveAll(dir)
	}
	if err := ensureDatabase(ctx, pg.URL("postgres"), "flotilla"); err != nil {
		stop()
		return "", "", nil, err
	}
	return dir, pg.URL("flotilla"), stop, nil
}

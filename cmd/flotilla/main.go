// Command flotilla is Flotilla's one binary: the control plane (serve), the
// node agent (agent), a whole cloud on one machine (dev), schema migrations,
// operator tasks (admin) and benchmarks (bench). It parses flags into configs
// and wires components; the rules live in the packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"flotilla/agent"
)

const usage = `flotilla: a cloud control plane for VMs and containers.

Usage:
  flotilla dev      [--data DIR] [--nodes N] [--driver auto|sim|runc|qemu] ...      a whole cloud on this machine
  flotilla serve    --db URL [--cloudapi-addr HOST:PORT] ...                       the control plane
  flotilla agent    --name NAME --driver sim|runc|qemu --data DIR ...               a compute-node agent
  flotilla migrate  up|down N|status --db URL                                       schema migrations
  flotilla admin    account|key|package|network|image|node|placement ...            operator tasks
  flotilla bench    e2e|place ...                                                   benchmarks (JSON)
  flotilla docker-cert --login LOGIN --key KEYFILE --out DIR                        Docker client certificate

Run 'flotilla COMMAND -h' for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "dev":
		err = runDev(ctx, args)
	case "serve":
		err = runServe(ctx, args)
	case "agent":
		err = runAgent(ctx, args)
	case "migrate":
		err = runMigrate(ctx, args)
	case "admin":
		err = runAdmin(ctx, args)
	case "bench":
		err = runBench(ctx, args)
	case "docker-cert":
		err = runDockerCert(ctx, args)
	case "runc-shim":
		os.Exit(runcShim(args))
	case "volume-pipe":
		// sshfs's transport to another node's volume; its arguments are
		// ssh's, and are ignored (see agent/volumes_share.go).
		err = agent.PipeVolumeShare(ctx, os.Getenv, os.Stdin, os.Stdout)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "flotilla: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(os.Stderr, "flotilla %s: %v\n", cmd, err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "flotilla %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// newLogger returns the process logger: text for people, JSON with --log-json.
func newLogger(json bool, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if json {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// dbFlag is the --db flag defaulting to $FLOTILLA_DB.
func dbFlag(fs *flag.FlagSet) *string {
	return fs.String("db", os.Getenv("FLOTILLA_DB"), "PostgreSQL URL (default $FLOTILLA_DB)")
}

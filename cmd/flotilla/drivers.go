package main

import (
	"log/slog"

	"flotilla/agent/driver"
)

// newRealDriver builds the runc and qemu drivers.
func newRealDriver(name, dataDir string, log *slog.Logger) (driver.Driver, error) {
	return nil, usagef("driver %q is not available in this build: use sim", name)
}

// runcShim is the per-container shim entry point (`flotilla runc-shim`).
func runcShim(args []string) int { return 2 }

package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"flotilla/agent"
	"flotilla/agent/driver"
	"flotilla/agent/driver/multi"
	"flotilla/agent/driver/qemu"
	"flotilla/agent/driver/runc"
)

// newRealDriver builds the runc and qemu drivers ("runc", "qemu" or
// "runc,qemu") with their state under dataDir.
func newRealDriver(name, dataDir string, log *slog.Logger) (driver.Driver, error) {
	if os.Geteuid() != 0 {
		return nil, usagef("the %s driver needs root (containers and VMs need namespaces, cgroups and taps); run as root or use --driver sim", name)
	}
	images, err := newImageSource(dataDir)
	if err != nil {
		return nil, err
	}
	var parts []driver.Driver
	for _, n := range strings.Split(name, ",") {
		switch strings.TrimSpace(n) {
		case "runc":
			d, err := runc.New(runc.Config{Root: filepath.Join(dataDir, "runc"), Images: images, Logger: log,
				ShareCA: filepath.Join(dataDir, agent.StreamCAFile)})
			if err != nil {
				return nil, err
			}
			parts = append(parts, d)
		case "qemu":
			d, err := qemu.New(qemu.Config{Root: filepath.Join(dataDir, "qemu"), Images: images, Logger: log})
			if err != nil {
				return nil, err
			}
			parts = append(parts, d)
		default:
			return nil, usagef("unknown driver %q: use sim, runc, qemu or runc,qemu", n)
		}
	}
	if len(parts) == 1 {
		return parts[0], nil
	}
	return multi.New(parts...), nil
}

// runcShim is the per-container shim entry point (`flotilla runc-shim`).
func runcShim(args []string) int { return runc.ShimMain(args) }

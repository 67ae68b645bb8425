// Package testenv lets tests ask for what the machine must provide. A tool
// that `make setup` installs (runc, busybox, QEMU, the docker and triton
// CLIs, iptables) is required under CI: its absence is a setup failure, not a
// reason to skip. Elsewhere the test skips and says what to install.
//
// Imports: standard library only.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Need skips (or, under CI, fails) the test when ok is false; what names the
// missing piece and how to get it.
func Need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is missing; `make setup` installs it", what)
		return
	}
	t.Skipf("skipping: %s is missing (run `make setup`)", what)
}

// NeedCommand requires an executable on PATH.
func NeedCommand(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Need(t, err == nil, name+" (package "+pkg+")")
	return p
}

// NeedFile requires a file.
func NeedFile(t testing.TB, path, pkg string) {
	t.Helper()
	_, err := os.Stat(path)
	Need(t, err == nil, path+" (package "+pkg+")")
}

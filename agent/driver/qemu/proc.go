package qemu

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"

	"flotilla/api/errdefs"
)

// readPidfile reads a pid written by QEMU's -pidfile. A missing file is
// NotFound; anything but one positive decimal number is Invalid.
func readPidfile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, errdefs.Wrap(errdefs.NotFound, err, "no pidfile %s", path)
	}
	if err != nil {
		return 0, errdefs.Wrap(errdefs.Internal, err, "reading pidfile %s", path)
	}
	return parsePid(b)
}

// parsePid parses the content of a pidfile.
func parsePid(b []byte) (int, error) {
	s := strings.TrimSpace(string(b))
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 || len(s) > 10 || s[0] == '+' {
		return 0, errdefs.New(errdefs.Invalid, "pidfile holds %.20q, not a process id", s)
	}
	return pid, nil
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself
	// contain parentheses: look after the last one.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	return stat[i+2] != 'Z' && stat[i+2] != 'X'
}

// processHasArg reports whether pid is alive and one of its command-line
// arguments contains s: it tells our QEMU from an unrelated process that
// reused a stale pid.
func processHasArg(pid int, s string) bool {
	if !processAlive(pid) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	for _, arg := range bytes.Split(b, []byte{0}) {
		if bytes.Contains(arg, []byte(s)) {
			return true
		}
	}
	return false
}

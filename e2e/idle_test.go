package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cpuTicks is a process's user+system CPU time in clock ticks (1/100 s on
// Linux), from /proc/PID/stat.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; the fields after ")" are fixed.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat: %q", pid, s)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return utime + stime, nil
}

// TestIdleCloudIsQuiet: a dev cloud with two nodes and nothing to do must
// not burn CPU (agents long-poll; they must not spin).
func TestIdleCloudIsQuiet(t *testing.T) {
	requireCloud(t)
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc on this machine: cannot measure CPU time")
	}
	const window = 3 * time.Second
	before, err := cpuTicks(dev.Pid())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(window)
	after, err := cpuTicks(dev.Pid())
	if err != nil {
		t.Fatal(err)
	}
	share := float64(after-before) / 100 / window.Seconds()
	figure("idle dev cloud (2 nodes) CPU", "%.1f%% of a core", 100*share)
	if share > 0.2 {
		t.Errorf("the idle dev cloud used %.0f%% of a core over %s; want under 20%%", 100*share, window)
	}
}

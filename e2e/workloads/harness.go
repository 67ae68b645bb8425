// Package workloads holds the end-to-end tests of real workloads through
// CloudAPI: busybox containers under runc and tiny VMs under QEMU, created
// with the real `triton` CLI against the real `flotilla` binary (dev, or
// serve with separate agents), and checked on the host itself: processes,
// cgroups, network namespaces, veths, taps, pings and serial consoles.
//
// This file is the small part that is not a test: host probes (free
// subnets, links, mounts, processes) the tests share. Child processes are
// run with e2e.Proc.
//
// Imports: standard library only (the tests also use flotilla/e2e for child
// processes, agent/network for link names, api/auth and store/pglocal).
package workloads

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FreeSubnet returns a /24 in 10.0.0.0/8 that overlaps no route of the
// host, so that a test's network never shares a subnet with another cloud
// running on the same machine (its bridge would win the host's route and
// the host could not reach the test's instances).
func FreeSubnet() (string, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return "", fmt.Errorf("ip route: %w", err)
	}
	var used []*net.IPNet
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "default" || dst == "broadcast" || dst == "local" || dst == "unreachable" {
			if len(f) < 2 || dst == "default" {
				continue
			}
			dst = f[1]
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if _, n, err := net.ParseCIDR(dst); err == nil {
			used = append(used, n)
		}
	}
	for range 1000 {
		a, b := 100+rand.IntN(150), rand.IntN(256)
		cand := &net.IPNet{IP: net.IPv4(10, byte(a), byte(b), 0).To4(), Mask: net.CIDRMask(24, 32)}
		clash := false
		for _, n := range used {
			if n.Contains(cand.IP) || cand.Contains(n.IP) {
				clash = true
				break
			}
		}
		if !clash {
			return cand.String(), nil
		}
	}
	return "", fmt.Errorf("no free /24 in 10.100.0.0-10.249.255.0")
}

// Ping sends one ICMP echo to ip with busybox, from the host or, when
// netns is not empty, from inside the named network namespace. It retries
// until the deadline (the first packets may go to ARP), and returns the
// last output on failure.
func Ping(netns, ip string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		args := []string{"busybox", "ping", "-c1", "-W2", ip}
		if netns != "" {
			args = append([]string{"ip", "netns", "exec", netns}, args...)
		}
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// PingFails reports whether count pings from netns to ip all go
// unanswered; it returns an error describing the reply otherwise.
func PingFails(netns, ip string, count int) error {
	for range count {
		out, err := exec.Command("ip", "netns", "exec", netns, "busybox", "ping", "-c1", "-W1", ip).CombinedOutput()
		if err == nil {
			return fmt.Errorf("ping from %s to %s was answered:\n%s", netns, ip, out)
		}
	}
	return nil
}

// LinkExists reports whether the host has a network interface name.
func LinkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

// MountsContaining lists the host's mount points whose path contains s.
func MountsContaining(s string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.Contains(fields[4], s) {
			out = append(out, fields[4])
		}
	}
	return out
}

// ProcessAlive reports whether pid exists and is not a zombie.
func ProcessAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// WaitFor polls cond every 100 ms until it returns true or within passes.
func WaitFor(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

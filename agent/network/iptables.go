package network

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"

	"flotilla/api/errdefs"
)

// Chains this package owns. Docker's two-stage isolation: stage 1 sends
// traffic that enters from a Flotilla bridge and leaves by another interface
// to stage 2, which drops it if that other interface is a Flotilla bridge.
// Traffic to the outside world passes both stages untouched.
const (
	chainIsolation1 = "FLT-ISOLATION-1"
	chainIsolation2 = "FLT-ISOLATION-2"
	chainForward    = "FLT-FORWARD"
	chainNAT        = "FLT-POSTROUTING"
)

// iptablesMu serialises this process's rule edits; `-w` covers other
// processes holding the xtables lock.
var iptablesMu sync.Mutex

func iptables(args ...string) (string, error) {
	cmd := exec.Command("iptables", append([]string{"-w", "5"}, args...)...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

// ensureChain creates chain in table (if missing) and makes parent jump to it
// first (pos 1) or last.
func ensureChain(table, chain, parent string, first bool) error {
	if _, err := iptables("-t", table, "-n", "-L", chain); err != nil {
		if _, err := iptables("-t", table, "-N", chain); err != nil {
			return err
		}
	}
	if _, err := iptables("-t", table, "-C", parent, "-j", chain); err == nil {
		return nil
	}
	if first {
		_, err := iptables("-t", table, "-I", parent, "1", "-j", chain)
		return err
	}
	_, err := iptables("-t", table, "-A", parent, "-j", chain)
	return err
}

func ensureRule(table, chain string, rule ...string) error {
	if _, err := iptables(append([]string{"-t", table, "-C", chain}, rule...)...); err == nil {
		return nil
	}
	_, err := iptables(append([]string{"-t", table, "-A", chain}, rule...)...)
	return err
}

// deleteRulesNaming deletes every rule of chain that names iface as a whole
// word (in -i/-o or a comment). A missing chain has no rules.
func deleteRulesNaming(table, chain, iface string) error {
	out, err := iptables("-t", table, "-S", chain)
	if err != nil {
		return nil
	}
	var errs []error
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "-A" {
			continue
		}
		hit := false
		for _, w := range f[2:] {
			if w == iface || w == "flt:"+iface || w == `"flt:`+iface+`"` {
				hit = true
			}
		}
		if !hit {
			continue
		}
		for i, w := range f {
			f[i] = strings.Trim(w, `"`)
		}
		f[0] = "-D"
		if _, err := iptables(append([]string{"-t", table}, f...)...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func ensureIsolation(bridge string) error {
	if _, ok := installed.Load("iso|" + bridge); ok {
		return nil
	}
	iptablesMu.Lock()
	defer iptablesMu.Unlock()
	err := errors.Join(
		ensureChain("filter", chainIsolation2, "FORWARD", false),
		ensureChain("filter", chainIsolation1, "FORWARD", true),
		ensureRule("filter", chainIsolation1, "-i", bridge, "!", "-o", bridge, "-j", chainIsolation2),
		ensureRule("filter", chainIsolation2, "-o", bridge, "-j", "DROP"),
	)
	// The stage-2 chain must not be jumped to from FORWARD itself.
	iptables("-t", "filter", "-D", "FORWARD", "-j", chainIsolation2)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "install isolation rules for bridge %s", bridge)
	}
	installed.Store("iso|"+bridge, true)
	return nil
}

func removeIsolation(bridge string) error {
	installed.Delete("iso|" + bridge)
	iptablesMu.Lock()
	defer iptablesMu.Unlock()
	return errors.Join(
		deleteRulesNaming("filter", chainIsolation1, bridge),
		deleteRulesNaming("filter", chainIsolation2, bridge),
	)
}

// EnableNAT lets instances on bridge reach the outside world: their traffic
// leaving by any other interface is masqueraded to the node's address, and
// it is accepted in FORWARD (with the replies) even where the default policy
// is DROP. Isolation from other Flotilla bridges still applies, because the
// isolation chain comes first. It turns on IPv4 forwarding. Idempotent.
func EnableNAT(bridge, subnet string) error {
	if !validIfName(bridge) {
		return errdefs.InvalidArgument("bridge name %q is not a valid interface name", bridge)
	}
	_, ipnet, err := net.ParseCIDR(subnet)
	if err != nil || ipnet.IP.To4() == nil {
		return errdefs.InvalidArgument("subnet %q is not an IPv4 CIDR (like 10.213.1.0/24)", subnet)
	}
	cidr := ipnet.String()
	if _, ok := installed.Load(natKey(bridge, cidr)); ok {
		return nil
	}
	if err := ensureIsolation(bridge); err != nil {
		return err
	}
	iptablesMu.Lock()
	defer iptablesMu.Unlock()
	err = errors.Join(
		ensureChain("filter", chainForward, "FORWARD", false),
		ensureRule("filter", chainForward, "-i", bridge, "-j", "ACCEPT"),
		ensureRule("filter", chainForward, "-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
		ensureChain("nat", chainNAT, "POSTROUTING", false),
		ensureRule("nat", chainNAT, "-s", cidr, "!", "-o", bridge, "-m", "comment", "--comment", "flt:"+bridge, "-j", "MASQUERADE"),
	)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "install NAT rules for bridge %s", bridge)
	}
	if err := ipForward(); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "enable NAT for bridge %s", bridge)
	}
	installed.Store(natKey(bridge, cidr), true)
	return nil
}

// installed remembers the rules this process has installed ("iso|bridge",
// "nat|bridge|cidr"), so that creating an instance on a bridge that is
// already set up runs no iptables command (each costs milliseconds).
// Rules flushed behind the agent's back come back when it restarts.
var installed sync.Map

func natKey(bridge, cidr string) string { return "nat|" + bridge + "|" + cidr }

// forgetInstalled drops what is remembered for bridge.
func forgetInstalled(bridge string, nat bool) {
	installed.Range(func(k, _ any) bool {
		key := k.(string)
		if strings.HasPrefix(key, "nat|"+bridge+"|") || !nat && key == "iso|"+bridge {
			installed.Delete(k)
		}
		return true
	})
}

// DisableNAT removes what EnableNAT installed for bridge (the subnet is
// accepted for symmetry; rules are found by bridge). Isolation stays.
func DisableNAT(bridge, subnet string) error {
	if !validIfName(bridge) {
		return errdefs.InvalidArgument("bridge name %q is not a valid interface name", bridge)
	}
	forgetInstalled(bridge, true)
	if err := removeNATRules(bridge); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "remove NAT rules for bridge %s (%s)", bridge, subnet)
	}
	return nil
}

func removeNATRules(bridge string) error {
	iptablesMu.Lock()
	defer iptablesMu.Unlock()
	return errors.Join(
		deleteRulesNaming("filter", chainForward, bridge),
		deleteRulesNaming("nat", chainNAT, bridge),
	)
}

package dockerapi

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// onNodeBridge reports whether the node routes ip to one of Flotilla's
// bridges. Only such addresses can be probed from the node: tenant fabric
// networks are not routed from it, and some hosts answer connections to
// any address they do not route locally.
func onNodeBridge(ip string) bool {
	out, err := exec.Command("ip", "-o", "route", "get", ip).Output()
	return err == nil && strings.Contains(string(out), " dev flt")
}

// reachable reports whether a TCP connection from the node to addr opens.
func reachable(addr string) bool {
	c, err := net.DialTimeout("tcp4", addr, 500*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// eventually waits up to 10 s for cond.
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return false
}

// TestRuncFirewallPublish runs real containers: one that publishes port 80
// (-p 80) answers on 80 from outside its account (here, the node) but not
// on 81, which its own account's containers still reach; one that
// publishes nothing is reached on any port by its account's containers.
func TestRuncFirewallPublish(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	subnet, _ := randomSubnet()
	e.ok("alice", "network", "create", "--subnet", subnet, "fwnet")
	serve := []string{"busybox", "sh", "-c", "httpd -p 80 -h /tmp; exec httpd -f -p 81 -h /tmp"}
	e.ok("alice", append([]string{"run", "-d", "--name", "pub", "--network", "fwnet", "-p", "80"}, serve...)...)
	e.ok("alice", append([]string{"run", "-d", "--name", "open", "--network", "fwnet"}, serve...)...)
	// name -> network -> address
	ipsOf := func(name string) map[string]string {
		out := map[string]string{}
		text := e.ok("alice", "inspect", "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}", name)
		for _, f := range strings.Fields(text) {
			if k, v, ok := strings.Cut(f, "="); ok && v != "" {
				out[k] = v
			}
		}
		if len(out) == 0 {
			t.Fatalf("%s has no IP address", name)
		}
		return out
	}
	// -p gives the container a public NIC besides fwnet, the one the node
	// routes to.
	var pub string
	for _, ip := range ipsOf("pub") {
		if onNodeBridge(ip) {
			pub = ip
		}
	}
	if pub == "" {
		t.Fatalf("none of pub's addresses %v is on a bridge of the node", ipsOf("pub"))
	}
	if !eventually(func() bool { return reachable(pub + ":80") }) {
		t.Fatalf("pub's published port 80 is not reachable from the node at %s", pub)
	}
	pubFab := ipsOf("pub")["fwnet"]
	open := ipsOf("open")["fwnet"]
	if !eventually(func() bool { return !reachable(pub + ":81") }) {
		dbg, _ := exec.Command("nft", "list", "ruleset", "bridge").CombinedOutput()
		t.Fatalf("pub:81 stays reachable from the node; only the published port should be\n%s", dbg)
	}
	if !reachable(pub + ":80") {
		t.Error("pub:80 became unreachable")
	}
	// The account's own containers reach every port, of pub on its
	// firewalled fabric NIC too.
	for _, addr := range []string{pubFab + ":81", open + ":81", open + ":80"} {
		host, port, _ := strings.Cut(addr, ":")
		out, _, code := e.run("alice", "run", "--rm", "--network", "fwnet", "busybox", "sh", "-c", "echo | nc -w 2 "+host+" "+port+" && echo connected")
		if code != 0 || !strings.Contains(out, "connected") {
			t.Errorf("alice's container on fwnet cannot reach %s: exit %d %q", addr, code, out)
		}
	}
}

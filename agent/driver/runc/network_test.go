package runc

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"

	"flotilla/agent/driver"
	"flotilla/agent/network"
)

func testBridge(t *testing.T, third int) driver.NIC {
	t.Helper()
	br := network.BridgeName(fmt.Sprintf("runc-test-%d-%d", os.Getpid(), third))
	t.Cleanup(func() {
		if err := network.DeleteBridge(br); err != nil {
			t.Errorf("DeleteBridge: %v", err)
		}
	})
	return driver.NIC{PrefixLen: 24, Gateway: fmt.Sprintf("10.213.%d.1", third), Bridge: br,
		Subnet: fmt.Sprintf("10.213.%d.0/24", third), Primary: true, NAT: true}
}

func withIP(n driver.NIC, host int) driver.NIC {
	var third int
	fmt.Sscanf(n.Gateway, "10.213.%d.1", &third)
	n.IP = fmt.Sprintf("10.213.%d.%d", third, host)
	n.MAC = fmt.Sprintf("90:b8:d0:01:%02x:%02x", third, host)
	return n
}

func TestNetworking(t *testing.T) {
	needRuntime(t)
	d := newDriver(t, "")
	third := 10 + rand.IntN(80)
	netA, netB := testBridge(t, third), testBridge(t, third+1)
	specs := map[string]driver.NIC{"a1": withIP(netA, 11), "a2": withIP(netA, 12), "b1": withIP(netB, 11)}
	ids := map[string]string{}
	for name, nic := range specs {
		id := testID("net" + name)
		ids[name] = id
		s := baseSpec(id)
		s.NICs = []driver.NIC{nic}
		create(t, d, s)
	}
	if out, err := exec.Command("busybox", "ping", "-c", "1", "-W", "2", specs["a1"].IP).CombinedOutput(); err != nil {
		t.Errorf("host -> container: %v %s", err, out)
	}
	if out, err := exec.Command("busybox", "ping", "-c", "1", "-W", "2", specs["b1"].IP).CombinedOutput(); err != nil {
		t.Errorf("host -> container on the second bridge: %v %s", err, out)
	}
	if out, code := execOut(t, d, ids["a1"], "ping", "-c", "1", "-W", "2", specs["a2"].IP); code != 0 {
		t.Errorf("container -> container on one bridge: exit %d %s", code, out)
	}
	if out, code := execOut(t, d, ids["a1"], "ip", "-o", "addr", "show", "eth0"); code != 0 || !contains(out, specs["a1"].IP+"/24") {
		t.Errorf("eth0 inside: %q", out)
	}
	if out, code := execOut(t, d, ids["a1"], "ping", "-c", "1", "-W", "1", specs["b1"].IP); code == 0 {
		t.Errorf("container on %s reached %s on another bridge: %s", netA.Bridge, specs["b1"].IP, out)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

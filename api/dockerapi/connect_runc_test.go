package dockerapi

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	agentnet "flotilla/agent/network"
)

// instanceUUID is the instance id a 64-hex container id starts with.
func instanceUUID(cid string) string {
	h := cid[:32]
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// httpGet is a shell command fetching / from host's port 80 with nc (the
// static busybox's wget crashes resolving names).
func httpGet(host string) string {
	return `printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 ` + host + ` 80`
}

// TestRuncNetworkConnect connects a running container to a second user
// network and disconnects it again, and checks from other containers (never
// from the node) that it is reachable on that network by address, by name
// and by alias only while connected, that it stays on its first network,
// and that its process is never restarted.
func TestRuncNetworkConnect(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	sub1, _ := randomSubnet()
	sub2, _ := randomSubnet()
	for sub2 == sub1 {
		sub2, _ = randomSubnet()
	}
	e.ok("alice", "network", "create", "--subnet", sub1, "front")
	e.ok("alice", "network", "create", "--subnet", sub2, "back")
	e.ok("alice", "run", "-d", "--name", "web", "--network", "front", "busybox", "sh", "-c",
		"echo hello-from-web > /tmp/index.html; exec httpd -f -p 80 -h /tmp")
	cid := strings.TrimSpace(e.ok("alice", "inspect", "--format", "{{.Id}}", "web"))
	started := e.ok("alice", "inspect", "--format", "{{.State.StartedAt}} {{.State.Pid}}", "web")
	frontIP := strings.TrimSpace(e.ok("alice", "inspect", "--format", `{{(index .NetworkSettings.Networks "front").IPAddress}}`, "web"))

	// onBack runs a shell command in a new container on back.
	onBack := func(t *testing.T, script string) (string, int) {
		t.Helper()
		out, errOut, code := e.with(t).run("alice", "run", "--rm", "--network", "back", "busybox", "sh", "-c", script)
		return out + errOut, code
	}

	t.Run("ErrNotOnBackYet", func(t *testing.T) {
		if out, code := onBack(t, "nslookup web"); code == 0 {
			t.Fatalf("web resolves on back before it is connected: %q", out)
		}
	})

	var backIP string
	t.Run("Connect", func(t *testing.T) {
		e := e.with(t)
		t0 := time.Now()
		e.ok("alice", "network", "connect", "--alias", "www", "back", "web")
		t.Logf("docker network connect took %v", time.Since(t0).Round(time.Millisecond))
		backIP = strings.TrimSpace(e.ok("alice", "inspect", "--format", `{{(index .NetworkSettings.Networks "back").IPAddress}}`, "web"))
		if backIP == "" || backIP == frontIP {
			t.Fatalf("web's address on back: %q (front %s)", backIP, frontIP)
		}
		// The running container has the interface at once, not at its next start.
		if out := e.ok("alice", "exec", "web", "ip", "-o", "-4", "addr"); !strings.Contains(out, " "+backIP+"/24 ") || !strings.Contains(out, " "+frontIP+"/24 ") {
			t.Fatalf("web's interfaces after connect:\n%s", out)
		}
		if out := e.ok("alice", "network", "inspect", "--format", "{{range .Containers}}{{.Name}} {{.IPv4Address}}{{end}}", "back"); strings.TrimSpace(out) != "web "+backIP+"/24" {
			t.Fatalf("network inspect back: %q", out)
		}
	})
	if backIP == "" {
		t.FailNow()
	}

	t.Run("ReachableOnBack", func(t *testing.T) {
		if out, code := onBack(t, "ping -c1 -W2 "+backIP); code != 0 || !strings.Contains(out, "1 packets received") {
			t.Fatalf("ping %s from back: exit %d %q", backIP, code, out)
		}
		for _, name := range []string{"web", "www"} {
			out, code := onBack(t, "nslookup "+name)
			if code != 0 || !strings.Contains(out, "Address: "+backIP) || strings.Contains(out, frontIP) {
				t.Fatalf("nslookup %s on back: exit %d %q, want %s only", name, code, out, backIP)
			}
		}
		if out, code := onBack(t, "ping -c1 -W2 web"); code != 0 || !strings.Contains(out, "1 packets received") {
			t.Fatalf("ping web from back: exit %d %q", code, out)
		}
		for _, host := range []string{backIP, "web"} {
			if out, code := onBack(t, httpGet(host)); code != 0 || !strings.Contains(out, "hello-from-web") {
				t.Fatalf("GET http://%s/ from back: exit %d %q", host, code, out)
			}
		}
	})

	t.Run("Disconnect", func(t *testing.T) {
		e := e.with(t)
		t0 := time.Now()
		e.ok("alice", "network", "disconnect", "back", "web")
		t.Logf("docker network disconnect took %v", time.Since(t0).Round(time.Millisecond))
		if out := e.ok("alice", "exec", "web", "ip", "-o", "-4", "addr"); strings.Contains(out, " "+backIP+"/") || !strings.Contains(out, " "+frontIP+"/24 ") {
			t.Fatalf("web's interfaces after disconnect:\n%s", out)
		}
		if err := exec.Command("ip", "link", "show", agentnet.VethName(instanceUUID(cid), 1)).Run(); err == nil {
			t.Errorf("the host end of web's back NIC, %s, is still there", agentnet.VethName(instanceUUID(cid), 1))
		}
		if out := e.ok("alice", "inspect", "--format", "{{len .NetworkSettings.Networks}}", "web"); strings.TrimSpace(out) != "1" {
			t.Fatalf("web's networks after disconnect: %s", out)
		}
	})

	t.Run("ErrUnreachableOnBack", func(t *testing.T) {
		if out, code := onBack(t, "ping -c1 -W2 "+backIP); code == 0 {
			t.Fatalf("ping %s from back still answers after the disconnect: %q", backIP, out)
		}
		if out, _ := onBack(t, httpGet(backIP)); strings.Contains(out, "hello-from-web") {
			t.Fatalf("web's old address on back still serves: %q", out)
		}
		// The node's resolver learns of the change from the control plane
		// within a poll.
		for _, name := range []string{"web", "www"} {
			var out string
			if !eventually(func() bool {
				var code int
				out, code = onBack(t, "nslookup "+name)
				return code != 0
			}) {
				t.Fatalf("%s still resolves on back after the disconnect: %q", name, out)
			}
		}
	})

	t.Run("StoppedHasItAtStart", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "late", "--network", "front", "busybox", "sleep", "600")
		e.ok("alice", "stop", "-t", "0", "late")
		e.ok("alice", "network", "connect", "back", "late")
		e.ok("alice", "start", "late")
		lateIP := strings.TrimSpace(e.ok("alice", "inspect", "--format", `{{(index .NetworkSettings.Networks "back").IPAddress}}`, "late"))
		if out := e.ok("alice", "exec", "late", "ip", "-o", "-4", "addr"); lateIP == "" || !strings.Contains(out, " "+lateIP+"/24 ") {
			t.Fatalf("late's interfaces after connect and start (back %q):\n%s", lateIP, out)
		}
		if out, code := onBack(t, "nslookup late"); code != 0 || !strings.Contains(out, "Address: "+lateIP) {
			t.Fatalf("nslookup late on back: exit %d %q, want %s", code, out, lateIP)
		}
	})

	t.Run("StillOnFront", func(t *testing.T) {
		e := e.with(t)
		out, _, code := e.run("alice", "run", "--rm", "--network", "front", "busybox", "sh", "-c", httpGet("web"))
		if code != 0 || !strings.Contains(out, "hello-from-web") {
			t.Fatalf("GET http://web/ from front: exit %d %q", code, out)
		}
		if now := e.ok("alice", "inspect", "--format", "{{.State.StartedAt}} {{.State.Pid}}", "web"); now != started {
			t.Fatalf("web was restarted: %q, then %q", started, now)
		}
	})
}

package workloads

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla/e2e"
	"flotilla/store/pglocal"
)

// placerRefresh is service.PlacerOptions.Refresh's default.
const placerRefresh = 2 * time.Second

// node is what the tests read of `flotilla admin node list --json`.
type node struct {
	ID       string   `json:"id"`
	Hostname string   `json:"hostname"`
	State    string   `json:"state"`
	Driver   string   `json:"driver"`
	Brands   []string `json:"brands"`
}

func (c *cloud) nodes(t *testing.T) map[string]node {
	t.Helper()
	var list []node
	out := c.admin(t, "node", "list", "--json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("node list --json: %v\n%s", err, out)
	}
	m := map[string]node{}
	for _, n := range list {
		m[n.Hostname] = n
	}
	return m
}

// startAgent starts `flotilla agent` with driver drv as node name and waits
// until its node is running.
func (c *cloud) startAgent(t *testing.T, name, drv, agentAPI, token string) node {
	t.Helper()
	env := append(os.Environ(), "FLOTILLA_AGENT_API="+agentAPI, "FLOTILLA_JOIN_TOKEN="+token)
	p, err := e2e.StartProc("agent "+name, c.Dir, env, filepath.Join(c.Dir, name+".log"), bin, "agent",
		"--name", name, "--driver", drv, "--data", filepath.Join(c.Dir, name), "--stream-address", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A stopped agent leaves its workloads running (a restarted one adopts
	// them), so tests delete their instances in cleanups registered later,
	// which run before this one.
	t.Cleanup(func() {
		if err := p.Stop(15 * time.Second); err != nil {
			t.Logf("stopping agent %s: %v", name, err)
		}
	})
	var n node
	if !WaitFor(60*time.Second, func() bool { n = c.nodes(t)[name]; return n.State == "running" }) || p.Exited() {
		t.Fatalf("node %s is not running after 60 s (%+v); agent output:\n%s", name, n, p.Output())
	}
	// serve's placer learns of nodes by reloading its snapshot every 2 s
	// (service.PlacerOptions.Refresh); until then a create is told that no
	// compute node is available, or is placed without the new node.
	time.Sleep(placerRefresh + time.Second)
	return n
}

// TestMixedPlacement runs `flotilla serve` on its own PostgreSQL with two
// `flotilla agent` processes, one with runc and one with qemu, and checks
// that each instance lands on the node that can run it.
func TestMixedPlacement(t *testing.T) {
	need(t)
	c := &cloud{Dir: filepath.Join(tmp, "m")}
	c.Data = filepath.Join(c.Dir, "d")
	c.Home = filepath.Join(c.Dir, "home")
	c.Owner = c.newAccountKey(t, "wl")

	// `flotilla dev` with no nodes seeds the database and the blob store
	// (account, packages, busybox and tiny-vm with content) and stops.
	seed, err := e2e.StartProc("flotilla dev (seed)", c.Dir, append(os.Environ(), "FLOTILLA_VM_CACHE="+vmCache), filepath.Join(c.Dir, "seed.log"),
		bin, "dev", "--data", c.Data, "--nodes", "0", "--cloudapi-addr", "127.0.0.1:0", "--login", c.Owner.Login, "--key", c.Owner.Pub)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seed.WaitLine("flotilla dev ready", 5*time.Minute); err != nil {
		seed.Kill()
		t.Fatal(err)
	}
	if err := seed.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pglocal.Start(ctx, pglocal.Options{Dir: filepath.Join(c.Data, "pg")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	c.DB = pg.URL("flotilla")

	serve, err := e2e.StartProc("flotilla serve", c.Dir, os.Environ(), filepath.Join(c.Dir, "serve.log"), bin, "serve",
		"--db", c.DB, "--data", c.Data, "--cloudapi-addr", "127.0.0.1:0", "--agentapi-addr", "127.0.0.1:0", "--quiet")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := serve.Stop(15 * time.Second); err != nil {
			t.Errorf("stopping flotilla serve: %v", err)
		}
	})
	line, err := serve.WaitLine("flotilla serve ready", 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// "flotilla serve ready: cloudapi URL, agent api URL"
	_, rest, _ := strings.Cut(line, "cloudapi ")
	cloudURL, agentURL, ok := strings.Cut(rest, ", agent api ")
	if !ok {
		t.Fatalf("cannot read the URLs from %q", line)
	}
	c.URL, agentURL = strings.TrimSpace(cloudURL), strings.TrimSpace(agentURL)
	token := strings.TrimSpace(c.admin(t, "node", "join-token"))
	if token == "" || strings.ContainsAny(token, " \n") {
		t.Fatalf("join-token printed %q, want one token", token)
	}
	nw := c.addNetwork(t, "wl-mix", "")

	runcNode := c.startAgent(t, "mix-runc", "runc", agentURL, token)

	t.Run("ErrVMWithOnlyRuncNodes", func(t *testing.T) {
		out, stderr, err := c.tritonAs(c.Owner, "inst", "create", "-w", "-n", "lonely-vm", "--network", nw.Name, "tiny-vm@1.0", "g1-nano-256M")
		if err == nil {
			c.tritonAs(c.Owner, "inst", "rm", "-f", "-w", "lonely-vm")
			t.Fatalf("a VM was created with only a runc node:\n%s", out)
		}
		if !strings.Contains(stderr, "brand") || !strings.Contains(stderr, "bhyve") {
			t.Errorf("the error does not explain the brand constraint:\n%s", stderr)
		}
		t.Logf("scheduler's explanation: %s", strings.TrimSpace(stderr))
	})

	qemuNode := c.startAgent(t, "mix-qemu", "qemu", agentURL, strings.TrimSpace(c.admin(t, "node", "join-token")))
	if runcNode.ID == qemuNode.ID {
		t.Fatalf("both agents registered as node %s", runcNode.ID)
	}

	t.Run("EachKindOnItsNode", func(t *testing.T) {
		t.Cleanup(func() {
			for _, name := range []string{"mc1", "mc2", "mv1"} {
				c.tritonAs(c.Owner, "inst", "rm", "-f", "-w", name)
			}
		})
		want := map[string]string{"mc1": runcNode.ID, "mv1": qemuNode.ID, "mc2": runcNode.ID}
		images := map[string]string{"mc1": "busybox@1.36", "mv1": "tiny-vm@1.0", "mc2": "busybox@1.36"}
		for _, name := range []string{"mc1", "mv1", "mc2"} {
			in, _ := c.createAs(t, c.Owner, name, images[name], "g1-nano-256M", "--network", nw.Name)
			if in.ComputeNode != want[name] {
				t.Errorf("%s (%s, brand %s) is on node %s, want %s", name, images[name], in.Brand, in.ComputeNode, want[name])
			}
			if err := Ping("", in.PrimaryIP, 20*time.Second); err != nil {
				t.Errorf("the host cannot ping %s: %v", name, err)
			}
		}
		// The runc agent runs the containers, the qemu agent the VM: each
		// driver's state directory holds only its own kind.
		for name, dir := range map[string]string{"mc1": "mix-runc/runc/containers", "mv1": "mix-qemu/qemu/instances"} {
			id := c.getAs(t, c.Owner, name).ID
			if !fileExists(filepath.Join(c.Dir, dir, id)) {
				t.Errorf("%s (%s) has no state under %s", name, id, dir)
			}
		}
	})
}

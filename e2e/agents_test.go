package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// simState reads an agent's sim driver state file: instance id -> starts.
func simStarts(t *testing.T, dir string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "sim-state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sf struct {
		Instances map[string]struct {
			State  string `json:"state"`
			Starts int    `json:"starts"`
		} `json:"instances"`
	}
	if err := json.Unmarshal(b, &sf); err != nil {
		t.Fatalf("sim state file: %v\n%s", err, b)
	}
	out := map[string]int{}
	for id, in := range sf.Instances {
		out[id] = in.Starts
	}
	return out
}

// TestAgentKilledAndRestarted: two agents as separate processes; SIGKILL
// one, its instances go unknown within the offline grace (5 s) + 10 s while
// the other's stay running; restarted, they come back to running without
// being started again.
func TestAgentKilledAndRestarted(t *testing.T) {
	c := newServeCluster(t, "e2e_agents")
	agentArgs := func(name string) *Proc { return c.startAgent(name, 8192, 100000, 8) }
	a1 := agentArgs("a1")
	agentArgs("a2")

	// g1-small-1G takes 25600 MiB of disk: three fit on a node's 100000.
	ctx := ctxTimeout(t, 2*time.Minute)
	var ids []string
	for i := range 6 {
		status, body, err := c.api.do(ctx, "POST", "/machines", map[string]any{"name": fmt.Sprintf("ag-%d", i),
			"image": busyboxID, "package": "g1-small-1G"}, nil)
		if err != nil || status != 201 {
			t.Fatalf("create ag-%d: %d %s %v", i, status, body, err)
		}
		var m machine
		json.Unmarshal(body, &m)
		ids = append(ids, m.ID)
	}
	took := c.api.waitStates(t, ids, "running", 30*time.Second)
	figure("agents: 6 creates to running", "%s", took.Round(time.Millisecond))

	// Which instances each node runs, by the database.
	onNode := map[string][]string{}
	for _, id := range ids {
		var node string
		queryRow(t, c.db, `SELECT n.name FROM instances i JOIN nodes n ON n.id = i.node_id WHERE i.id = $1`, []any{id}, &node)
		onNode[node] = append(onNode[node], id)
	}
	if len(onNode["a1"]) == 0 || len(onNode["a2"]) == 0 {
		t.Fatalf("placement did not use both nodes: %v", onNode)
	}
	before := simStarts(t, c.agentDir("a1"))
	for _, id := range onNode["a1"] {
		if before[id] != 1 {
			t.Fatalf("sim state of a1: %s started %d times, want 1 (state file: %v)", id, before[id], before)
		}
	}

	t.Run("KilledAgentsInstancesGoUnknown", func(t *testing.T) {
		a1.Kill()
		took := c.api.waitStates(t, onNode["a1"], "unknown", 15*time.Second)
		figure("agents: SIGKILL to unknown (grace 5s)", "%s", took.Round(time.Millisecond))
		for _, id := range onNode["a2"] {
			if m, err := c.api.getMachine(ctx, id); err != nil || m.State != "running" {
				t.Errorf("instance %s on the live node a2 is %q (%v), want running", id, m.State, err)
			}
		}
		var state string
		queryRow(t, c.db, `SELECT state FROM nodes WHERE name = 'a1'`, nil, &state)
		if state != "offline" {
			t.Errorf("node a1 is %s, want offline", state)
		}
	})

	t.Run("RestartedAgentAdoptsWithoutRestarting", func(t *testing.T) {
		start := time.Now()
		agentArgs("a1")
		c.api.waitStates(t, onNode["a1"], "running", 20*time.Second)
		figure("agents: restart to running again", "%s", time.Since(start).Round(time.Millisecond))
		after := simStarts(t, c.agentDir("a1"))
		for _, id := range onNode["a1"] {
			if after[id] != before[id] {
				t.Errorf("instance %s was started again by the restarted agent: starts %d -> %d", id, before[id], after[id])
			}
		}
		var state string
		queryRow(t, c.db, `SELECT state FROM nodes WHERE name = 'a1'`, nil, &state)
		if state != "running" {
			t.Errorf("node a1 is %s after the restart, want running", state)
		}
	})
}

package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCapacityUnderContention: 500 concurrent creates of mixed sizes on 20
// sim nodes of 2 GiB each (40 GiB for about 470 GiB asked): the database
// never overbooks a node, its usage columns equal the sum of what it runs,
// and every refused create is a 409 that says why.
func TestCapacityUnderContention(t *testing.T) {
	requireCloud(t)
	const n, nodes = 500, 20
	data := filepath.Join(tmp, "capacity")
	start := time.Now()
	p, err := StartProc("flotilla dev (20 nodes)", tmp, devProcEnv(), filepath.Join(tmp, "capacity-dev.log"), bin, "dev",
		"--data", data, "--driver", "sim", "--key", keyFile, "--login", "e2e", "--nodes", fmt.Sprint(nodes), "--node-memory", "2048",
		"--cloudapi-addr", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(20 * time.Second)
	if _, err := p.WaitLine("flotilla dev ready", 90*time.Second); err != nil {
		p.Kill()
		t.Fatal(err)
	}
	figure("capacity: dev --nodes 20 first start to ready", "%s", time.Since(start).Round(time.Millisecond))
	env, err := ReadEnvFile(filepath.Join(data, "env.sh"))
	if err != nil {
		t.Fatal(err)
	}
	db := env["FLOTILLA_DB"]
	api := newAPIClient(t, env["TRITON_URL"], "e2e")

	// Sizes cycle through 256 MiB .. 4 GiB; 4 GiB never fits a 2 GiB node.
	pkgs := []string{"g1-nano-256M", "g1-micro-512M", "g1-small-1G", "g1-medium-2G", "g1-large-4G"}
	ctx := ctxTimeout(t, 3*time.Minute)
	out := make([]createOutcome, n)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			out[i] = api.createMachine(ctx, map[string]any{"name": fmt.Sprintf("cap-%03d", i), "image": busyboxID,
				"package": pkgs[i%len(pkgs)]}, "")
		}()
	}
	burst := time.Now()
	close(gate)
	wg.Wait()
	wall := time.Since(burst)

	var created, refused int
	var lat []time.Duration
	for i, o := range out {
		lat = append(lat, o.Took)
		switch {
		case o.Err != nil:
			t.Errorf("create %d: %v", i, o.Err)
		case o.Status == 201:
			created++
		case o.Status == 409:
			refused++
			var e struct{ Code, Message string }
			if err := json.Unmarshal([]byte(o.Body), &e); err != nil || e.Code != "InsufficientCapacity" ||
				!strings.Contains(e.Message, "no node can take") {
				t.Errorf("create %d (%s) refused without an explanation: %s", i, pkgs[i%len(pkgs)], o.Body)
			}
			if pkgs[i%len(pkgs)] == "g1-large-4G" && !strings.Contains(strings.ToLower(e.Message), "memory") {
				t.Errorf("create %d of 4 GiB on 2 GiB nodes: the refusal does not name memory: %s", i, e.Message)
			}
		default:
			t.Errorf("create %d (%s): %d %s, want 201 or 409", i, pkgs[i%len(pkgs)], o.Status, o.Body)
		}
	}
	slices.Sort(lat)
	figure("capacity: 500 concurrent creates", "%s wall, %d created, %d refused (409), p50 %s, p99 %s", wall.Round(time.Millisecond),
		created, refused, lat[n/2].Round(time.Millisecond), lat[n*99/100].Round(time.Millisecond))
	if created == 0 || refused == 0 {
		t.Fatalf("%d created and %d refused: the test wants both", created, refused)
	}
	for i, o := range out {
		if pkgs[i%len(pkgs)] == "g1-large-4G" && o.Status == 201 {
			t.Errorf("create %d of 4 GiB succeeded on nodes of 2 GiB", i)
		}
	}

	t.Run("NoNodeOverbooked", func(t *testing.T) {
		var nodeRows, over, mismatched, countMismatch int
		queryRow(t, db, `SELECT count(*),
			count(*) FILTER (WHERE live.mem > floor(n.memory_mib * n.ratio_memory)),
			count(*) FILTER (WHERE live.mem <> n.used_memory_mib OR live.disk <> n.used_disk_mib OR live.vcpus <> n.used_vcpus_milli),
			count(*) FILTER (WHERE live.cnt <> n.instances)
			FROM nodes n, LATERAL (SELECT COALESCE(sum(memory_mib), 0) AS mem, COALESCE(sum(disk_mib), 0) AS disk,
				COALESCE(sum(vcpus_milli), 0) AS vcpus, count(*) AS cnt
				FROM instances i WHERE i.node_id = n.id AND i.desired_state <> 'deleted') live`, nil,
			&nodeRows, &over, &mismatched, &countMismatch)
		if nodeRows != nodes {
			t.Errorf("%d nodes, want %d", nodeRows, nodes)
		}
		if over != 0 || mismatched != 0 || countMismatch != 0 {
			t.Errorf("nodes overbooked: %d; usage columns differ from the instances: %d (memory/disk/vCPU), %d (count)",
				over, mismatched, countMismatch)
		}
		var live, placedMiB, capMiB int64
		queryRow(t, db, `SELECT count(*), COALESCE(sum(memory_mib), 0)::bigint FROM instances WHERE desired_state <> 'deleted' AND name LIKE 'cap-%'`,
			nil, &live, &placedMiB)
		queryRow(t, db, `SELECT sum(floor(memory_mib * ratio_memory))::bigint FROM nodes`, nil, &capMiB)
		if live != int64(created) {
			t.Errorf("%d live instances in the database, %d creates answered 201", live, created)
		}
		figure("capacity: memory placed", "%d of %d MiB (%.0f%%)", placedMiB, capMiB, 100*float64(placedMiB)/float64(capMiB))
	})

	t.Run("CreatedConvergeToRunning", func(t *testing.T) {
		start := time.Now()
		for {
			var running int
			queryRow(t, db, `SELECT count(*) FROM instances WHERE name LIKE 'cap-%' AND state = 'running'`, nil, &running)
			if running == created {
				figure("capacity: burst end to all created running", "%s", time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Since(start) > 60*time.Second {
				t.Fatalf("%d of %d created instances running after 60 s", running, created)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

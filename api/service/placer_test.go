package service

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"flotilla/api/errdefs"
	"flotilla/scheduler"
	"flotilla/store"
	"flotilla/store/storetest"
)

// placeEnv is a store with an owner, an image and nodes, and several
// placers over it, each with its own snapshot as separate API replicas
// would have.
type placeEnv struct {
	st      *store.Store
	owner   string
	image   string
	network string
	placers []*Placer
}

func newPlaceEnv(t *testing.T, st *store.Store, replicas int, nodes int, nodeMemMiB int64) placeEnv {
	t.Helper()
	ctx := context.Background()
	acct, err := st.CreateAccount(ctx, store.Account{Login: "placer", Email: "p@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.CreateImage(ctx, store.Image{Name: "base", Version: "1", OS: "linux", Type: "zone-dataset", Public: true})
	if err != nil {
		t.Fatal(err)
	}
	net, err := st.CreateNetwork(ctx, store.Network{Name: "net", Subnet: "10.90.0.0/20"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		if _, err := st.RegisterNode(ctx, store.NodeRegistration{Name: fmt.Sprintf("node%02d", i), Brands: []string{"joyent-minimal"},
			MemoryMiB: nodeMemMiB, DiskMiB: 1 << 20, VCPUsMilli: 64000}, []byte(fmt.Sprintf("cred%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	env := placeEnv{st: st, owner: acct.ID, image: img.ID, network: net.ID}
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for range replicas {
		p, err := NewPlacer(ctx, st, slog.New(slog.DiscardHandler), PlacerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { p.Run(rctx) })
		env.placers = append(env.placers, p)
	}
	return env
}

// place creates one instance through a placer as instance creates do.
func (e placeEnv) place(ctx context.Context, p *Placer, name string, memMiB int64, withNet bool, rules ...scheduler.Rule) (store.Instance, error) {
	id := uuid.NewString()
	in := store.NewInstance{Instance: store.Instance{ID: id, OwnerID: e.owner, Name: name, Brand: "joyent-minimal",
		ImageID: e.image, MemoryMiB: memMiB, DiskMiB: 1024, VCPUsMilli: 250}}
	if withNet {
		in.Networks = []string{e.network}
	}
	for _, r := range rules {
		in.Affinity = append(in.Affinity, r.String())
	}
	req := scheduler.Request{InstanceID: id, OwnerID: e.owner, Name: name, Brand: "joyent-minimal", MemoryMiB: memMiB,
		DiskMiB: 1024, VCPUs: 0.25, Rules: rules}
	inst, _, err := p.Place(ctx, req, in)
	return inst, err
}

func checkNoOverbooking(t *testing.T, st *store.Store, placed int) {
	t.Helper()
	a, err := st.CheckPlacements(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if a.Overcommitted != 0 || a.Mismatched != 0 || a.LiveInstances != int64(placed) {
		t.Fatalf("%s; %d creates succeeded", a, placed)
	}
}

// TestConcurrentPlacersNeverOverbook sends 2,000 concurrent creates through
// four placers (each with its own snapshot, as four API replicas) at 50
// small nodes: the nodes fill up, no node is overbooked, every instance is
// counted in its node's usage, and every refused create says why in the
// scheduler's words.
func TestConcurrentPlacersNeverOverbook(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	env := newPlaceEnv(t, st, 4, 50, 4096)
	const creates = 2000
	var mu sync.Mutex
	placed, refused := 0, 0
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range creates {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			mem := int64(128 << rand.IntN(4)) // 128 MiB to 1 GiB
			// A quarter of the creates allocate an address, so they commit
			// alone through CreateInstance; the rest share transactions.
			_, err := env.place(ctx, env.placers[i%4], fmt.Sprintf("c%04d", i), mem, i%4 == 0)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				placed++
			case errdefs.Is(err, errdefs.InsufficientCapacity) && strings.HasPrefix(err.Error(), "no node can take") &&
				strings.Contains(err.Error(), "lack memory"):
				refused++
			default:
				t.Errorf("create %d (%d MiB): %v", i, mem, err)
			}
		})
	}
	wg.Wait()
	if placed+refused != creates || refused == 0 {
		t.Fatalf("%d placed, %d refused of %d: the nodes should have filled up", placed, refused, creates)
	}
	checkNoOverbooking(t, st, placed)
	var used, capacity int64
	st.Pool().QueryRow(ctx, `SELECT sum(used_memory_mib), sum(memory_mib) FROM nodes`).Scan(&used, &capacity)
	if used < capacity*9/10 {
		t.Fatalf("only %d of %d MiB used when creates were refused", used, capacity)
	}
	var conflicts int64
	for _, p := range env.placers {
		conflicts += p.Conflicts()
	}
	t.Logf("%d placed, %d refused, %d lost races, %d of %d MiB used", placed, refused, conflicts, used, capacity)
}

// TestStrictAntiAffinityUnderConcurrency races creates with the rule
// instance!=db* through separate placers: each lands on its own node, and
// the one too many fails naming the rule.
func TestStrictAntiAffinityUnderConcurrency(t *testing.T) {
	rule, err := scheduler.ParseRule("instance!=db*")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		creates int
	}{{"OK", 4}, {"ErrRuleExcludesEveryNode", 5}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st := storetest.New(t)
			env := newPlaceEnv(t, st, tc.creates, 4, 65536)
			var mu sync.Mutex
			nodes := map[string]string{}
			var errs []error
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range tc.creates {
				wg.Go(func() {
					<-start
					inst, err := env.place(ctx, env.placers[i], fmt.Sprintf("db%d", i), 1024, false, rule)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, err)
						return
					}
					if other, ok := nodes[*inst.NodeID]; ok {
						t.Errorf("%s and %s share node %s despite %s", other, inst.Name, *inst.NodeID, rule)
					}
					nodes[*inst.NodeID] = inst.Name
				})
			}
			close(start)
			wg.Wait()
			if len(nodes) != 4 {
				t.Fatalf("%d instances placed on distinct nodes, want 4 (errors: %v)", len(nodes), errs)
			}
			if len(errs) != tc.creates-4 {
				t.Fatalf("errors %v, want %d", errs, tc.creates-4)
			}
			for _, err := range errs {
				if !errdefs.Is(err, errdefs.InsufficientCapacity) || !strings.Contains(err.Error(), "instance!=db*") {
					t.Fatalf("refusal %q does not name the rule", err)
				}
			}
			checkNoOverbooking(t, st, len(nodes))
		})
	}
}

// TestDrainedNodeTakesNoPlacements drains a node that holds instances: new
// creates go elsewhere, even from a placer whose snapshot has not seen the
// drain, its instances stay, and undraining makes it usable again.
func TestDrainedNodeTakesNoPlacements(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	env := newPlaceEnv(t, st, 2, 2, 8192)
	var first []store.Instance
	for i := range 4 {
		inst, err := env.place(ctx, env.placers[0], fmt.Sprintf("a%d", i), 1024, i%2 == 0)
		if err != nil {
			t.Fatal(err)
		}
		first = append(first, inst)
	}
	drained := *first[0].NodeID
	if _, err := st.SetNodeDrained(ctx, drained, true); err != nil {
		t.Fatal(err)
	}
	// placers[1] has not refreshed since the drain: the commit refuses the
	// node all the same.
	for i := range 6 {
		inst, err := env.place(ctx, env.placers[1], fmt.Sprintf("b%d", i), 512, i%2 == 0)
		if err != nil {
			t.Fatal(err)
		}
		if *inst.NodeID == drained {
			t.Fatalf("create %s landed on drained node %s", inst.Name, drained)
		}
	}
	for _, in := range first {
		if *in.NodeID != drained {
			continue
		}
		got, err := st.GetInstance(ctx, env.owner, in.ID)
		if err != nil || got.NodeID == nil || *got.NodeID != drained || got.DesiredState != "running" {
			t.Fatalf("instance %s on the drained node: %+v, %v", in.Name, got, err)
		}
	}
	checkNoOverbooking(t, st, 10)

	if _, err := st.SetNodeDrained(ctx, drained, false); err != nil {
		t.Fatal(err)
	}
	if err := env.placers[1].Reload(ctx); err != nil {
		t.Fatal(err)
	}
	n, _ := st.GetNode(ctx, drained)
	free := n.MemoryMiB - n.UsedMemoryMiB
	inst, err := env.place(ctx, env.placers[1], "after", free, false)
	if err != nil || *inst.NodeID != drained {
		t.Fatalf("after undrain: %v on %v, want node %s", err, inst.NodeID, drained)
	}
}

// TestAdminNodeDrainAndPlacement runs the flotilla binary: node drain and
// undrain change the node, and placement explains an instance's decision.
func TestAdminNodeDrainAndPlacement(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to build the flotilla binary with: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "flotilla")
	if out, err := exec.Command(gobin, "build", "-o", bin, "flotilla/cmd/flotilla").CombinedOutput(); err != nil {
		t.Fatalf("building flotilla: %v\n%s", err, out)
	}
	ctx := context.Background()
	url := storetest.NewDatabase(t)
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	env := newPlaceEnv(t, st, 1, 2, 8192)
	admin := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"admin", "--db", url}, args...)...)
		cmd.Env = append(os.Environ(), "FLOTILLA_DB=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("flotilla admin %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	out := admin("node", "drain", "node00")
	if n, _ := st.GetNode(ctx, "node00"); !n.Drained || !strings.Contains(out, "node00") || !strings.Contains(out, "drained") {
		t.Fatalf("drain printed %q; node drained=%v", out, n.Drained)
	}
	if err := env.placers[0].Reload(ctx); err != nil {
		t.Fatal(err)
	}
	inst, err := env.place(ctx, env.placers[0], "web", 1024, false)
	if err != nil {
		t.Fatal(err)
	}
	n1, _ := st.GetNode(ctx, "node01")
	if *inst.NodeID != n1.ID {
		t.Fatalf("placed on %s while node00 is drained; want node01 (%s)", *inst.NodeID, n1.ID)
	}
	out = admin("placement", inst.ID)
	for _, want := range []string{"placed on node " + n1.ID + " (node01)", "instance: " + inst.ID,
		"request: 1024 MiB memory", "policy: pack; 2 nodes known", "ranking:\n  1. " + n1.ID} {
		if !strings.Contains(out, want) {
			t.Fatalf("placement output lacks %q:\n%s", want, out)
		}
	}
	out = admin("node", "undrain", "node00")
	if n, _ := st.GetNode(ctx, "node00"); n.Drained || !strings.Contains(out, "undrained") {
		t.Fatalf("undrain printed %q; node drained=%v", out, n.Drained)
	}
}

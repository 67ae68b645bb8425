package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/google/uuid"

	"flotilla/api/errdefs"
	"flotilla/store"
)

func (f fixture) newInstance(name string, mem int64, candidates ...string) store.NewInstance {
	return store.NewInstance{
		Instance: store.Instance{ID: uuid.NewString(), OwnerID: f.owner.ID, Name: name, Brand: "joyent-minimal",
			ImageID: f.image.ID, MemoryMiB: mem, DiskMiB: 1024, VCPUsMilli: 500, Tags: map[string]any{"role": "web"}},
		Candidates: candidates,
	}
}

func (f fixture) bulkNodes(t *testing.T, n int, memMiB int64) []string {
	t.Helper()
	nodes := make([]store.BulkNode, n)
	for i := range nodes {
		nodes[i] = store.BulkNode{Name: fmt.Sprintf("b%03d", i), Brands: []string{"joyent-minimal"},
			MemoryMiB: memMiB, DiskMiB: 1 << 20, VCPUsMilli: 64000}
	}
	ids, err := f.st.BulkInsertNodes(context.Background(), nodes)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func (f fixture) checkInvariants(t *testing.T) store.PlacementAudit {
	t.Helper()
	a, err := f.st.CheckPlacements(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if a.Overcommitted != 0 || a.Mismatched != 0 {
		t.Fatalf("invariants broken: %s", a)
	}
	return a
}

func TestCommitPlacements(t *testing.T) {
	ctx := context.Background()
	t.Run("OK", func(t *testing.T) {
		f := newFixture(t, 4096, "10.61.0.0/24")
		ids := f.bulkNodes(t, 2, 2048)
		batch := []store.NewInstance{
			f.newInstance("a", 1024, ids[0], ids[1]),
			f.newInstance("b", 1024, ids[0], ids[1]),
			f.newInstance("c", 1024, ids[1], ids[0]),
			f.newInstance("d", 512, ids[1]),
		}
		batch[0].Placement = []byte(`{"node_id":"x"}`)
		res := f.st.CommitPlacements(ctx, batch)
		want := []string{ids[0], ids[0], ids[1], ids[1]}
		revs := map[string]map[int64]bool{}
		for i, r := range res {
			if r.Err != nil {
				t.Fatalf("create %d: %v", i, r.Err)
			}
			in := r.Instance
			if in.NodeID == nil || *in.NodeID != want[i] || in.Name != batch[i].Name || in.State != "provisioning" ||
				in.MemoryMiB != batch[i].MemoryMiB || in.Tags["role"] != "web" {
				t.Fatalf("create %d: got %+v, want node %s", i, in, want[i])
			}
			if revs[*in.NodeID] == nil {
				revs[*in.NodeID] = map[int64]bool{}
			}
			if revs[*in.NodeID][in.AssignRev] {
				t.Fatalf("create %d: assign_rev %d reused on node %s", i, in.AssignRev, *in.NodeID)
			}
			revs[*in.NodeID][in.AssignRev] = true
		}
		// What CommitPlacements returns is what the database holds.
		for i, r := range res {
			got := r.Instance
			db, err := f.st.GetInstance(ctx, f.owner.ID, got.ID)
			if err != nil {
				t.Fatal(err)
			}
			if *db.NodeID != *got.NodeID || db.AssignRev != got.AssignRev || db.State != got.State ||
				db.Generation != got.Generation || !db.CreatedAt.Equal(got.CreatedAt) || db.DesiredState != got.DesiredState ||
				db.Tags["role"] != got.Tags["role"] || len(db.Metadata) != len(got.Metadata) || string(db.Spec) != string(got.Spec) {
				t.Fatalf("create %d returned %+v, database holds %+v", i, got, db)
			}
		}
		if db, _ := f.st.GetInstance(ctx, f.owner.ID, res[0].Instance.ID); string(db.Placement) != `{"node_id": "x"}` {
			t.Fatalf("placement record %s", db.Placement)
		}
		n0, _ := f.st.GetNode(ctx, ids[0])
		n1, _ := f.st.GetNode(ctx, ids[1])
		if n0.UsedMemoryMiB != 2048 || n0.Instances != 2 || n1.UsedMemoryMiB != 1536 || n1.Instances != 2 {
			t.Fatalf("usage: %d MiB/%d, %d MiB/%d", n0.UsedMemoryMiB, n0.Instances, n1.UsedMemoryMiB, n1.Instances)
		}
		// An agent asking from its node's previous revision sees every new instance.
		list, rev, err := f.st.Assignments(ctx, ids[0], 1, 1)
		if err != nil || len(list) != 1 {
			t.Fatalf("assignments: %d, %v", len(list), err)
		}
		list, _, err = f.st.Assignments(ctx, ids[0], rev, 10)
		if err != nil || len(list) != 1 {
			t.Fatalf("assignments after rev %d: %d, %v", rev, len(list), err)
		}
		var audits, changes int
		f.st.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM audit WHERE action = 'provision' AND pending),
			(SELECT count(*) FROM changes WHERE kind = 'instance' AND action = 'create')`).Scan(&audits, &changes)
		if audits != 4 || changes != 4 {
			t.Fatalf("%d audit entries, %d changes; want 4 each", audits, changes)
		}
		if a := f.checkInvariants(t); a.LiveInstances != 4 {
			t.Fatalf("audit: %s", a)
		}
	})
	t.Run("ErrNameTaken", func(t *testing.T) {
		f := newFixture(t, 4096, "10.62.0.0/24")
		ids := f.bulkNodes(t, 1, 8192)
		if res := f.st.CommitPlacements(ctx, []store.NewInstance{f.newInstance("taken", 512, ids[0])}); res[0].Err != nil {
			t.Fatal(res[0].Err)
		}
		res := f.st.CommitPlacements(ctx, []store.NewInstance{
			f.newInstance("x", 512, ids[0]),
			f.newInstance("taken", 512, ids[0]),
			f.newInstance("y", 512, ids[0]),
			f.newInstance("y", 512, ids[0]), // twice in one batch
		})
		for i, wantErr := range []bool{false, true, false, true} {
			if got := res[i].Err != nil; got != wantErr {
				t.Fatalf("create %d: err %v, want error %v", i, res[i].Err, wantErr)
			}
			if wantErr && (!errdefs.Is(res[i].Err, errdefs.Conflict) || res[i].Err.Error() == "") {
				t.Fatalf("create %d: %v, want a name conflict", i, res[i].Err)
			}
		}
		if a := f.checkInvariants(t); a.LiveInstances != 3 {
			t.Fatalf("audit: %s", a)
		}
	})
	t.Run("ErrNoCandidate", func(t *testing.T) {
		f := newFixture(t, 4096, "10.63.0.0/24")
		ids := f.bulkNodes(t, 2, 1024)
		if res := f.st.CommitPlacements(ctx, []store.NewInstance{f.newInstance("a", 768, ids[0])}); res[0].Err != nil {
			t.Fatal(res[0].Err)
		}
		// Creates on a node commit in batch order while they fit; the rest
		// are refused with the node's fresh row; other nodes commit.
		res := f.st.CommitPlacements(ctx, []store.NewInstance{
			f.newInstance("b", 128, ids[0]),
			f.newInstance("c", 256, ids[0]),
			f.newInstance("d", 512, ids[1]),
		})
		for i, want := range []error{nil, store.ErrNoCandidate, nil} {
			if res[i].Err != want {
				t.Fatalf("create %d: %v, want %v", i, res[i].Err, want)
			}
		}
		if len(res[1].Fresh) != 1 || res[1].Fresh[0].UsedMemoryMiB != 768+128 {
			t.Fatalf("fresh rows %+v", res[1].Fresh)
		}
		f.checkInvariants(t)
	})
	t.Run("ErrNameTakenOnRefusedNode", func(t *testing.T) {
		f := newFixture(t, 4096, "10.66.0.0/24")
		ids := f.bulkNodes(t, 1, 1024)
		if res := f.st.CommitPlacements(ctx, []store.NewInstance{f.newInstance("a", 1024, ids[0])}); res[0].Err != nil {
			t.Fatal(res[0].Err)
		}
		res := f.st.CommitPlacements(ctx, []store.NewInstance{f.newInstance("a", 1, ids[0]), f.newInstance("b", 1, ids[0])})
		if !errdefs.Is(res[0].Err, errdefs.Conflict) || res[1].Err != store.ErrNoCandidate {
			t.Fatalf("got %v, %v; want a name conflict and ErrNoCandidate", res[0].Err, res[1].Err)
		}
	})
	t.Run("DrainedNodeRefused", func(t *testing.T) {
		f := newFixture(t, 4096, "10.64.0.0/24")
		ids := f.bulkNodes(t, 2, 4096)
		if _, err := f.st.SetNodeDrained(ctx, ids[0], true); err != nil {
			t.Fatal(err)
		}
		res := f.st.CommitPlacements(ctx, []store.NewInstance{
			f.newInstance("a", 512, ids[0], ids[1]),
			f.newInstance("b", 512, ids[1]),
		})
		if res[0].Err != store.ErrNoCandidate || len(res[0].Fresh) != 1 || !res[0].Fresh[0].Drained {
			t.Fatalf("drained node: %v, fresh %+v", res[0].Err, res[0].Fresh)
		}
		if res[1].Err != nil || *res[1].Instance.NodeID != ids[1] {
			t.Fatalf("got %v, want node %s", res[1].Err, ids[1])
		}
		in := f.newInstance("c", 512, ids[0])
		in.Networks = []string{f.network.ID} // through CreateInstance's claimNode
		if res := f.st.CommitPlacements(ctx, []store.NewInstance{in}); res[0].Err != store.ErrNoCandidate {
			t.Fatalf("drained node took a create: %v", res[0].Err)
		}
		if n, _ := f.st.GetNode(ctx, ids[0]); n.Instances != 0 {
			t.Fatalf("drained node holds %d instances", n.Instances)
		}
	})
}

// TestCommitPlacementsConcurrent runs batches from several goroutines over
// shared nodes in random candidate orders: no deadlock, no overbooking, and
// every create either placed or refused as ErrNoCandidate.
func TestCommitPlacementsConcurrent(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 4096, "10.65.0.0/24")
	ids := f.bulkNodes(t, 10, 8192)
	const workers, batches, size = 6, 8, 16
	var mu sync.Mutex
	placed, refused := 0, 0
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for b := range batches {
				var batch []store.NewInstance
				for k := range size {
					c := append([]string(nil), ids...)
					rand.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
					mem := int64(256 << rand.IntN(3))
					if k == 0 && b%2 == 0 {
						in := f.newInstance(fmt.Sprintf("s-%d-%d", w, b), mem, c...)
						in.Networks = []string{f.network.ID}
						batch = append(batch, in)
						continue
					}
					batch = append(batch, f.newInstance(fmt.Sprintf("w%d-%d-%d", w, b, k), mem, c...))
				}
				res := f.st.CommitPlacements(ctx, batch)
				mu.Lock()
				for i, r := range res {
					switch {
					case r.Err == nil:
						placed++
					case r.Err == store.ErrNoCandidate:
						refused++
					default:
						t.Errorf("create %s: %v", batch[i].Name, r.Err)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	a := f.checkInvariants(t)
	if int64(placed) != a.LiveInstances || placed+refused != workers*batches*size {
		t.Fatalf("%d placed, %d refused; %s", placed, refused, a)
	}
	if refused == 0 {
		t.Fatalf("the cluster never filled up (%d placed): the test did not exercise contention", placed)
	}
}

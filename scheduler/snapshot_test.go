package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"

	"flotilla/api/errdefs"
)

// indexKeys lists a class index in order, checking the links both ways.
func indexKeys(t *testing.T, x *freeIndex) []string {
	t.Helper()
	var fwd []string
	var prev *indexNode
	for n := x.first(); n != nil; n = n.next[0] {
		if n.prev != prev {
			t.Fatalf("back link of %s is wrong", n.id)
		}
		if prev != nil && !keyLess(prev.free, prev.id, n.free, n.id) {
			t.Fatalf("index out of order: %d/%s before %d/%s", prev.free, prev.id, n.free, n.id)
		}
		fwd = append(fwd, fmt.Sprintf("%d/%s", n.free, n.id))
		prev = n
	}
	if x.last() != prev {
		t.Fatal("tail is not the last node")
	}
	if len(fwd) != x.n {
		t.Fatalf("index holds %d nodes, counts %d", len(fwd), x.n)
	}
	return fwd
}

func TestFreeIndex(t *testing.T) {
	var x freeIndex
	rng := rand.New(rand.NewPCG(7, 8))
	nodes := map[string]*indexNode{}
	for i := range 2000 {
		id := fmt.Sprintf("n%d", rng.IntN(300))
		if n, ok := nodes[id]; ok && i%3 != 0 {
			x.remove(n)
			delete(nodes, id)
			continue
		} else if ok {
			x.remove(n)
			n.free = int64(rng.IntN(50))
			x.insert(n)
			continue
		}
		n := &indexNode{free: int64(rng.IntN(50)), id: id}
		x.insert(n)
		nodes[id] = n
	}
	got := indexKeys(t, &x)
	var want []string
	type kv struct {
		free int64
		id   string
	}
	var all []kv
	for id, n := range nodes {
		all = append(all, kv{n.free, id})
	}
	sort.Slice(all, func(i, j int) bool { return keyLess(all[i].free, all[i].id, all[j].free, all[j].id) })
	for _, k := range all {
		want = append(want, fmt.Sprintf("%d/%s", k.free, k.id))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("index order\n%v\nwant\n%v", got, want)
	}
	for range 200 {
		f, id := int64(rng.IntN(55)), fmt.Sprintf("n%d", rng.IntN(300))
		n := x.seek(f, id)
		i := sort.Search(len(all), func(i int) bool { return !keyLess(all[i].free, all[i].id, f, id) })
		switch {
		case i == len(all) && n != nil:
			t.Fatalf("seek(%d,%s) = %s, want nil", f, id, n.id)
		case i < len(all) && (n == nil || n.id != all[i].id):
			t.Fatalf("seek(%d,%s) = %v, want %s", f, id, n, all[i].id)
		}
	}
}

func TestSnapshot(t *testing.T) {
	t.Run("ErrUpsertNoID", func(t *testing.T) {
		if err := NewSnapshot().Upsert(Node{}); errdefs.CodeOf(err) != errdefs.Invalid {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("ErrNotFound", func(t *testing.T) {
		s := NewSnapshot()
		for name, err := range map[string]error{
			"Remove":         s.Remove("x"),
			"UpdateUsage":    s.UpdateUsage("x", Resources{}),
			"RemoveResident": s.RemoveResident("x"),
		} {
			if errdefs.CodeOf(err) != errdefs.NotFound {
				t.Errorf("%s: err = %v, want not_found", name, err)
			}
		}
		if _, err := s.Node("x"); errdefs.CodeOf(err) != errdefs.NotFound {
			t.Errorf("Node: err = %v", err)
		}
	})
	t.Run("ErrResidentIncomplete", func(t *testing.T) {
		if err := NewSnapshot().AddResident(Resident{ID: "r", OwnerID: "o"}); errdefs.CodeOf(err) != errdefs.Invalid {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("OKUpdateUsageMovesIndexAndClamps", func(t *testing.T) {
		s := snapshotOf(t, []Node{nd("a", 8192, 0), nd("b", 8192, 4096)}, nil)
		if err := s.UpdateUsage("a", Resources{MemoryMiB: 6144, DiskMiB: 10, VCPUs: 1.5, Instances: 1}); err != nil {
			t.Fatal(err)
		}
		d, err := Place(s, Request{MemoryMiB: 1024}, Options{})
		if err != nil || d.NodeID != "a" {
			t.Fatalf("placed on %s (%v), want a (2048 MiB free)", d.NodeID, err)
		}
		if err := s.UpdateUsage("a", Resources{MemoryMiB: -100000, VCPUs: -9, Instances: -5}); err != nil {
			t.Fatal(err)
		}
		n, _ := s.Node("a")
		if n.Used != (Resources{DiskMiB: 10}) {
			t.Fatalf("used = %+v, want clamped to zero", n.Used)
		}
		for _, c := range s.classes {
			if got := indexKeys(t, &c.index); !slices.Equal(got, []string{"4096/b", "8192/a"}) {
				t.Fatalf("index = %v", got)
			}
		}
	})
	t.Run("OKUpsertChangesClassAndState", func(t *testing.T) {
		s := snapshotOf(t, []Node{nd("a", 8192, 0), nd("b", 8192, 0)}, nil)
		b, _ := s.Node("b")
		b.Brands = []string{"kvm"}
		b.State = NodeOffline
		if err := s.Upsert(b); err != nil {
			t.Fatal(err)
		}
		if len(s.classes) != 1 || s.unschedulable[ReasonOffline] != 1 {
			t.Fatalf("classes %d, unschedulable %v", len(s.classes), s.unschedulable)
		}
		b.State = NodeRunning
		_ = s.Upsert(b)
		if len(s.classes) != 2 || s.unschedulable[ReasonOffline] != 0 {
			t.Fatalf("classes %d, unschedulable %v", len(s.classes), s.unschedulable)
		}
		d, err := Place(s, Request{Brand: "kvm", MemoryMiB: 1}, Options{})
		if err != nil || d.NodeID != "b" {
			t.Fatalf("kvm placed on %s (%v)", d.NodeID, err)
		}
		if err := s.Remove("b"); err != nil {
			t.Fatal(err)
		}
		if len(s.classes) != 1 || s.Len() != 1 {
			t.Fatalf("after remove: %d classes, %d nodes", len(s.classes), s.Len())
		}
	})
	t.Run("OKScaleFollowsLargestNode", func(t *testing.T) {
		s := snapshotOf(t, []Node{nd("a", 8192, 0), nd("b", 65536, 0)}, nil)
		if s.maxMem != 65536 {
			t.Fatalf("maxMem = %d", s.maxMem)
		}
		_ = s.Remove("b")
		if s.maxMem != 8192 {
			t.Fatalf("after removing the largest node maxMem = %d", s.maxMem)
		}
	})
	t.Run("OKResidentMoves", func(t *testing.T) {
		s := snapshotOf(t, []Node{nd("a", 8192, 0), nd("b", 8192, 0)}, nil)
		_ = s.AddResident(Resident{ID: "r", OwnerID: "o", Name: "db", NodeID: "a"})
		_ = s.AddResident(Resident{ID: "r", OwnerID: "o", Name: "db", NodeID: "b"})
		d, err := Place(s, Request{OwnerID: "o", MemoryMiB: 1, Rules: mustRules(t, "instance==db")}, Options{})
		if err != nil || d.NodeID != "b" {
			t.Fatalf("placed on %s (%v), want b", d.NodeID, err)
		}
		if err := s.RemoveResident("r"); err != nil {
			t.Fatal(err)
		}
		if len(s.byOwner) != 0 {
			t.Fatalf("owner index not emptied: %v", s.byOwner)
		}
	})
}

// TestSnapshotConcurrent runs placements and updates at once; run with -race.
func TestSnapshotConcurrent(t *testing.T) {
	var nodes []Node
	for i := range 200 {
		nodes = append(nodes, nd(fmt.Sprintf("n%03d", i), 65536, 0))
	}
	s := snapshotOf(t, nodes, nil)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				d, err := Place(s, Request{OwnerID: "o", MemoryMiB: 512}, Options{})
				if err != nil {
					t.Error(err)
					return
				}
				_ = s.UpdateUsage(d.NodeID, Resources{MemoryMiB: 512, Instances: 1})
				_ = s.AddResident(Resident{ID: fmt.Sprintf("%d-%d", w, i), OwnerID: "o", NodeID: d.NodeID})
			}
		}()
	}
	wg.Wait()
	var used int64
	for _, n := range s.Nodes() {
		used += n.Used.MemoryMiB
	}
	if used != 4*300*512 {
		t.Fatalf("used %d MiB, want %d", used, 4*300*512)
	}
}

func TestFirstFitDecreasing(t *testing.T) {
	nodes := []Node{nd("a", 10, 0), nd("b", 10, 0)}
	reqs := []Request{{MemoryMiB: 3}, {MemoryMiB: 7}, {MemoryMiB: 5}, {MemoryMiB: 5}, {MemoryMiB: 4}}
	// Decreasing: 7->a, 5->b, 5->b, 4 fits nowhere (a has 3), 3->a: 20 of 24.
	if got := FirstFitDecreasing(nodes, reqs); got != 20 {
		t.Fatalf("FFD placed %d MiB, want 20", got)
	}
	if nodes[0].Used.MemoryMiB != 0 {
		t.Fatal("FFD modified its input")
	}
	withBrand := []Request{{MemoryMiB: 3, Brand: "kvm"}}
	if got := FirstFitDecreasing(nodes, withBrand); got != 0 {
		t.Fatalf("FFD ignored the brand filter: %d", got)
	}
}

// TestExactIndexMatchesScan checks the owner's exact-match index against
// testing every resident with Rule.Matches.
func TestExactIndexMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	s := NewSnapshot()
	var residents []Resident
	tags := []map[string]any{nil, {"role": "db"}, {"docker:label:role": "db"}, {"role": "web", "nn": 2.0},
		{"nn": 2.0}, {"up": true}, {"docker:label:docker:label:role": "db"}}
	for i := range 300 {
		r := Resident{ID: fmt.Sprintf("0f0e0d0c-0b0a-%04d", rng.IntN(200)), OwnerID: "o",
			Name: []string{"web1", "db1", "db2", ""}[rng.IntN(4)], Tags: tags[rng.IntN(len(tags))],
			NodeID: fmt.Sprintf("n%d", rng.IntN(20))}
		if err := s.AddResident(r); err != nil {
			t.Fatal(err)
		}
		residents = slices.DeleteFunc(residents, func(x Resident) bool { return x.ID == r.ID })
		residents = append(residents, r)
		if i%7 == 0 && len(residents) > 0 {
			j := rng.IntN(len(residents))
			if err := s.RemoveResident(residents[j].ID); err != nil {
				t.Fatal(err)
			}
			residents = slices.Delete(residents, j, j+1)
		}
	}
	for _, expr := range []string{"instance==web1", "instance==db2", "container==0f0e0d0c-0b0a-0007", "role==db",
		"nn==2", "up==true", "role==web", "role==nosuch", "instance==0f0e0d0c0b0a0007",
		"instance==db*"} {
		r := mustRules(t, expr)[0]
		got := matchNodes(r, s.byOwner["o"], s.byOwner["o"].nodes)
		want := map[string]bool{}
		for _, res := range residents {
			if r.Matches(res) {
				want[res.NodeID] = true
			}
		}
		if len(got) != len(want) {
			t.Fatalf("%s: index gives %v, scan %v", expr, got, want)
		}
		for n := range want {
			if !got[n] {
				t.Fatalf("%s: index lacks %s", expr, n)
			}
		}
	}
}

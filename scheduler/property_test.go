package scheduler

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"flotilla/api/errdefs"
)

// byteSource turns fuzz input into choices; past the end it yields zeros.
type byteSource struct {
	b []byte
	i int
}

func (s *byteSource) next() byte {
	if s.i >= len(s.b) {
		return 0
	}
	s.i++
	return s.b[s.i-1]
}

func (s *byteSource) n(k int) int { return int(s.next()) % k }

var (
	genStates = []string{NodeRunning, NodeRunning, NodeRunning, NodeRunning, NodeOffline, "setup"}
	genBrands = [][]string{{brand}, {brand}, {brand}, {brand, "lx"}, {"kvm", "bhyve"}, nil}
	genTraits = []map[string]any{nil, nil, nil, {"ssd": true}, {"ssd": false}, {"hw": []any{"a", "b"}}, {"ssd": "true"}}
	genMem    = []int64{1024, 2048, 4096, 8192, 16384}
	genRules  = []string{
		"instance==web1", "instance!=web*", "instance==~db*", "instance!=~web1", "role!=db", "role==db",
		"role==~/^d/", "role!=~cache", "container!=/1$/", "instance==nosuch", "instance==~web*", "role==~db",
		"instance!=~db1", "role==~cache",
	}
	genReqTraits = []map[string]any{nil, nil, nil, nil, nil, nil, {"ssd": true}, {"hw": "b"}, {"hw": []any{"c", "a"}}}
	genReqBrands = []string{brand, brand, brand, brand, "", "kvm", "lx"}
)

// genCase builds a cluster, residents, a request and options from src.
func genCase(src *byteSource) ([]Node, []Resident, Request, Options) {
	nn := 1 + src.n(24)
	nodes := make([]Node, nn)
	for i := range nodes {
		capMem := genMem[src.n(len(genMem))]
		n := Node{
			ID:       fmt.Sprintf("n%02d", src.n(30)), // duplicates replace earlier nodes
			State:    genStates[src.n(len(genStates))],
			Drained:  src.n(16) == 0,
			Reserved: src.n(12) == 0,
			Brands:   genBrands[src.n(len(genBrands))],
			Traits:   genTraits[src.n(len(genTraits))],
			Capacity: Resources{MemoryMiB: capMem, DiskMiB: int64(1+src.n(8)) * 1024, VCPUs: float64(1 + src.n(8)), Instances: 2 * src.n(6)},
			Used: Resources{MemoryMiB: capMem * int64(src.n(5)) / 4, DiskMiB: int64(src.n(8)) * 256,
				VCPUs: float64(src.n(8)) / 2, Instances: src.n(4)},
			Ratios: Ratios{Memory: []float64{0, 1, 1.5}[src.n(3)], VCPU: []float64{0, 4}[src.n(2)]},
		}
		nodes[i] = n
	}
	var residents []Resident
	for i := range src.n(16) {
		residents = append(residents, Resident{
			ID:      fmt.Sprintf("r%d", i),
			OwnerID: fmt.Sprintf("o%d", src.n(2)),
			Name:    []string{"web1", "web2", "db1", "db2", "cache1"}[src.n(5)],
			Tags:    []map[string]any{nil, {"role": "db"}, {"role": "cache"}, {"docker:label:role": "db"}}[src.n(4)],
			NodeID:  nodes[src.n(len(nodes))].ID,
		})
	}
	req := Request{
		InstanceID: "new", OwnerID: fmt.Sprintf("o%d", src.n(2)), Brand: genReqBrands[src.n(len(genReqBrands))],
		MemoryMiB: int64(src.n(9)) * 512, DiskMiB: int64(src.n(5)) * 512, VCPUs: float64(src.n(5)) / 2,
		Traits: genReqTraits[src.n(len(genReqTraits))],
	}
	for range src.n(4) {
		r, err := ParseRule(genRules[src.n(len(genRules))])
		if err != nil {
			panic(err)
		}
		req.Rules = append(req.Rules, r)
	}
	if src.n(4) == 0 {
		req.ExcludeNodes = map[string]bool{fmt.Sprintf("n%02d", src.n(40)): true}
	}
	opts := Options{Candidates: 1 + src.n(4), OwnerSpreadWeight: []float64{0, -1, 0.3, 3}[src.n(4)]}
	if src.n(2) == 0 {
		opts.Policy = PolicySpread
	}
	return nodes, residents, req, opts
}

// checkPlacement verifies a placement against first principles and against
// the brute-force scan.
func checkPlacement(t *testing.T, s *Snapshot, residents []Resident, req Request, opts Options) {
	t.Helper()
	d, err := Place(s, req, opts)
	scan := scanPlace(s, req, opts)
	if !reflect.DeepEqual(candidateIDs(d.Candidates), candidateIDs(scan.Candidates)) {
		t.Fatalf("indexed ranking %+v, scan ranking %+v\nrequest %+v opts %+v", d.Candidates, scan.Candidates, req, opts)
	}
	for i := range d.Candidates {
		if d.Candidates[i].Score != scan.Candidates[i].Score {
			t.Fatalf("candidate %d score %v, scan %v", i, d.Candidates[i].Score, scan.Candidates[i].Score)
		}
	}
	if err != nil {
		if errdefs.CodeOf(err) != errdefs.InsufficientCapacity {
			t.Fatalf("error code %s: %v", errdefs.CodeOf(err), err)
		}
		if !reflect.DeepEqual(d.Rejections, scan.Rejections) {
			t.Fatalf("failed decision rejections %v, scan %v", d.Rejections, scan.Rejections)
		}
		return
	}
	for _, c := range d.Candidates {
		n, err := s.Node(c.NodeID)
		if err != nil {
			t.Fatal(err)
		}
		if ok, r := Eligible(n, req); !ok {
			t.Fatalf("placed on %s which fails filter %s: %+v", n.ID, r, n)
		}
		if ok, r := Fits(n, req); !ok {
			t.Fatalf("placed on %s beyond capacity (%s): %+v for %+v", n.ID, r, n, req)
		}
		if req.ExcludeNodes[n.ID] {
			t.Fatalf("placed on excluded node %s", n.ID)
		}
		for _, rule := range req.Rules {
			if rule.Soft {
				continue
			}
			hit := false
			for _, res := range residents {
				if res.OwnerID == req.OwnerID && res.NodeID == n.ID && rule.Matches(res) {
					hit = true
				}
			}
			if hit != (rule.Operator == OpEqual) {
				t.Fatalf("placed on %s breaking strict rule %s", n.ID, rule)
			}
		}
	}
}

func buildSnapshot(t *testing.T, nodes []Node, residents []Resident) (*Snapshot, []Resident) {
	t.Helper()
	s := snapshotOf(t, nodes, nil)
	// Residents replace earlier ones with the same ID, as in the snapshot.
	live := map[string]Resident{}
	for _, r := range residents {
		if err := s.AddResident(r); err != nil {
			t.Fatal(err)
		}
		live[r.ID] = r
	}
	out := make([]Resident, 0, len(live))
	for _, r := range live {
		out = append(out, r)
	}
	return s, out
}

// TestIndexedMatchesScan compares the indexed placement with the
// brute-force scan over random clusters, placing repeatedly so the index is
// exercised through usage updates, node replacement and removal.
func TestIndexedMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 512)
	for iter := range 400 {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		src := &byteSource{b: buf}
		nodes, residents, req, opts := genCase(src)
		s, residents := buildSnapshot(t, nodes, residents)
		for step := range 12 {
			checkPlacement(t, s, residents, req, opts)
			d, err := Place(s, req, opts)
			if err == nil {
				if err := s.UpdateUsage(d.NodeID, Resources{MemoryMiB: req.MemoryMiB, DiskMiB: req.DiskMiB, VCPUs: req.VCPUs, Instances: 1}); err != nil {
					t.Fatal(err)
				}
				r := Resident{ID: fmt.Sprintf("p%d-%d", iter, step), OwnerID: req.OwnerID, Name: "web1", NodeID: d.NodeID}
				if err := s.AddResident(r); err != nil {
					t.Fatal(err)
				}
				residents = append(residents, r)
			}
			switch rng.IntN(6) {
			case 0: // release memory somewhere
				all := s.Nodes()
				n := all[rng.IntN(len(all))]
				if err := s.UpdateUsage(n.ID, Resources{MemoryMiB: -1024 * int64(rng.IntN(4))}); err != nil {
					t.Fatal(err)
				}
			case 1: // a node changes (drain, state, size)
				all := s.Nodes()
				n := all[rng.IntN(len(all))]
				n.Drained = rng.IntN(2) == 0
				n.State = genStates[rng.IntN(len(genStates))]
				n.Capacity.MemoryMiB = genMem[rng.IntN(len(genMem))]
				if err := s.Upsert(n); err != nil {
					t.Fatal(err)
				}
			case 2:
				all := s.Nodes()
				if len(all) > 1 {
					if err := s.Remove(all[rng.IntN(len(all))].ID); err != nil {
						t.Fatal(err)
					}
				}
			}
			req.MemoryMiB = int64(rng.IntN(9)) * 512
		}
	}
}

// FuzzPlace checks that a placement never lands on a node failing a filter
// or beyond capacity, and always agrees with the brute-force scan.
func FuzzPlace(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x05\x01\x00\x00\x00\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d"))
	rng := rand.New(rand.NewPCG(3, 4))
	for range 8 {
		b := make([]byte, 256)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		nodes, residents, req, opts := genCase(&byteSource{b: data})
		s, residents := buildSnapshot(t, nodes, residents)
		checkPlacement(t, s, residents, req, opts)
	})
}

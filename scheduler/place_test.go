package scheduler

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"flotilla/api/errdefs"
)

const brand = "joyent-minimal"

// nd builds a running node with memory capacity and usage in MiB and room
// to spare in every other dimension.
func nd(id string, capMem, usedMem int64, opts ...func(*Node)) Node {
	n := Node{
		ID: id, Hostname: "host-" + id, State: NodeRunning, Brands: []string{brand},
		Capacity: Resources{MemoryMiB: capMem, DiskMiB: 1 << 20, VCPUs: 64},
		Used:     Resources{MemoryMiB: usedMem},
	}
	for _, o := range opts {
		o(&n)
	}
	return n
}

func mustRules(t testing.TB, exprs ...string) []Rule {
	t.Helper()
	rules, err := ParseRules(exprs)
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func snapshotOf(t testing.TB, nodes []Node, residents []Resident) *Snapshot {
	t.Helper()
	s := NewSnapshot()
	for _, n := range nodes {
		if err := s.Upsert(n); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range residents {
		if err := s.AddResident(r); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestPlace(t *testing.T) {
	offline := func(n *Node) { n.State = NodeOffline }
	drained := func(n *Node) { n.Drained = true }
	reserved := func(n *Node) { n.Reserved = true }
	kvm := func(n *Node) { n.Brands = []string{"kvm", "bhyve"} }
	traits := func(tr map[string]any) func(*Node) { return func(n *Node) { n.Traits = tr } }
	disk := func(c, u int64) func(*Node) {
		return func(n *Node) { n.Capacity.DiskMiB, n.Used.DiskMiB = c, u }
	}
	cpu := func(c, u, ratio float64) func(*Node) {
		return func(n *Node) { n.Capacity.VCPUs, n.Used.VCPUs, n.Ratios.VCPU = c, u, ratio }
	}
	count := func(c, u int) func(*Node) {
		return func(n *Node) { n.Capacity.Instances, n.Used.Instances = c, u }
	}
	res := func(id, owner, name, node string, tags map[string]any) Resident {
		return Resident{ID: id, OwnerID: owner, Name: name, NodeID: node, Tags: tags}
	}
	req := func(mem int64, rules ...string) Request {
		return Request{InstanceID: "i-new", OwnerID: "o1", Name: "new", Brand: brand, MemoryMiB: mem, DiskMiB: 10, VCPUs: 1,
			Rules: mustRules(t, rules...)}
	}
	three := []Node{nd("n1", 16384, 8192), nd("n2", 16384, 12288), nd("n3", 16384, 14336)} // free 8192, 4096, 2048

	tests := []struct {
		name      string
		nodes     []Node
		residents []Resident
		req       Request
		opts      Options
		want      string // node id; empty means an InsufficientCapacity error
		wantMsg   string // substring of the error message
		wantRej   map[Reason]int
	}{
		{name: "OKPackBestFit", nodes: three, req: req(2048), want: "n3"},
		{name: "OKPackNextWhenBestTooSmall", nodes: three, req: req(3000), want: "n2"},
		{name: "OKSpreadMostFree", nodes: three, req: req(2048), opts: Options{Policy: PolicySpread}, want: "n1"},
		{name: "OKPackTieLowestID", nodes: []Node{nd("b", 4096, 0), nd("a", 4096, 0), nd("c", 4096, 0)}, req: req(1024), want: "a"},
		{name: "OKSpreadTieLowestID", nodes: []Node{nd("b", 4096, 0), nd("c", 4096, 0), nd("a", 4096, 0), nd("d", 2048, 0)},
			req: req(1024), opts: Options{Policy: PolicySpread}, want: "a"},
		{name: "OKExactFit", nodes: []Node{nd("n1", 4096, 0)}, req: req(4096), want: "n1"},
		{name: "OKMemoryRatio", nodes: []Node{nd("n1", 1000, 900, func(n *Node) { n.Ratios.Memory = 1.5 })}, req: req(600), want: "n1"},
		{name: "SkipsOffline", nodes: []Node{nd("n1", 4096, 0, offline), nd("n2", 8192, 0)}, req: req(1024), want: "n2",
			wantRej: map[Reason]int{ReasonOffline: 1}},
		{name: "SkipsDrained", nodes: []Node{nd("n1", 4096, 0, drained), nd("n2", 8192, 0)}, req: req(1024), want: "n2"},
		{name: "SkipsReserved", nodes: []Node{nd("n1", 4096, 0, reserved), nd("n2", 8192, 0)}, req: req(1024), want: "n2"},
		{name: "SkipsBrand", nodes: []Node{nd("n1", 4096, 0, kvm), nd("n2", 8192, 0)}, req: req(1024), want: "n2",
			wantRej: map[Reason]int{ReasonBrand: 1}},
		{name: "OKBrandFromSet", nodes: []Node{nd("n1", 4096, 0, kvm), nd("n2", 8192, 0)},
			req: func() Request { r := req(1024); r.Brand = "bhyve"; return r }(), want: "n1"},
		{name: "OKAnyBrand", nodes: []Node{nd("n1", 4096, 0, kvm), nd("n2", 8192, 0)},
			req: func() Request { r := req(1024); r.Brand = ""; return r }(), want: "n1"},
		{name: "SkipsTraitTypeMismatch", nodes: []Node{nd("n1", 4096, 0, traits(map[string]any{"ssd": "true"})),
			nd("n2", 8192, 0, traits(map[string]any{"ssd": true}))},
			req: func() Request { r := req(1024); r.Traits = map[string]any{"ssd": true}; return r }(), want: "n2",
			wantRej: map[Reason]int{ReasonTraits: 1}},
		{name: "SkipsTraitMissing", nodes: []Node{nd("n1", 4096, 0), nd("n2", 8192, 0, traits(map[string]any{"ssd": true, "gpu": "a100"}))},
			req: func() Request { r := req(1024); r.Traits = map[string]any{"ssd": true}; return r }(), want: "n2"},
		{name: "OKTraitRequestArray", nodes: []Node{nd("n1", 4096, 0, traits(map[string]any{"hw": "b"})), nd("n2", 8192, 0)},
			req: func() Request { r := req(1024); r.Traits = map[string]any{"hw": []any{"a", "b"}}; return r }(), want: "n1"},
		{name: "OKTraitNodeArray", nodes: []Node{nd("n1", 4096, 0, traits(map[string]any{"hw": []any{"x", "b"}})), nd("n2", 8192, 0)},
			req: func() Request { r := req(1024); r.Traits = map[string]any{"hw": "b"}; return r }(), want: "n1"},
		{name: "OKTraitlessRequestIgnoresNodeTraits", nodes: []Node{nd("n1", 4096, 0, traits(map[string]any{"ssd": true}))},
			req: req(1024), want: "n1"},
		{name: "SkipsDisk", nodes: []Node{nd("n1", 4096, 0, disk(100, 95)), nd("n2", 8192, 0)}, req: req(1024), want: "n2",
			wantRej: map[Reason]int{ReasonDisk: 1}},
		{name: "SkipsVCPU", nodes: []Node{nd("n1", 4096, 0, cpu(2, 7.5, 4)), nd("n2", 8192, 0)}, req: req(1024), want: "n2",
			wantRej: map[Reason]int{ReasonVCPU: 1}},
		{name: "OKVCPURatio", nodes: []Node{nd("n1", 4096, 0, cpu(2, 7, 4)), nd("n2", 8192, 0)}, req: req(1024), want: "n1"},
		{name: "SkipsInstanceCount", nodes: []Node{nd("n1", 4096, 0, count(3, 3)), nd("n2", 8192, 0)}, req: req(1024), want: "n2",
			wantRej: map[Reason]int{ReasonInstanceCount: 1}},
		{name: "OKInstanceCountBelowLimit", nodes: []Node{nd("n1", 4096, 0, count(3, 2)), nd("n2", 8192, 0)}, req: req(1024), want: "n1"},
		{name: "SkipsExcluded", nodes: three,
			req: func() Request { r := req(1024); r.ExcludeNodes = map[string]bool{"n3": true}; return r }(), want: "n2",
			wantRej: map[Reason]int{ReasonExcluded: 1}},
		{name: "OKStrictNear", nodes: three, residents: []Resident{res("r1", "o1", "web1", "n1", nil)},
			req: req(1024, "instance==web1"), want: "n1"},
		{name: "OKStrictNearTwoRules", nodes: three,
			residents: []Resident{res("r1", "o1", "web1", "n1", nil), res("r2", "o1", "web2", "n2", map[string]any{"role": "db"}),
				res("r3", "o1", "web3", "n3", nil)},
			req: req(1024, "instance==web*", "role==db"), want: "n2"},
		{name: "ErrStrictNearNoMatch", nodes: three, residents: []Resident{res("r1", "o2", "web1", "n1", nil)},
			req: req(1024, "instance==web1"), wantMsg: "3 nodes excluded by instance==web1"},
		{name: "ErrStrictNearFull", nodes: three, residents: []Resident{res("r1", "o1", "web1", "n3", nil)},
			req:     req(4096, "instance==web1"),
			wantMsg: "no node can take 4096 MiB memory, 10 MiB disk, 1 vCPUs: 1 node lacks memory (largest free 8192 MiB), 2 excluded by instance==web1"},
		{name: "OKStrictFar", nodes: three, residents: []Resident{res("r1", "o1", "db1", "n3", map[string]any{"role": "db"})},
			req: req(1024, "role!=db"), want: "n2", wantRej: map[Reason]int{ReasonAffinity: 1}},
		{name: "OKStrictFarRegex", nodes: three, residents: []Resident{res("r1", "o1", "db1", "n3", nil), res("r2", "o1", "db2", "n2", nil)},
			req: req(1024, "instance!=/^db/"), want: "n1"},
		{name: "OKOtherOwnerIgnored", nodes: three, residents: []Resident{res("r1", "o2", "db1", "n3", nil)},
			req: req(1024, "instance!=db1"), want: "n3"},
		{name: "OKSoftNear", nodes: three, residents: []Resident{res("r1", "o1", "web1", "n1", nil)},
			req: req(1024, "instance==~web1"), want: "n1"},
		{name: "OKSoftNearIgnoredWhenFull", nodes: three, residents: []Resident{res("r1", "o1", "web1", "n3", nil)},
			req: req(4096, "instance==~web1"), want: "n2"},
		{name: "OKSoftFar", nodes: three, residents: []Resident{res("r1", "o1", "db1", "n3", nil)},
			req: req(1024, "instance!=~db1"), opts: Options{OwnerSpreadWeight: -1}, want: "n2"},
		{name: "OKSoftFarWhenOnlyOption", nodes: three, residents: []Resident{res("r1", "o1", "db1", "n1", nil)},
			req: req(5000, "instance!=~db1"), want: "n1"},
		{name: "OKOwnerSpread", nodes: []Node{nd("n1", 16384, 12288), nd("n2", 16384, 11264)},
			residents: []Resident{res("r1", "o1", "a", "n1", nil)}, req: req(1024), want: "n2"},
		{name: "OKOwnerSpreadOff", nodes: []Node{nd("n1", 16384, 12288), nd("n2", 16384, 11264)},
			residents: []Resident{res("r1", "o1", "a", "n1", nil)}, req: req(1024), opts: Options{OwnerSpreadWeight: -1}, want: "n1"},
		{name: "OKOwnerSpreadOtherOwner", nodes: []Node{nd("n1", 16384, 12288), nd("n2", 16384, 11264)},
			residents: []Resident{res("r1", "o2", "a", "n1", nil)}, req: req(1024), want: "n1"},
		{name: "OKOwnerSpreadLosesToBigFitGap", nodes: []Node{nd("n1", 65536, 64512), nd("n2", 65536, 0)},
			residents: []Resident{res("r1", "o1", "a", "n1", nil)}, req: req(512), want: "n1"},
		{name: "ErrMixedReasons",
			nodes:     []Node{nd("n1", 4096, 2048), nd("n2", 4096, 3072), nd("n3", 8192, 0, offline), nd("n4", 8192, 0)},
			residents: []Resident{res("r1", "o1", "db7", "n4", nil)}, req: req(4096, "instance!=db*"),
			wantMsg: "no node can take 4096 MiB memory, 10 MiB disk, 1 vCPUs: 2 nodes lack memory (largest free 8192 MiB), 1 excluded by instance!=db*, 1 offline",
			wantRej: map[Reason]int{ReasonMemory: 2, ReasonAffinity: 1, ReasonOffline: 1}},
		{name: "ErrNoNodes", req: req(1), wantMsg: "no compute nodes are available"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := snapshotOf(t, tt.nodes, tt.residents)
			d, err := Place(s, tt.req, tt.opts)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("placed on %s, want an error", d.NodeID)
				}
				if errdefs.CodeOf(err) != errdefs.InsufficientCapacity {
					t.Fatalf("code = %s, want insufficient_capacity (%v)", errdefs.CodeOf(err), err)
				}
				if !strings.Contains(err.Error(), tt.wantMsg) {
					t.Fatalf("message %q lacks %q", err.Error(), tt.wantMsg)
				}
				if d.NodeID != "" {
					t.Fatalf("failed decision names node %s", d.NodeID)
				}
			} else {
				if err != nil {
					t.Fatalf("Place: %v", err)
				}
				if d.NodeID != tt.want {
					t.Fatalf("placed on %s, want %s\n%s", d.NodeID, tt.want, d.Explain())
				}
				scan := scanPlace(s, tt.req, tt.opts)
				if len(scan.Candidates) == 0 || scan.Candidates[0].NodeID != d.NodeID {
					t.Fatalf("scan chose %+v, index chose %s", scan.Candidates, d.NodeID)
				}
			}
			for r, n := range tt.wantRej {
				if d.Rejections[r] != n {
					t.Fatalf("rejections[%s] = %d, want %d (all: %v)", r, d.Rejections[r], n, d.Rejections)
				}
			}
		})
	}
}

// scanPlace is the brute-force reference: every node through every filter.
func scanPlace(s *Snapshot, req Request, opts Options) Decision {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p := s.newPlacement(req, opts)
	p.scan()
	return p.decision()
}

func TestPlaceInvalidRequest(t *testing.T) {
	s := snapshotOf(t, []Node{nd("n1", 4096, 0)}, nil)
	for name, r := range map[string]Request{
		"ErrNegativeMemory": {MemoryMiB: -1},
		"ErrNegativeDisk":   {DiskMiB: -1},
		"ErrNaNVCPU":        {VCPUs: nan()},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Place(s, r, Options{}); errdefs.CodeOf(err) != errdefs.Invalid {
				t.Fatalf("err = %v, want invalid", err)
			}
		})
	}
}

func nan() float64 { var z float64; return z / z }

func TestFits(t *testing.T) {
	base := Node{Capacity: Resources{MemoryMiB: 1000, DiskMiB: 1000, VCPUs: 2, Instances: 10},
		Used: Resources{MemoryMiB: 500, DiskMiB: 500, VCPUs: 1, Instances: 5}}
	tests := []struct {
		name   string
		mod    func(*Node)
		req    Request
		reason Reason
	}{
		{"OKExactMemory", nil, Request{MemoryMiB: 500}, ""},
		{"ErrMemoryByOne", nil, Request{MemoryMiB: 501}, ReasonMemory},
		{"OKMemoryRatioFloor", func(n *Node) { n.Ratios.Memory = 1.1 }, Request{MemoryMiB: 600}, ""},
		{"ErrMemoryRatioFloor", func(n *Node) { n.Capacity.MemoryMiB = 999; n.Ratios.Memory = 1.1 }, Request{MemoryMiB: 599}, ReasonMemory}, // floor(1098.9) = 1098
		{"ErrDisk", nil, Request{DiskMiB: 501}, ReasonDisk},
		{"OKDiskRatio", func(n *Node) { n.Ratios.Disk = 2 }, Request{DiskMiB: 1500}, ""},
		{"OKVCPUExact", nil, Request{VCPUs: 1}, ""},
		{"ErrVCPU", nil, Request{VCPUs: 1.001}, ReasonVCPU},
		{"OKVCPURatio", func(n *Node) { n.Ratios.VCPU = 4 }, Request{VCPUs: 7}, ""},
		{"OKVCPURounding", func(n *Node) { n.Used.VCPUs = 0.1 + 0.2 }, Request{VCPUs: 1.7}, ""},
		{"ErrInstances", func(n *Node) { n.Used.Instances = 10 }, Request{}, ReasonInstanceCount},
		{"OKNoInstanceLimit", func(n *Node) { n.Capacity.Instances = 0; n.Used.Instances = 1000 }, Request{}, ""},
		{"ErrMemoryBeforeDisk", nil, Request{MemoryMiB: 501, DiskMiB: 501}, ReasonMemory},
		{"OKNegativeRatioMeansOne", func(n *Node) { n.Ratios.Memory = -3 }, Request{MemoryMiB: 500}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := base
			if tt.mod != nil {
				tt.mod(&n)
			}
			ok, reason := Fits(n, tt.req)
			if ok != (tt.reason == "") || reason != tt.reason {
				t.Fatalf("Fits = %v, %q; want reason %q", ok, reason, tt.reason)
			}
		})
	}
}

func TestCandidatesRanked(t *testing.T) {
	nodes := []Node{nd("n1", 16384, 8192), nd("n2", 16384, 12288), nd("n3", 16384, 14336), nd("n4", 16384, 15360)}
	s := snapshotOf(t, nodes, nil)
	req := Request{MemoryMiB: 2048}
	t.Run("OKPack", func(t *testing.T) {
		c, err := Candidates(s, req, Options{}, 3)
		if err != nil {
			t.Fatal(err)
		}
		if ids := candidateIDs(c); !reflect.DeepEqual(ids, []string{"n3", "n2", "n1"}) {
			t.Fatalf("ranking %v", ids)
		}
	})
	t.Run("OKSpread", func(t *testing.T) {
		c, err := Candidates(s, req, Options{Policy: PolicySpread}, 10)
		if err != nil {
			t.Fatal(err)
		}
		if ids := candidateIDs(c); !reflect.DeepEqual(ids, []string{"n1", "n2", "n3"}) {
			t.Fatalf("ranking %v", ids)
		}
	})
	t.Run("OKFallbackAfterLostRace", func(t *testing.T) {
		c, _ := Candidates(s, req, Options{}, 2)
		req2 := req
		req2.ExcludeNodes = map[string]bool{c[0].NodeID: true}
		d, err := Place(s, req2, Options{})
		if err != nil || d.NodeID != c[1].NodeID {
			t.Fatalf("after excluding %s placed on %s (%v), want %s", c[0].NodeID, d.NodeID, err, c[1].NodeID)
		}
	})
}

func candidateIDs(c []Candidate) []string {
	var ids []string
	for _, x := range c {
		ids = append(ids, x.NodeID)
	}
	return ids
}

func TestDecisionRecord(t *testing.T) {
	s := snapshotOf(t, []Node{nd("n1", 4096, 0), nd("n2", 2048, 0, func(n *Node) { n.State = NodeOffline })},
		[]Resident{{ID: "r1", OwnerID: "o1", Name: "db1", NodeID: "n1"}})
	req := Request{InstanceID: "i1", OwnerID: "o1", MemoryMiB: 1024, Rules: mustRules(t, "instance!=~db*")}
	d, err := Place(s, req, Options{Candidates: 2})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var back Decision
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, d) {
		t.Fatalf("JSON round trip changed the decision:\n%+v\n%+v", back, d)
	}
	if d.InstanceID != "i1" || d.Rejections[ReasonOffline] != 1 || d.Request.Rules[0] != "instance!=~db*" {
		t.Fatalf("decision %s", b)
	}
	ex := d.Explain()
	for _, want := range []string{"placed on node n1 (host-n1)", "instance: i1", "affinity instance!=~db*", "1 node offline", "1. n1"} {
		if !strings.Contains(ex, want) {
			t.Fatalf("Explain lacks %q:\n%s", want, ex)
		}
	}
	_, err = Place(s, Request{MemoryMiB: 8192}, Options{})
	if err == nil {
		t.Fatal("placed 8 GiB on a 4 GiB cluster")
	}
	failed, _ := Place(s, Request{MemoryMiB: 8192}, Options{})
	if !strings.HasPrefix(failed.Explain(), "not placed: no node can take 8192 MiB memory") ||
		failed.Rejections[ReasonMemory] != 1 || failed.LargestFreeMemoryMiB != 4096 {
		t.Fatalf("failed decision %+v\n%s", failed, failed.Explain())
	}
}

package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// benchCluster builds n nodes in three shapes (256/512/1024 GiB with
// proportional vCPUs and disk, ratios vCPU 4.0 / memory 1.0 / disk 1.0),
// 10% of them with an "ssd" trait, each already 0-85% used.
func benchCluster(rng *rand.Rand, n int) []Node {
	nodes := make([]Node, n)
	for i := range nodes {
		shape := int64(1) << rng.IntN(3) // 1, 2, 4
		capMem := shape * 256 * 1024
		node := Node{
			ID: fmt.Sprintf("%08x-node", i), State: NodeRunning, Brands: []string{brand, "bhyve"},
			Capacity: Resources{MemoryMiB: capMem, DiskMiB: shape * 4 << 20, VCPUs: float64(shape * 32), Instances: 1000},
			Ratios:   Ratios{Memory: 1, Disk: 1, VCPU: 4},
		}
		if i%10 == 0 {
			node.Traits = map[string]any{"ssd": true}
		}
		f := rng.Float64() * 0.85
		node.Used = Resources{MemoryMiB: int64(float64(capMem) * f), DiskMiB: int64(float64(node.Capacity.DiskMiB) * f),
			VCPUs: float64(node.Capacity.VCPUs) * f * 2, Instances: int(f * 100)}
		nodes[i] = node
	}
	return nodes
}

// benchRequests draws requests from the package mix: 70% small (1-4 GiB),
// 25% medium (8-32 GiB), 5% large (64-256 GiB); 10% want the ssd trait,
// 20% carry a strict role!=<group> anti-affinity rule, 5% a soft one.
func benchRequests(rng *rand.Rand, n, owners int) []Request {
	reqs := make([]Request, n)
	for i := range reqs {
		var mem int64
		switch p := rng.IntN(100); {
		case p < 70:
			mem = 1024 << rng.IntN(3)
		case p < 95:
			mem = 8192 << rng.IntN(3)
		default:
			mem = 65536 << rng.IntN(3)
		}
		r := Request{
			InstanceID: fmt.Sprintf("req-%d", i), OwnerID: fmt.Sprintf("owner-%d", rng.IntN(owners)), Brand: brand,
			MemoryMiB: mem, DiskMiB: mem * 4, VCPUs: float64(mem) / 4096,
		}
		if rng.IntN(10) == 0 {
			r.Traits = map[string]any{"ssd": true}
		}
		switch p := rng.IntN(100); {
		case p < 20:
			rule, _ := ParseRule(fmt.Sprintf("role!=g%d", rng.IntN(5)))
			r.Rules = []Rule{rule}
		case p < 25:
			rule, _ := ParseRule(fmt.Sprintf("role==~g%d", rng.IntN(5)))
			r.Rules = []Rule{rule}
		}
		reqs[i] = r
	}
	return reqs
}

// BenchmarkPlace measures placement plus the usage update at 10,000 nodes
// with churn: once 50,000 of its own instances are live, each placement
// also releases the oldest one. It reports decisions/s and the p50/p99
// latency of Place alone.
func BenchmarkPlace(b *testing.B) {
	for _, policy := range []Policy{PolicyPack, PolicySpread} {
		b.Run(string(policy), func(b *testing.B) { benchmarkPlace(b, policy) })
	}
}

func benchmarkPlace(b *testing.B, policy Policy) {
	const nodes, owners, live = 10000, 2000, 50000
	rng := rand.New(rand.NewPCG(42, 43))
	s := NewSnapshot()
	for _, n := range benchCluster(rng, nodes) {
		if err := s.Upsert(n); err != nil {
			b.Fatal(err)
		}
	}
	all := s.Nodes()
	for i := range 20000 { // instances already running, for affinity and owner spread
		_ = s.AddResident(Resident{
			ID: fmt.Sprintf("old-%d", i), OwnerID: fmt.Sprintf("owner-%d", rng.IntN(owners)),
			Name: fmt.Sprintf("old-%d", i), Tags: map[string]any{"role": fmt.Sprintf("g%d", rng.IntN(5))},
			NodeID: all[rng.IntN(len(all))].ID,
		})
	}
	reqs := benchRequests(rng, 8192, owners)
	type placed struct {
		id, node string
		use      Resources
	}
	ring := make([]placed, 0, live)
	head := 0
	lat := make([]time.Duration, 0, b.N)
	failures := 0
	opts := Options{Policy: policy, Candidates: 3}

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		req := reqs[i%len(reqs)]
		t0 := time.Now()
		d, err := Place(s, req, opts)
		lat = append(lat, time.Since(t0))
		if err != nil {
			failures++
			continue
		}
		use := Resources{MemoryMiB: req.MemoryMiB, DiskMiB: req.DiskMiB, VCPUs: req.VCPUs, Instances: 1}
		_ = s.UpdateUsage(d.NodeID, use)
		id := fmt.Sprintf("new-%d", i)
		var tags map[string]any
		if len(req.Rules) > 0 {
			tags = map[string]any{"role": req.Rules[0].Value}
		}
		_ = s.AddResident(Resident{ID: id, OwnerID: req.OwnerID, Name: id, Tags: tags, NodeID: d.NodeID})
		p := placed{id, d.NodeID, use}
		if len(ring) < live {
			ring = append(ring, p)
			continue
		}
		old := ring[head]
		ring[head] = p
		head = (head + 1) % live
		_ = s.UpdateUsage(old.node, Resources{MemoryMiB: -old.use.MemoryMiB, DiskMiB: -old.use.DiskMiB,
			VCPUs: -old.use.VCPUs, Instances: -1})
		_ = s.RemoveResident(old.id)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds()) / 1000
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "decisions/s")
	var sum time.Duration
	for _, l := range lat {
		sum += l
	}
	b.ReportMetric(float64(sum.Nanoseconds())/float64(len(lat))/1000, "mean-µs")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(pct(0.999), "p99.9-µs")
	b.ReportMetric(float64(failures)/float64(b.N), "fail-frac")
}

// TestPackingVersusFFD fills a small cluster with the pack policy until the
// first failure and compares the memory placed with the offline
// first-fit-decreasing bound on the same request prefix.
func TestPackingVersusFFD(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	nodes := benchCluster(rng, 200)
	for i := range nodes {
		nodes[i].Used = Resources{}
		nodes[i].Traits = nil
	}
	s := snapshotOf(t, nodes, nil)
	reqs := benchRequests(rng, 20000, 50)
	var placed int64
	var prefix []Request
	for _, r := range reqs {
		r.Rules, r.Traits = nil, nil
		d, err := Place(s, r, Options{})
		prefix = append(prefix, r)
		if err != nil {
			break
		}
		placed += r.MemoryMiB
		if err := s.UpdateUsage(d.NodeID, Resources{MemoryMiB: r.MemoryMiB, DiskMiB: r.DiskMiB, VCPUs: r.VCPUs, Instances: 1}); err != nil {
			t.Fatal(err)
		}
	}
	bound := FirstFitDecreasing(nodes, prefix)
	var total int64
	for _, n := range nodes {
		total += n.EffectiveMemoryMiB()
	}
	ratio := float64(placed) / float64(bound)
	t.Logf("pack placed %d MiB (%.1f%% of capacity) at first failure; FFD %d MiB; ratio %.3f",
		placed, 100*float64(placed)/float64(total), bound, ratio)
	if ratio < 0.9 {
		t.Fatalf("pack reached only %.3f of the FFD bound", ratio)
	}
}

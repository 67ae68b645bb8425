package scheduler

import (
	"cmp"
	"slices"
)

// FirstFitDecreasing is the offline packing bound the placement benchmark
// compares against: it sorts the requests by dominant share (the largest of
// memory, disk and vCPU as a fraction of the cluster's effective total),
// largest first, and puts each on the first node, in the given order, that
// is Eligible and Fits. Affinity rules and exclusions are ignored. It returns
// the memory placed, in MiB. The inputs are not modified.
//
// A max-tree over the nodes' free memory finds the first node with enough
// memory in O(log n), so the whole run costs O(r log r + r·k·log n), where k
// is the number of memory-fitting nodes skipped for other reasons.
func FirstFitDecreasing(nodes []Node, reqs []Request) (placedMemMiB int64) {
	var totMem, totDisk, totCPU float64
	ns := slices.Clone(nodes)
	for _, n := range ns {
		totMem += float64(n.EffectiveMemoryMiB())
		totDisk += float64(n.EffectiveDiskMiB())
		totCPU += float64(n.EffectiveMilliVCPUs())
	}
	share := func(r Request) float64 {
		s := 0.0
		if totMem > 0 {
			s = max(s, float64(r.MemoryMiB)/totMem)
		}
		if totDisk > 0 {
			s = max(s, float64(r.DiskMiB)/totDisk)
		}
		if totCPU > 0 {
			s = max(s, float64(milli(r.VCPUs))/totCPU)
		}
		return s
	}
	type item struct {
		share float64
		req   *Request
	}
	items := make([]item, len(reqs))
	for i := range reqs {
		items[i] = item{share(reqs[i]), &reqs[i]}
	}
	slices.SortStableFunc(items, func(a, b item) int { return cmp.Compare(b.share, a.share) })

	t := newMaxTree(ns)
	for _, it := range items {
		r := it.req
		for i := t.firstAtLeast(0, r.MemoryMiB); i >= 0; i = t.firstAtLeast(i+1, r.MemoryMiB) {
			n := &ns[i]
			if ok, _ := Eligible(*n, *r); !ok {
				continue
			}
			if ok, _ := Fits(*n, *r); !ok {
				continue
			}
			n.Used.MemoryMiB += r.MemoryMiB
			n.Used.DiskMiB += r.DiskMiB
			n.Used.VCPUs += r.VCPUs
			n.Used.Instances++
			t.set(i, n.FreeMemoryMiB())
			placedMemMiB += r.MemoryMiB
			break
		}
	}
	return placedMemMiB
}

// maxTree is a segment tree of free memory by node position.
type maxTree struct {
	size int
	v    []int64
}

func newMaxTree(nodes []Node) *maxTree {
	size := 1
	for size < len(nodes) {
		size *= 2
	}
	t := &maxTree{size: size, v: make([]int64, 2*size)}
	for i := range t.v {
		t.v[i] = -1 << 62
	}
	for i, n := range nodes {
		t.v[size+i] = n.FreeMemoryMiB()
	}
	for i := size - 1; i >= 1; i-- {
		t.v[i] = max(t.v[2*i], t.v[2*i+1])
	}
	return t
}

func (t *maxTree) set(i int, v int64) {
	i += t.size
	t.v[i] = v
	for i /= 2; i >= 1; i /= 2 {
		t.v[i] = max(t.v[2*i], t.v[2*i+1])
	}
}

// firstAtLeast returns the smallest position >= from whose value is >= x, or -1.
func (t *maxTree) firstAtLeast(from int, x int64) int {
	return t.find(1, 0, t.size, from, x)
}

func (t *maxTree) find(node, lo, hi, from int, x int64) int {
	if hi <= from || t.v[node] < x {
		return -1
	}
	if hi-lo == 1 {
		return lo
	}
	mid := (lo + hi) / 2
	if i := t.find(2*node, lo, mid, from, x); i >= 0 {
		return i
	}
	return t.find(2*node+1, mid, hi, from, x)
}

package scheduler

// freeIndex is a skip list of nodes ordered by (free memory, node id), with
// back links on the bottom level so it can be walked both ways. Insert and
// delete are O(log n) expected; seeking is O(log n) and each step O(1).
// It is not safe for concurrent mutation; Snapshot's lock guards it.
type freeIndex struct {
	head  [maxLevel]*indexNode
	tail  *indexNode
	level int
	n     int
	rng   uint64
}

const maxLevel = 16

type indexNode struct {
	free int64
	id   string
	e    *entry
	prev *indexNode
	next []*indexNode
}

func keyLess(af int64, aid string, bf int64, bid string) bool {
	return af < bf || af == bf && aid < bid
}

// randomLevel draws a level with P(level > l) = 4^-l from a xorshift stream.
func (x *freeIndex) randomLevel() int {
	if x.rng == 0 {
		x.rng = 0x9e3779b97f4a7c15
	}
	lvl := 1
	for lvl < maxLevel {
		x.rng ^= x.rng << 13
		x.rng ^= x.rng >> 7
		x.rng ^= x.rng << 17
		if x.rng&3 != 0 {
			break
		}
		lvl++
	}
	return lvl
}

// path fills update with, per level, the last node before (free, id) (nil
// meaning the head).
func (x *freeIndex) path(free int64, id string, update *[maxLevel]*indexNode) {
	var cur *indexNode
	for l := x.level - 1; l >= 0; l-- {
		for {
			var nx *indexNode
			if cur == nil {
				nx = x.head[l]
			} else {
				nx = cur.next[l]
			}
			if nx == nil || !keyLess(nx.free, nx.id, free, id) {
				break
			}
			cur = nx
		}
		update[l] = cur
	}
}

// insert links n, whose free and id are set, into the list. A node being
// re-inserted keeps its level so an update allocates nothing.
func (x *freeIndex) insert(n *indexNode) {
	if n.next == nil {
		n.next = make([]*indexNode, x.randomLevel())
	}
	lvl := len(n.next)
	for x.level < lvl {
		x.level++
	}
	var update [maxLevel]*indexNode
	x.path(n.free, n.id, &update)
	for l := 0; l < lvl; l++ {
		if p := update[l]; p == nil {
			n.next[l] = x.head[l]
			x.head[l] = n
		} else {
			n.next[l] = p.next[l]
			p.next[l] = n
		}
	}
	n.prev = update[0]
	if n.next[0] != nil {
		n.next[0].prev = n
	} else {
		x.tail = n
	}
	x.n++
}

// remove unlinks n, which must be in the list with its current key.
func (x *freeIndex) remove(n *indexNode) {
	var update [maxLevel]*indexNode
	x.path(n.free, n.id, &update)
	for l := 0; l < len(n.next); l++ {
		if p := update[l]; p == nil {
			if x.head[l] == n {
				x.head[l] = n.next[l]
			}
		} else if p.next[l] == n {
			p.next[l] = n.next[l]
		}
	}
	if n.next[0] != nil {
		n.next[0].prev = n.prev
	} else {
		x.tail = n.prev
	}
	for x.level > 0 && x.head[x.level-1] == nil {
		x.level--
	}
	for l := range n.next {
		n.next[l] = nil
	}
	n.prev = nil
	x.n--
}

// seek returns the first node with key >= (free, id), or nil.
func (x *freeIndex) seek(free int64, id string) *indexNode {
	var update [maxLevel]*indexNode
	x.path(free, id, &update)
	if update[0] == nil {
		return x.head[0]
	}
	return update[0].next[0]
}

func (x *freeIndex) first() *indexNode { return x.head[0] }
func (x *freeIndex) last() *indexNode  { return x.tail }

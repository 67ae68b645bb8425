package scheduler

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Snapshot is the scheduler's in-memory view of nodes and the instances on
// them. It is safe for concurrent use: placements share a read lock, updates
// take the write lock.
//
// Schedulable nodes (running, not drained, not reserved) are grouped into
// equivalence classes of their static attributes (brands and traits), and
// each class keeps its nodes ordered by (effective free memory, node id), so
// a placement checks brand and traits once per class and walks only the
// nodes whose free memory is near the answer. Residents are indexed by owner
// and node, so affinity rules and owner spreading look only at the few nodes
// that hold the requesting owner's instances.
//
// The snapshot is a hint: the database is the authority on capacity, and
// UpdateUsage clamps usage at zero rather than fail on a stale release.
type Snapshot struct {
	mu      sync.RWMutex
	nodes   map[string]*entry
	classes map[string]*class
	// unschedulable counts nodes outside every class, by reason.
	unschedulable map[Reason]int
	// memCaps counts nodes by effective memory; maxMem is its largest key,
	// the scale of the capacity score.
	memCaps map[int64]int
	maxMem  int64

	residents map[string]Resident
	byOwner   map[string]*ownerIndex
}

// ownerIndex is one owner's residents: by node, and by exact match key
// (name, id, tag=value) to the nodes holding them, so exact affinity rules
// cost a map lookup instead of a pass over the owner's residents.
type ownerIndex struct {
	nodes map[string]*ownerSlot
	exact map[string]map[string]int // match key -> node -> residents
}

// ownerSlot holds one owner's residents on one node; a slice, since there
// are few and placement iterates them.
type ownerSlot struct {
	residents []Resident
}

type entry struct {
	node  Node
	class *class // nil unless schedulable
	idx   indexNode
}

type class struct {
	key    string
	brands []string
	traits map[string]any
	index  freeIndex
}

// NewSnapshot returns an empty snapshot.
func NewSnapshot() *Snapshot {
	return &Snapshot{
		nodes:         map[string]*entry{},
		classes:       map[string]*class{},
		unschedulable: map[Reason]int{},
		memCaps:       map[int64]int{},
		residents:     map[string]Resident{},
		byOwner:       map[string]*ownerIndex{},
	}
}

// Upsert adds a node or replaces the node with the same ID. The snapshot
// keeps copies of Brands and of the Traits map (not of nested trait values).
// It returns an Invalid error if the node has no ID.
func (s *Snapshot) Upsert(n Node) error {
	if n.ID == "" {
		return errInvalid("node has no id")
	}
	n.Brands = slices.Clone(n.Brands)
	n.Traits = maps.Clone(n.Traits)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.nodes[n.ID]; ok {
		s.unlink(old)
	}
	e := &entry{node: n}
	s.nodes[n.ID] = e
	s.link(e)
	return nil
}

// Remove deletes a node. Residents recorded on it stay until removed with
// RemoveResident. It returns NotFound for an unknown node.
func (s *Snapshot) Remove(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.nodes[id]
	if !ok {
		return errNotFound("node %s is not in the scheduler snapshot", id)
	}
	s.unlink(e)
	delete(s.nodes, id)
	return nil
}

// Node returns a copy of a node. It returns NotFound for an unknown
// node.
func (s *Snapshot) Node(id string) (Node, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.nodes[id]
	if !ok {
		return Node{}, errNotFound("node %s is not in the scheduler snapshot", id)
	}
	return e.node, nil
}

// Nodes returns copies of all nodes ordered by ID.
func (s *Snapshot) Nodes() []Node {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Node, 0, len(s.nodes))
	for _, e := range s.nodes {
		out = append(out, e.node)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Len returns the number of nodes.
func (s *Snapshot) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.nodes)
}

// UpdateUsage adds delta to a node's Used resources (negative to release),
// clamping each at zero. It returns NotFound for an unknown node.
func (s *Snapshot) UpdateUsage(nodeID string, delta Resources) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.nodes[nodeID]
	if !ok {
		return errNotFound("node %s is not in the scheduler snapshot", nodeID)
	}
	u := &e.node.Used
	newMem := max(u.MemoryMiB+delta.MemoryMiB, 0)
	if e.class != nil && newMem != u.MemoryMiB {
		e.class.index.remove(&e.idx)
		u.MemoryMiB = newMem
		e.idx.free = e.node.FreeMemoryMiB()
		e.class.index.insert(&e.idx)
	}
	u.MemoryMiB = newMem
	u.DiskMiB = max(u.DiskMiB+delta.DiskMiB, 0)
	u.VCPUs = max(u.VCPUs+delta.VCPUs, 0)
	u.Instances = max(u.Instances+delta.Instances, 0)
	return nil
}

// AddResident records an instance placed on a node, replacing any record
// with the same ID. The node need not be known yet. It returns
// an Invalid error if ID, OwnerID or NodeID is empty.
func (s *Snapshot) AddResident(r Resident) error {
	if r.ID == "" || r.OwnerID == "" || r.NodeID == "" {
		return errInvalid("resident instance needs an id, an owner and a node (got %q, %q, %q)",
			r.ID, r.OwnerID, r.NodeID)
	}
	r.Tags = maps.Clone(r.Tags)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.residents[r.ID]; ok {
		s.dropResident(old)
	}
	s.residents[r.ID] = r
	oi := s.byOwner[r.OwnerID]
	if oi == nil {
		oi = &ownerIndex{nodes: map[string]*ownerSlot{}, exact: map[string]map[string]int{}}
		s.byOwner[r.OwnerID] = oi
	}
	slot := oi.nodes[r.NodeID]
	if slot == nil {
		slot = &ownerSlot{}
		oi.nodes[r.NodeID] = slot
	}
	slot.residents = append(slot.residents, r)
	for _, k := range exactKeys(r) {
		m := oi.exact[k]
		if m == nil {
			m = map[string]int{}
			oi.exact[k] = m
		}
		m[r.NodeID]++
	}
	return nil
}

// RemoveResident forgets an instance. It returns NotFound for an
// unknown one.
func (s *Snapshot) RemoveResident(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.residents[id]
	if !ok {
		return errNotFound("instance %s is not in the scheduler snapshot", id)
	}
	s.dropResident(r)
	return nil
}

func (s *Snapshot) dropResident(r Resident) {
	delete(s.residents, r.ID)
	oi := s.byOwner[r.OwnerID]
	if oi == nil {
		return
	}
	if slot := oi.nodes[r.NodeID]; slot != nil {
		slot.residents = slices.DeleteFunc(slot.residents, func(x Resident) bool { return x.ID == r.ID })
		if len(slot.residents) == 0 {
			delete(oi.nodes, r.NodeID)
		}
	}
	for _, k := range exactKeys(r) {
		m := oi.exact[k]
		if m[r.NodeID]--; m[r.NodeID] <= 0 {
			delete(m, r.NodeID)
		}
		if len(m) == 0 {
			delete(oi.exact, k)
		}
	}
	if len(oi.nodes) == 0 {
		delete(s.byOwner, r.OwnerID)
	}
}

// exactKeys lists the keys under which an exact rule finds r: its name, its
// id, and each tag value (a Docker label tag also under its bare name).
func exactKeys(r Resident) []string {
	keys := make([]string, 0, 2+2*len(r.Tags))
	keys = append(keys, nameKey(r.Name), idKey(r.ID))
	for k, v := range r.Tags {
		sv, ok := tagString(v)
		if !ok {
			continue
		}
		keys = append(keys, tagKey(k, sv))
		if bare, ok := strings.CutPrefix(k, dockerLabelTagPrefix); ok {
			keys = append(keys, tagKey(bare, sv))
		}
	}
	return keys
}

func nameKey(name string) string { return "n\x00" + name }
func idKey(id string) string     { return "i\x00" + id }
func tagKey(k, v string) string  { return "t\x00" + k + "\x00" + v }

// link files e into the memory-scale counts and, when schedulable, into its
// class index.
func (s *Snapshot) link(e *entry) {
	mem := e.node.EffectiveMemoryMiB()
	s.memCaps[mem]++
	if mem > s.maxMem {
		s.maxMem = mem
	}
	if r := stateReason(e.node); r != "" {
		s.unschedulable[r]++
		return
	}
	key := classKey(e.node)
	c := s.classes[key]
	if c == nil {
		c = &class{key: key, brands: e.node.Brands, traits: e.node.Traits}
		s.classes[key] = c
	}
	e.class = c
	e.idx = indexNode{free: e.node.FreeMemoryMiB(), id: e.node.ID, e: e}
	c.index.insert(&e.idx)
}

func (s *Snapshot) unlink(e *entry) {
	mem := e.node.EffectiveMemoryMiB()
	if s.memCaps[mem]--; s.memCaps[mem] <= 0 {
		delete(s.memCaps, mem)
		if mem == s.maxMem {
			s.maxMem = 0
			for m := range s.memCaps {
				s.maxMem = max(s.maxMem, m)
			}
		}
	}
	if e.class == nil {
		s.unschedulable[stateReason(e.node)]--
		return
	}
	e.class.index.remove(&e.idx)
	if e.class.index.n == 0 {
		delete(s.classes, e.class.key)
	}
	e.class = nil
}

// classKey identifies a node's static attributes: its brands as a set and its
// traits.
func classKey(n Node) string {
	brands := slices.Clone(n.Brands)
	slices.Sort(brands)
	brands = slices.Compact(brands)
	traits, err := json.Marshal(n.Traits)
	if err != nil {
		traits = []byte(fmt.Sprintf("%#v", n.Traits))
	}
	return strings.Join(brands, "\x00") + "\x01" + string(traits)
}

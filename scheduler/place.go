package scheduler

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Score weights. The capacity score lies in [0, 1]; a soft affinity rule
// outweighs any capacity difference, as Triton applies soft rules before
// scoring; owner spreading only nudges.
const (
	// SoftAffinityWeight is added per satisfied soft "==~" rule and subtracted
	// per violated soft "!=~" rule.
	SoftAffinityWeight = 2.0
	// DefaultOwnerSpreadWeight scales the penalty w*n/(n+1) for a node already
	// holding n instances of the requesting owner.
	DefaultOwnerSpreadWeight = 0.5
)

// Options tune a placement.
type Options struct {
	Policy Policy // zero value: PolicyPack
	// Candidates is how many ranked feasible nodes the Decision keeps (the
	// first is the choice), so a committer that loses a race can try the next
	// one. Zero means 1.
	Candidates int
	// OwnerSpreadWeight overrides DefaultOwnerSpreadWeight; negative disables
	// owner spreading.
	OwnerSpreadWeight float64
}

// Candidate is a feasible node and its score.
type Candidate struct {
	NodeID        string  `json:"node_id"`
	Hostname      string  `json:"hostname,omitempty"`
	Score         float64 `json:"score"`
	FreeMemoryMiB int64   `json:"free_memory_mib"` // before this placement
}

// Decision records a placement and why it came out as it did. It is
// JSON-serialisable and is stored as the instance's placement record.
//
// Rejections count, by the first filter each failed, the nodes the scheduler
// looked at. A successful placement stops looking once no other node can
// score better, so the counts then cover the nodes near the answer plus
// whole classes of nodes ruled out by state, brand or traits; a failed one
// looks at every node.
type Decision struct {
	InstanceID string      `json:"instance_id,omitempty"`
	NodeID     string      `json:"node_id,omitempty"` // empty when nothing fits
	Hostname   string      `json:"hostname,omitempty"`
	Score      float64     `json:"score"`
	Policy     Policy      `json:"policy"`
	Request    RequestInfo `json:"request"`
	TotalNodes int         `json:"total_nodes"`
	// Considered is the number of nodes examined one by one.
	Considered int `json:"considered"`
	// Feasible is how many examined nodes passed every filter.
	Feasible   int            `json:"feasible"`
	Rejections map[Reason]int `json:"rejections,omitempty"`
	// AffinityRejections splits Rejections[ReasonAffinity] by rule.
	AffinityRejections map[string]int `json:"affinity_rejections,omitempty"`
	// LargestFreeMemoryMiB is the most free memory on any node that is up
	// and matches the requested brand and traits.
	LargestFreeMemoryMiB int64       `json:"largest_free_memory_mib"`
	Candidates           []Candidate `json:"candidates,omitempty"`
}

// RequestInfo is the part of a Request a Decision records.
type RequestInfo struct {
	MemoryMiB int64    `json:"memory_mib"`
	DiskMiB   int64    `json:"disk_mib"`
	VCPUs     float64  `json:"vcpus"`
	Brand     string   `json:"brand,omitempty"`
	Rules     []string `json:"rules,omitempty"`
}

// Place chooses a node for req. On success the Decision names the node and
// up to opts.Candidates ranked alternatives. When no node passes the filters
// it returns the Decision (with every node's rejection counted) and an
// InsufficientCapacity error whose message says which constraints
// failed. It returns Invalid for negative or non-finite resources.
//
// Filters: node running, not drained, not reserved, brand, traits, not in
// req.ExcludeNodes, strict affinity, then capacity (Fits). Score: capacity
// (pack: 1 - freeAfter/scale, spread: freeAfter/scale, where scale is the
// largest effective memory of any node) plus SoftAffinityWeight per soft
// rule kept (minus per soft rule broken) minus the owner-spread penalty.
// Ties go to the smallest node ID.
func Place(snap *Snapshot, req Request, opts Options) (Decision, error) {
	if err := validateRequest(req); err != nil {
		return Decision{}, err
	}
	snap.mu.RLock()
	defer snap.mu.RUnlock()
	p := snap.newPlacement(req, opts)
	p.indexed()
	if len(p.top.c) == 0 {
		p = snap.newPlacement(req, opts)
		p.scan()
		return p.decision(), p.failure()
	}
	return p.decision(), nil
}

// Candidates returns up to k feasible nodes, best first, so a committer can
// fall back to the next after losing a race. Errors are as for Place.
func Candidates(snap *Snapshot, req Request, opts Options, k int) ([]Candidate, error) {
	opts.Candidates = max(k, 1)
	d, err := Place(snap, req, opts)
	return d.Candidates, err
}

func validateRequest(req Request) error {
	switch {
	case req.MemoryMiB < 0 || req.DiskMiB < 0:
		return errInvalid("placement request has negative memory or disk (%d MiB, %d MiB)",
			req.MemoryMiB, req.DiskMiB)
	case req.VCPUs < 0 || math.IsNaN(req.VCPUs) || math.IsInf(req.VCPUs, 0):
		return errInvalid("placement request has an invalid vCPU count %v", req.VCPUs)
	}
	return nil
}

// placement is one Place call's working state; the snapshot's read lock is
// held throughout.
type placement struct {
	s      *Snapshot
	req    Request
	spread bool
	scale  float64

	// required is the set of nodes every strict "==" rule allows; nil when
	// there is no such rule. requiredBy says which rule fails for a node.
	required   map[string]bool
	requiredBy []ruleNodes
	forbidden  map[string]string // node -> strict "!=" rule that excludes it
	bonus      map[string]float64
	positive   []string // nodes with a positive bonus
	visited    map[string]bool

	top        topK
	considered int
	feasible   int
	rej        map[Reason]int
	affRej     map[string]int
	largest    int64
}

type ruleNodes struct {
	rule  string
	nodes map[string]bool
}

func (s *Snapshot) newPlacement(req Request, opts Options) *placement {
	p := &placement{
		s:       s,
		req:     req,
		spread:  opts.Policy == PolicySpread,
		scale:   float64(max(s.maxMem, 1)),
		top:     topK{k: max(opts.Candidates, 1)},
		rej:     map[Reason]int{},
		largest: math.MinInt64,
	}
	w := opts.OwnerSpreadWeight
	if w == 0 {
		w = DefaultOwnerSpreadWeight
	}
	var owned map[string]*ownerSlot
	oi := s.byOwner[req.OwnerID]
	if oi != nil && req.OwnerID != "" {
		owned = oi.nodes
	}
	if len(owned) > 0 {
		p.bonus = make(map[string]float64, len(owned))
	}
	for _, r := range req.Rules {
		matched := matchNodes(r, oi, owned)
		switch {
		case !r.Soft && r.Operator == OpEqual:
			p.requiredBy = append(p.requiredBy, ruleNodes{r.String(), matched})
			if p.required == nil {
				p.required = matched
			} else {
				for n := range p.required {
					if !matched[n] {
						delete(p.required, n)
					}
				}
			}
		case !r.Soft:
			if p.forbidden == nil {
				p.forbidden = map[string]string{}
			}
			for n := range matched {
				if _, ok := p.forbidden[n]; !ok {
					p.forbidden[n] = r.String()
				}
			}
		default:
			delta := SoftAffinityWeight
			if r.Operator == OpNotEqual {
				delta = -delta
			}
			for n := range matched {
				p.addBonus(n, delta)
			}
		}
	}
	if w > 0 {
		for nodeID, set := range owned {
			n := float64(len(set.residents))
			p.addBonus(nodeID, -w*n/(n+1))
		}
	}
	for n, b := range p.bonus {
		if b > 0 {
			p.positive = append(p.positive, n)
		}
	}
	sort.Strings(p.positive)
	return p
}

// matchNodes returns the nodes holding one of the owner's residents that r
// names: through the exact-match index when the rule allows, else by
// testing each resident.
func matchNodes(r Rule, oi *ownerIndex, owned map[string]*ownerSlot) map[string]bool {
	matched := map[string]bool{}
	if owned == nil {
		return matched
	}
	if keys, ok := r.exactKeys(); ok {
		for _, k := range keys {
			for nodeID := range oi.exact[k] {
				matched[nodeID] = true
			}
		}
		return matched
	}
	for nodeID, set := range owned {
		for _, res := range set.residents {
			if r.Matches(res) {
				matched[nodeID] = true
				break
			}
		}
	}
	return matched
}

func (p *placement) addBonus(node string, d float64) {
	if p.bonus == nil {
		p.bonus = map[string]float64{}
	}
	p.bonus[node] += d
}

// fit is the capacity score of a node with the given free memory.
func (p *placement) fit(free int64) float64 {
	f := float64(free-p.req.MemoryMiB) / p.scale
	if p.spread {
		return f
	}
	return 1 - f
}

// indexed is the fast path: nodes a strict "==" rule allows, or else nodes
// with a positive affinity bonus followed by a walk of each matching class's
// free-memory index in score order, stopping once no further node can enter
// the top k.
func (p *placement) indexed() {
	if p.required != nil {
		ids := make([]string, 0, len(p.required))
		for id := range p.required {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			if e, ok := p.s.nodes[id]; ok {
				p.check(e, true)
			}
		}
		return
	}
	if len(p.positive) > 0 {
		p.visited = map[string]bool{}
		for _, id := range p.positive {
			p.visited[id] = true
			if e, ok := p.s.nodes[id]; ok {
				p.check(e, true)
			}
		}
	}
	for r, n := range p.s.unschedulable {
		if n > 0 {
			p.rej[r] += n
		}
	}
	for _, c := range p.s.classes {
		switch {
		case !brandOK(c.brands, p.req.Brand):
			p.rej[ReasonBrand] += c.index.n
			continue
		case !traitsOK(c.traits, p.req.Traits):
			p.rej[ReasonTraits] += c.index.n
			continue
		}
		p.largest = max(p.largest, c.index.last().free)
		if p.spread {
			p.walkSpread(&c.index)
		} else {
			p.walkPack(&c.index)
		}
	}
}

func (p *placement) walkPack(x *freeIndex) {
	for n := x.seek(p.req.MemoryMiB, ""); n != nil; n = n.next[0] {
		if !p.top.canBeat(p.fit(n.free), n.id) {
			return
		}
		if !p.visited[n.id] {
			p.check(n.e, false)
		}
	}
}

// walkSpread visits nodes by free memory descending and, within equal free
// memory, by ID ascending, so that ties resolve as in the scan.
func (p *placement) walkSpread(x *freeIndex) {
	cur := x.last()
	for cur != nil && cur.free >= p.req.MemoryMiB {
		free := cur.free
		g := cur
		if g.prev != nil && g.prev.free == free {
			g = x.seek(free, "") // several nodes share this free memory: start at the smallest ID
		}
		for n := g; n != nil && n.free == free; n = n.next[0] {
			if !p.top.canBeat(p.fit(free), n.id) {
				return
			}
			if !p.visited[n.id] {
				p.check(n.e, false)
			}
		}
		cur = g.prev
	}
}

// scan examines every node; it explains failures and is the reference the
// indexed path is tested against.
func (p *placement) scan() {
	for _, e := range p.s.nodes {
		p.check(e, true)
	}
}

// check applies the filters to one node and offers it to the top k if it
// passes. Static filters are skipped for nodes reached through a class that
// already passed them.
func (p *placement) check(e *entry, static bool) {
	p.considered++
	n := &e.node
	if static {
		if ok, r := Eligible(*n, p.req); !ok {
			p.rej[r]++
			return
		}
		p.largest = max(p.largest, n.FreeMemoryMiB())
	}
	if p.req.ExcludeNodes[n.ID] {
		p.rej[ReasonExcluded]++
		return
	}
	if p.required != nil && !p.required[n.ID] {
		for _, rn := range p.requiredBy {
			if !rn.nodes[n.ID] {
				p.rejectAffinity(rn.rule)
				return
			}
		}
	}
	if rule, ok := p.forbidden[n.ID]; ok {
		p.rejectAffinity(rule)
		return
	}
	if ok, r := Fits(*n, p.req); !ok {
		p.rej[r]++
		return
	}
	p.feasible++
	free := n.FreeMemoryMiB()
	p.top.offer(Candidate{
		NodeID:        n.ID,
		Hostname:      n.Hostname,
		Score:         p.fit(free) + p.bonus[n.ID],
		FreeMemoryMiB: free,
	})
}

func (p *placement) rejectAffinity(rule string) {
	p.rej[ReasonAffinity]++
	if p.affRej == nil {
		p.affRej = map[string]int{}
	}
	p.affRej[rule]++
}

func (p *placement) decision() Decision {
	d := Decision{
		InstanceID: p.req.InstanceID,
		Policy:     PolicyPack,
		Request: RequestInfo{
			MemoryMiB: p.req.MemoryMiB,
			DiskMiB:   p.req.DiskMiB,
			VCPUs:     p.req.VCPUs,
			Brand:     p.req.Brand,
		},
		TotalNodes:         len(p.s.nodes),
		Considered:         p.considered,
		Feasible:           p.feasible,
		AffinityRejections: p.affRej,
		Candidates:         p.top.c,
	}
	if p.spread {
		d.Policy = PolicySpread
	}
	for _, r := range p.req.Rules {
		d.Request.Rules = append(d.Request.Rules, r.String())
	}
	for r, n := range p.rej {
		if n > 0 {
			if d.Rejections == nil {
				d.Rejections = map[Reason]int{}
			}
			d.Rejections[r] = n
		}
	}
	if p.largest != math.MinInt64 {
		d.LargestFreeMemoryMiB = max(p.largest, 0)
	}
	if len(p.top.c) > 0 {
		d.NodeID = p.top.c[0].NodeID
		d.Hostname = p.top.c[0].Hostname
		d.Score = p.top.c[0].Score
	}
	return d
}

func (p *placement) failure() error {
	d := p.decision()
	if d.TotalNodes == 0 {
		return errNoFit("no compute nodes are available to the scheduler")
	}
	return errNoFit("no node can take %s: %s",
		d.Request.describe(), d.rejectionText())
}

func (r RequestInfo) describe() string {
	return fmt.Sprintf("%d MiB memory, %d MiB disk, %s vCPUs", r.MemoryMiB, r.DiskMiB, formatVCPU(r.VCPUs))
}

func formatVCPU(v float64) string { return strings.TrimSuffix(fmt.Sprintf("%.3g", v), ".0") }

// rejectionText lists the rejection counts, largest concern first.
func (d Decision) rejectionText() string {
	var parts []string
	first := true
	nodes := func(n int) string {
		defer func() { first = false }()
		switch {
		case !first:
			return fmt.Sprint(n)
		case n == 1:
			return "1 node"
		}
		return fmt.Sprintf("%d nodes", n)
	}
	verb := func(n int, one, many string) string {
		if n == 1 {
			return one
		}
		return many
	}
	for _, r := range reasonOrder {
		n := d.Rejections[r]
		if n == 0 {
			continue
		}
		switch r {
		case ReasonMemory:
			parts = append(parts, fmt.Sprintf("%s %s memory (largest free %d MiB)", nodes(n), verb(n, "lacks", "lack"), d.LargestFreeMemoryMiB))
		case ReasonDisk:
			parts = append(parts, fmt.Sprintf("%s %s disk", nodes(n), verb(n, "lacks", "lack")))
		case ReasonVCPU:
			parts = append(parts, fmt.Sprintf("%s %s vCPUs", nodes(n), verb(n, "lacks", "lack")))
		case ReasonInstanceCount:
			parts = append(parts, fmt.Sprintf("%s %s at the instance limit", nodes(n), verb(n, "is", "are")))
		case ReasonAffinity:
			rules := make([]string, 0, len(d.AffinityRejections))
			for rule := range d.AffinityRejections {
				rules = append(rules, rule)
			}
			sort.Strings(rules)
			for _, rule := range rules {
				parts = append(parts, fmt.Sprintf("%s excluded by %s", nodes(d.AffinityRejections[rule]), rule))
			}
		case ReasonBrand:
			parts = append(parts, fmt.Sprintf("%s cannot run brand %s", nodes(n), d.Request.Brand))
		case ReasonTraits:
			parts = append(parts, fmt.Sprintf("%s %s the requested traits", nodes(n), verb(n, "lacks", "lack")))
		case ReasonExcluded:
			parts = append(parts, fmt.Sprintf("%s already tried", nodes(n)))
		default:
			parts = append(parts, fmt.Sprintf("%s %s", nodes(n), r))
		}
	}
	if len(parts) == 0 {
		return "no node was examined"
	}
	return strings.Join(parts, ", ")
}

// Explain describes the decision for a person, e.g. for
// `flotilla admin placement`.
func (d Decision) Explain() string {
	var b strings.Builder
	if d.NodeID == "" {
		fmt.Fprintf(&b, "not placed: no node can take %s", d.Request.describe())
	} else {
		host := ""
		if d.Hostname != "" {
			host = " (" + d.Hostname + ")"
		}
		fmt.Fprintf(&b, "placed on node %s%s with score %.4f", d.NodeID, host, d.Score)
	}
	if d.InstanceID != "" {
		fmt.Fprintf(&b, "\ninstance: %s", d.InstanceID)
	}
	fmt.Fprintf(&b, "\nrequest: %s", d.Request.describe())
	if d.Request.Brand != "" {
		fmt.Fprintf(&b, ", brand %s", d.Request.Brand)
	}
	if len(d.Request.Rules) > 0 {
		fmt.Fprintf(&b, ", affinity %s", strings.Join(d.Request.Rules, " "))
	}
	fmt.Fprintf(&b, "\npolicy: %s; %d nodes known, %d examined, %d feasible",
		d.Policy, d.TotalNodes, d.Considered, d.Feasible)
	if len(d.Rejections) > 0 {
		fmt.Fprintf(&b, "\nrejected: %s", d.rejectionText())
	}
	fmt.Fprintf(&b, "\nlargest free memory: %d MiB", d.LargestFreeMemoryMiB)
	for i, c := range d.Candidates {
		if i == 0 {
			b.WriteString("\nranking:")
		}
		fmt.Fprintf(&b, "\n  %d. %s score %.4f, %d MiB free", i+1, c.NodeID, c.Score, c.FreeMemoryMiB)
	}
	return b.String()
}

// topK keeps the k best candidates, best first: higher score, then smaller
// node ID.
type topK struct {
	k int
	c []Candidate
}

func better(as float64, aid string, bs float64, bid string) bool {
	return as > bs || as == bs && aid < bid
}

// canBeat reports whether a node scoring at most score could still enter.
func (t *topK) canBeat(score float64, id string) bool {
	if len(t.c) < t.k {
		return true
	}
	last := t.c[len(t.c)-1]
	return better(score, id, last.Score, last.NodeID)
}

func (t *topK) offer(c Candidate) {
	if !t.canBeat(c.Score, c.NodeID) {
		return
	}
	i := sort.Search(len(t.c), func(i int) bool { return better(c.Score, c.NodeID, t.c[i].Score, t.c[i].NodeID) })
	if len(t.c) < t.k {
		t.c = append(t.c, Candidate{})
	}
	copy(t.c[i+1:], t.c[i:])
	t.c[i] = c
}

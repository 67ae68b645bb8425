// Package scheduler chooses a compute node for an instance: hard filters
// (node up, not drained or reserved, brand, traits, capacity, strict affinity)
// then scorers (pack or spread on memory, soft affinity, spreading one owner's
// instances), over an in-memory Snapshot indexed on free memory so that a
// placement costs O(log n + k) rather than a scan of every node. Every
// Decision records why it was made, and a failed placement says which
// constraints failed.
//
// The scheduler is pure: no SQL, no HTTP, no goroutines. The database commit
// re-checks capacity with Fits' arithmetic and strict affinity under a lock,
// so a stale snapshot costs a retry on the next candidate, never correctness.
//
// Imports: standard library only (errors classify themselves for errdefs
// through ErrorCode; see errors.go). It never imports store or
// the API packages.
package scheduler

import "math"

// Node states the scheduler knows about; only NodeRunning takes placements.
const (
	NodeRunning = "running"
	NodeOffline = "offline"
)

// Resources is an amount of each resource the scheduler accounts for.
// In a node's Capacity, Instances is the maximum number of instances (0 means
// no limit); in Used and in deltas it is a count.
type Resources struct {
	MemoryMiB int64   `json:"memory_mib"`
	DiskMiB   int64   `json:"disk_mib"`
	VCPUs     float64 `json:"vcpus"`
	Instances int     `json:"instances"`
}

// Ratios are a node's overprovisioning factors per resource. Zero (or a
// negative or NaN value) means 1.0. The caller picks defaults, e.g. Triton's
// vCPU 4.0, memory 1.0, disk 1.0.
type Ratios struct {
	Memory float64 `json:"memory"`
	Disk   float64 `json:"disk"`
	VCPU   float64 `json:"vcpu"`
}

// Node is what the scheduler knows of a compute node.
type Node struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname,omitempty"`
	State    string `json:"state"` // NodeRunning, NodeOffline, ...
	Drained  bool   `json:"drained,omitempty"`
	Reserved bool   `json:"reserved,omitempty"`
	// Brands the node's drivers can run (driver.BrandContainer, ...).
	Brands []string `json:"brands,omitempty"`
	// Traits are operator-set attributes; values are JSON values (string,
	// bool, float64, or an array of them).
	Traits   map[string]any `json:"traits,omitempty"`
	Capacity Resources      `json:"capacity"`
	Used     Resources      `json:"used"`
	Ratios   Ratios         `json:"ratios"`
}

// Resident is an instance already placed on a node, as affinity rules and
// owner spreading see it.
type Resident struct {
	ID      string         `json:"id"`
	OwnerID string         `json:"owner_id"`
	Name    string         `json:"name,omitempty"`
	Tags    map[string]any `json:"tags,omitempty"`
	NodeID  string         `json:"node_id"`
}

// Request asks for a node for one instance.
type Request struct {
	InstanceID string  `json:"instance_id,omitempty"`
	OwnerID    string  `json:"owner_id,omitempty"`
	Name       string  `json:"name,omitempty"`
	Brand      string  `json:"brand,omitempty"` // empty: any node
	MemoryMiB  int64   `json:"memory_mib"`
	DiskMiB    int64   `json:"disk_mib"`
	VCPUs      float64 `json:"vcpus"`
	// Traits the node must have: each requested trait must equal the node's
	// value; an array on either side means "any of". Node traits the request
	// does not mention are ignored (unlike Triton, which also requires the same
	// set of keys: see triton#263).
	Traits map[string]any `json:"traits,omitempty"`
	Rules  []Rule         `json:"rules,omitempty"`
	// ExcludeNodes are nodes to skip, e.g. ones that already lost a commit race.
	ExcludeNodes map[string]bool `json:"exclude_nodes,omitempty"`
}

// Policy chooses the capacity scorer.
type Policy string

// The policies. The zero value means PolicyPack.
const (
	// PolicyPack prefers the node left with the least free memory (best fit),
	// keeping large holes for large instances.
	PolicyPack Policy = "pack"
	// PolicySpread prefers the node left with the most free memory.
	PolicySpread Policy = "spread"
)

// Reason is why a node was rejected.
type Reason string

// The rejection reasons, in the order filters apply.
const (
	ReasonOffline       Reason = "offline"
	ReasonDrained       Reason = "drained"
	ReasonReserved      Reason = "reserved"
	ReasonBrand         Reason = "brand"
	ReasonTraits        Reason = "traits"
	ReasonExcluded      Reason = "excluded"
	ReasonAffinity      Reason = "affinity"
	ReasonMemory        Reason = "memory"
	ReasonDisk          Reason = "disk"
	ReasonVCPU          Reason = "vcpu"
	ReasonInstanceCount Reason = "instance_count"
)

// reasonOrder lists the reasons in the order messages print them.
var reasonOrder = []Reason{
	ReasonMemory, ReasonDisk, ReasonVCPU, ReasonInstanceCount, ReasonAffinity,
	ReasonBrand, ReasonTraits, ReasonExcluded, ReasonOffline, ReasonDrained, ReasonReserved,
}

func ratio(r float64) float64 {
	if !(r > 0) || math.IsInf(r, 0) {
		return 1
	}
	return r
}

// effective returns floor(capacity * ratio).
func effective(capacity int64, r float64) int64 {
	return int64(math.Floor(float64(capacity) * ratio(r)))
}

// milli converts vCPUs to integer milli-vCPUs, rounding to nearest.
func milli(v float64) int64 { return int64(math.Round(v * 1000)) }

// EffectiveMemoryMiB is floor(Capacity.MemoryMiB * Ratios.Memory).
func (n Node) EffectiveMemoryMiB() int64 { return effective(n.Capacity.MemoryMiB, n.Ratios.Memory) }

// EffectiveDiskMiB is floor(Capacity.DiskMiB * Ratios.Disk).
func (n Node) EffectiveDiskMiB() int64 { return effective(n.Capacity.DiskMiB, n.Ratios.Disk) }

// EffectiveMilliVCPUs is floor(round(Capacity.VCPUs*1000) * Ratios.VCPU).
func (n Node) EffectiveMilliVCPUs() int64 { return effective(milli(n.Capacity.VCPUs), n.Ratios.VCPU) }

// FreeMemoryMiB is the memory still placeable: EffectiveMemoryMiB - Used.MemoryMiB.
func (n Node) FreeMemoryMiB() int64 { return n.EffectiveMemoryMiB() - n.Used.MemoryMiB }

// Fits is the capacity predicate, the same one the database commit applies.
// With eff(c, r) = floor(c * r) computed in float64 (r <= 0 means 1.0) it
// requires, in this order (the first failure is the reason):
//
//	memory:    Used.MemoryMiB + req.MemoryMiB <= eff(Capacity.MemoryMiB, Ratios.Memory)
//	disk:      Used.DiskMiB   + req.DiskMiB   <= eff(Capacity.DiskMiB, Ratios.Disk)
//	vcpu:      m(Used.VCPUs)  + m(req.VCPUs)  <= eff(m(Capacity.VCPUs), Ratios.VCPU)
//	           where m(x) = round(x * 1000), integer milli-vCPUs
//	instances: Used.Instances + 1 <= Capacity.Instances, unless Capacity.Instances is 0
//
// In SQL: used_mem + $mem <= floor(cap_mem::float8 * ratio_mem)::bigint, and so on.
func Fits(node Node, req Request) (ok bool, reason Reason) {
	switch {
	case node.Used.MemoryMiB+req.MemoryMiB > node.EffectiveMemoryMiB():
		return false, ReasonMemory
	case node.Used.DiskMiB+req.DiskMiB > node.EffectiveDiskMiB():
		return false, ReasonDisk
	case milli(node.Used.VCPUs)+milli(req.VCPUs) > node.EffectiveMilliVCPUs():
		return false, ReasonVCPU
	case node.Capacity.Instances > 0 && node.Used.Instances+1 > node.Capacity.Instances:
		return false, ReasonInstanceCount
	}
	return true, ""
}

// Eligible applies the filters that do not depend on usage or on other
// instances: the node is running, not drained, not reserved, runs the
// requested brand and has the requested traits. The first failure is the
// reason.
func Eligible(node Node, req Request) (ok bool, reason Reason) {
	switch r := stateReason(node); {
	case r != "":
		return false, r
	case !brandOK(node.Brands, req.Brand):
		return false, ReasonBrand
	case !traitsOK(node.Traits, req.Traits):
		return false, ReasonTraits
	}
	return true, ""
}

func stateReason(n Node) Reason {
	switch {
	case n.State != NodeRunning:
		return ReasonOffline
	case n.Drained:
		return ReasonDrained
	case n.Reserved:
		return ReasonReserved
	}
	return ""
}

func brandOK(brands []string, want string) bool {
	if want == "" {
		return true
	}
	for _, b := range brands {
		if b == want {
			return true
		}
	}
	return false
}

func traitsOK(have, want map[string]any) bool {
	for k, w := range want {
		h, ok := have[k]
		if !ok || !traitValueMatch(h, w) {
			return false
		}
	}
	return true
}

// traitValueMatch compares two trait values type-exactly (true never equals
// "true"); an array on either side matches if any element matches.
func traitValueMatch(h, w any) bool {
	if hs, ok := h.([]any); ok {
		for _, x := range hs {
			if traitValueMatch(x, w) {
				return true
			}
		}
		return false
	}
	if ws, ok := w.([]any); ok {
		for _, x := range ws {
			if traitValueMatch(h, x) {
				return true
			}
		}
		return false
	}
	if hs, ok := h.([]string); ok {
		for _, x := range hs {
			if traitValueMatch(x, w) {
				return true
			}
		}
		return false
	}
	if ws, ok := w.([]string); ok {
		for _, x := range ws {
			if traitValueMatch(h, x) {
				return true
			}
		}
		return false
	}
	switch hv := h.(type) {
	case string:
		wv, ok := w.(string)
		return ok && hv == wv
	case bool:
		wv, ok := w.(bool)
		return ok && hv == wv
	}
	hf, ok1 := number(h)
	wf, ok2 := number(w)
	return ok1 && ok2 && hf == wf
}

func number(v any) (float64, bool) {
	switch t := v.(type) {
	case float64:
		return t, true
	case float32:
		return float64(t), true
	case int:
		return float64(t), true
	case int64:
		return float64(t), true
	}
	return 0, false
}

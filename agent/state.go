package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// StateFileName is the file in the data dir that records what the agent has
// applied to each instance.
const StateFileName = "instances.json"

// resources are the parts of a spec that a resize changes.
type resources struct {
	MemoryMiB int64   `json:"memory_mib"`
	DiskMiB   int64   `json:"disk_mib"`
	VCPUs     float64 `json:"vcpus"`
	CPUShares int64   `json:"cpu_shares"`
	PIDsLimit int64   `json:"pids_limit"`
	// Disks is driver.DiskSet of a VM's data disks.
	Disks string `json:"disks,omitempty"`
}

func resourcesOf(s driver.Spec) resources {
	return resources{MemoryMiB: s.MemoryMiB, DiskMiB: s.DiskMiB, VCPUs: s.VCPUs, CPUShares: s.CPUShares, PIDsLimit: s.PIDsLimit,
		Disks: driver.DiskSet(s.Disks)}
}

// applied is what the agent has done to one instance. It survives agent
// restarts so that a restart neither reboots again nor restarts a workload
// that exited on its own.
type applied struct {
	// Generation is the last generation converged.
	Generation int64 `json:"generation"`
	// StartedGeneration is the generation at which the agent last started
	// the instance because it was desired running; an instance that exits
	// afterwards is left stopped (unless its restart policy says otherwise)
	// until a newer generation asks for it to run.
	StartedGeneration int64 `json:"started_generation"`
	// RebootCount is the highest reboot count applied.
	RebootCount int64 `json:"reboot_count"`
	// Restarts counts restarts made for the restart policy.
	Restarts  int       `json:"restarts"`
	Resources resources `json:"resources"`
	// NICs is driver.NICSet of the NICs applied.
	NICs string `json:"nics,omitempty"`
	// RestoreCount is the highest start-from-snapshot count applied.
	RestoreCount int64 `json:"restore_count,omitempty"`
	// Migrated marks an instance created here with a disk a migration
	// copied: it ran elsewhere, so never started here it is stopped, not
	// provisioning.
	Migrated bool `json:"migrated,omitempty"`
}

// stateStore keeps the applied records in memory and in DataDir, writing
// with group commit: a durable Put returns once a write covering it has
// finished, and concurrent Puts share one write. A lazy Put is written by a
// write shortly after (flushDelay), for records whose loss is harmless
// because adoption derives the same record.
type stateStore struct {
	path string

	mu      sync.Mutex
	records map[string]applied
	encoded map[string][]byte
	seq     uint64
	flushAt *time.Timer // pending lazy flush

	wmu     sync.Mutex
	cond    *sync.Cond
	saved   uint64
	writing bool
}

func openStateStore(dataDir string) (*stateStore, error) {
	s := &stateStore{
		path:    filepath.Join(dataDir, StateFileName),
		records: map[string]applied{},
		encoded: map[string][]byte{},
	}
	s.cond = sync.NewCond(&s.wmu)
	b, err := os.ReadFile(s.path)
	if os.IsNotExist(err) {
		return s, nil
	}
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "agent: read %s", s.path)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "agent: %s is corrupt; remove it and the agent will adopt instances as they are", s.path)
	}
	for id, r := range raw {
		var ap applied
		if err := json.Unmarshal(r, &ap); err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "agent: %s: record %s is corrupt", s.path, id)
		}
		s.records[id] = ap
		s.encoded[id] = r
	}
	return s, nil
}

// Get returns the record of id.
func (s *stateStore) Get(id string) (applied, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ap, ok := s.records[id]
	return ap, ok
}

// IDs returns the ids with a record.
func (s *stateStore) IDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.records))
	for id := range s.records {
		ids = append(ids, id)
	}
	return ids
}

// flushDelay is how long a lazy change may wait for its write.
const flushDelay = 50 * time.Millisecond

// Put stores the record of id. With durable it returns once the record is
// on disk; otherwise it is written within flushDelay. An unchanged record
// costs nothing.
func (s *stateStore) Put(id string, ap applied, durable bool) error {
	s.mu.Lock()
	if old, ok := s.records[id]; ok && old == ap {
		s.mu.Unlock()
		return nil
	}
	b, err := json.Marshal(ap)
	if err != nil {
		s.mu.Unlock()
		return errdefs.Wrap(errdefs.Internal, err, "agent: encode state of %s", id)
	}
	s.records[id] = ap
	s.encoded[id] = b
	return s.changed(durable)
}

// Delete forgets id, lazily: a stale record of a removed instance is harmless.
func (s *stateStore) Delete(id string) error {
	s.mu.Lock()
	if _, ok := s.records[id]; !ok {
		s.mu.Unlock()
		return nil
	}
	delete(s.records, id)
	delete(s.encoded, id)
	return s.changed(false)
}

// changed counts a change; it is called with s.mu held and releases it.
func (s *stateStore) changed(durable bool) error {
	s.seq++
	seq := s.seq
	if durable {
		s.mu.Unlock()
		return s.wait(seq)
	}
	if s.flushAt == nil {
		s.flushAt = time.AfterFunc(flushDelay, func() {
			s.mu.Lock()
			s.flushAt = nil
			seq := s.seq
			s.mu.Unlock()
			s.wait(seq) // a failure is retried by the next durable change or Flush
		})
	}
	s.mu.Unlock()
	return nil
}

// Flush writes every change made so far.
func (s *stateStore) Flush() error {
	s.mu.Lock()
	seq := s.seq
	if s.flushAt != nil {
		s.flushAt.Stop()
		s.flushAt = nil
	}
	s.mu.Unlock()
	return s.wait(seq)
}

func (s *stateStore) snapshot() ([]byte, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	size := 2
	for id, b := range s.encoded {
		size += len(id) + len(b) + 4
	}
	buf := make([]byte, 0, size)
	buf = append(buf, '{')
	first := true
	for id, b := range s.encoded {
		if !first {
			buf = append(buf, ',')
		}
		first = false
		key, _ := json.Marshal(id) // a string always encodes
		buf = append(buf, key...)
		buf = append(buf, ':')
		buf = append(buf, b...)
	}
	buf = append(buf, '}')
	return buf, s.seq
}

// wait returns once change seq is on disk, writing it if no write is under way.
func (s *stateStore) wait(seq uint64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for s.saved < seq {
		if s.writing {
			s.cond.Wait()
			continue
		}
		s.writing = true
		s.wmu.Unlock()
		b, covered := s.snapshot()
		err := writeFileAtomic(s.path, b, 0o600)
		s.wmu.Lock()
		s.writing = false
		s.cond.Broadcast()
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "agent: save %s", s.path)
		}
		s.saved = max(s.saved, covered)
	}
	return nil
}

func (r resources) String() string {
	s := fmt.Sprintf("memory=%dMiB disk=%dMiB vcpus=%g", r.MemoryMiB, r.DiskMiB, r.VCPUs)
	if r.Disks != "" {
		s += " disks=" + r.Disks
	}
	return s
}

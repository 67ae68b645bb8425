// Package wire holds the JSON types of the agent API: the internal HTTP API
// between the control plane (api/agentapi) and the agents on compute nodes
// (agent). Both sides import it; it imports only agent/driver and fwrule.
//
// Routes (all under /agent/v1, JSON bodies, errors as {"code","message"}):
//
//	POST /agent/v1/nodes/register            Authorization: Bearer <join token>
//	     body RegisterRequest -> 200 RegisterResponse
//	     Registering an existing node name with a valid join token rotates its credential.
//	POST /agent/v1/nodes/{node}/heartbeat    Authorization: Bearer <node credential>
//	     body Heartbeat -> 204
//	GET  /agent/v1/nodes/{node}/assignments?since=REV&wait=SECONDS
//	     -> 200 Assignments. since=0 returns the full set (Full=true); otherwise
//	     the instances whose generation changed after REV. Long-polls up to
//	     wait seconds (default 30, max 60) when nothing changed; answers with
//	     an empty list and the same revision on timeout.
//	GET  /agent/v1/nodes/{node}/names?since=REV&wait=SECONDS
//	     -> 200 Names: the names the node's resolver answers (every running
//	     instance on the networks, and of the accounts, that the node hosts).
//	     Long-polls like assignments while the table's revision is still REV.
//	GET  /agent/v1/nodes/{node}/firewall?since=REV&wait=SECONDS
//	     -> 200 Firewall: the node's instances with their NICs, whether
//	     their firewall is on, and their accounts' rules resolved to
//	     addresses for each. Long-polls like names while its revision is REV.
//	PUT  /agent/v1/instances/{id}/status     body InstanceStatus -> 204
//	     A node may only report instances assigned to it (404 otherwise).
//
// A node's credential grants access to that node's routes only (403 for
// another node's).
package wire

import (
	"time"

	"flotilla/agent/driver"
	"flotilla/fwrule"
)

// RegisterRequest is sent once by a new agent (and again when it has lost its credential).
type RegisterRequest struct {
	Name      string         `json:"name"`
	Hostname  string         `json:"hostname"`
	Driver    string         `json:"driver"`            // "sim", "runc", "qemu", "runc,qemu"
	Brands    []string       `json:"brands"`            // brands it can run
	MemoryMiB int64          `json:"memory_mib"`        // capacity
	DiskMiB   int64          `json:"disk_mib"`          // capacity
	VCPUs     float64        `json:"vcpus"`             // capacity
	Traits    map[string]any `json:"traits,omitempty"`  // e.g. {"accel":"tcg"}
	Address   string         `json:"address,omitempty"` // where the agent serves streams, host:port
	// StreamToken is the bearer token the control plane must send to the
	// agent's stream API (see streams.go); the agent keeps it in its data dir.
	StreamToken string `json:"stream_token,omitempty"`
	// CurrentCredential is the node's credential from an earlier
	// registration, if the agent has one: it proves that the agent owns the
	// node of that name, which may then be registered again without an
	// operator's approval.
	CurrentCredential string `json:"current_credential,omitempty"`
	Cgroups
}

// Cgroups is the node's cgroup hierarchy, empty when its driver uses none:
// version "1" or "2", driver "cgroupfs" or "systemd".
type Cgroups struct {
	CgroupVersion string `json:"cgroup_version,omitempty"`
	CgroupDriver  string `json:"cgroup_driver,omitempty"`
}

// RegisterResponse carries the node's id and its credential, which the agent
// keeps in its data dir and sends as a bearer token from then on.
type RegisterResponse struct {
	NodeID     string `json:"node_id"`
	Credential string `json:"credential"`
}

// Heartbeat says the node is alive and what it currently offers.
type Heartbeat struct {
	MemoryMiB int64          `json:"memory_mib"`
	DiskMiB   int64          `json:"disk_mib"`
	VCPUs     float64        `json:"vcpus"`
	Brands    []string       `json:"brands,omitempty"`
	Traits    map[string]any `json:"traits,omitempty"`
	Address   string         `json:"address,omitempty"`
	Running   int            `json:"running"` // instances the driver reports running
	// UnderlayIP is the node's address for VXLAN traffic between nodes
	// (fabric networks); empty keeps fabrics on the node.
	UnderlayIP string `json:"underlay_ip,omitempty"`
	Cgroups
}

// Desired states.
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
	DesiredDeleted = "deleted"
)

// Assignment is the desired state of one instance on the node.
type Assignment struct {
	ID           string `json:"id"`
	Generation   int64  `json:"generation"`
	DesiredState string `json:"desired_state"`
	// RebootCount increments on every reboot request; the agent reboots
	// the instance when it sees a count higher than the one it applied.
	RebootCount int64       `json:"reboot_count"`
	Spec        driver.Spec `json:"spec"`
	// Snapshots are the instance's snapshots the node must hold (desired
	// "present") or remove ("deleted"), with the state the control plane
	// last recorded: the node takes a snapshot only while it is "creating".
	Snapshots []SnapshotWant `json:"snapshots,omitempty"`
	// RestoreCount increments on every start from a snapshot; the agent
	// stops the instance, restores RestoreSnapshot and starts it when it
	// sees a count higher than the one it applied.
	RestoreCount    int64  `json:"restore_count,omitempty"`
	RestoreSnapshot string `json:"restore_snapshot,omitempty"`
	// ImportDisk says that a migration moves the instance onto this node:
	// the node creates it with the disk the control plane copied to the
	// node's stream server (PUT .../migration/disk), never with an empty one.
	ImportDisk bool `json:"import_disk,omitempty"`
}

// Snapshot desires.
const (
	SnapshotPresent = "present"
	SnapshotDeleted = "deleted"
)

// SnapshotWant is one snapshot of an instance as the control plane wants it.
type SnapshotWant struct {
	Name    string `json:"name"`
	Desired string `json:"desired"` // SnapshotPresent or SnapshotDeleted
	State   string `json:"state"`   // creating, created or failed
}

// SnapshotStatus is what the node observes of one snapshot: "created"
// (on the node), "failed" (Error says why) or "deleted" (gone, as asked).
type SnapshotStatus struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	Error     string `json:"error,omitempty"`
	SizeBytes int64  `json:"size_bytes,omitempty"`
}

// Assignments is the answer to a poll.
type Assignments struct {
	Revision    int64        `json:"revision"`
	Full        bool         `json:"full"`
	Assignments []Assignment `json:"assignments"`
	// Peers are the underlay addresses of the other running nodes: every
	// fabric's VXLAN device floods to them. Sent with every answer.
	Peers []string `json:"peers,omitempty"`
}

// InstanceStatus is the agent's report of what it observes.
type InstanceStatus struct {
	ObservedGeneration int64     `json:"observed_generation"`
	RebootCount        int64     `json:"reboot_count"` // the reboot count applied so far
	State              string    `json:"state"`        // driver.State* or "deleted"
	ExitCode           *int      `json:"exit_code,omitempty"`
	StartedAt          time.Time `json:"started_at,omitzero"`
	FinishedAt         time.Time `json:"finished_at,omitzero"`
	Error              string    `json:"error,omitempty"`
	Restarts           int       `json:"restarts"`
	// Snapshots report every snapshot the assignment names.
	Snapshots []SnapshotStatus `json:"snapshots,omitempty"`
	// RestoreCount is the restore count applied so far.
	RestoreCount int64 `json:"restore_count,omitempty"`
	// Health is a container's health check state: set for a container
	// with a health check once it has started.
	Health *Health `json:"health,omitempty"`
}

// Health is a container's health as Docker defines it.
type Health struct {
	Status        string `json:"status"` // HealthStarting, HealthHealthy or HealthUnhealthy
	FailingStreak int    `json:"failing_streak"`
	// Log holds the latest probes, oldest first (at most HealthLogSize).
	Log []HealthResult `json:"log,omitempty"`
}

// HealthResult is one probe: its times, exit code (-1 when it could not
// run or timed out) and the start of its output.
type HealthResult struct {
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	ExitCode int       `json:"exit_code"`
	Output   string    `json:"output"`
}

// Health statuses.
const (
	HealthStarting  = "starting"
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// HealthLogSize is how many probes a Health keeps; HealthOutputMax bounds
// the output kept of each (Docker's limits).
const (
	HealthLogSize   = 5
	HealthOutputMax = 4096
)

// StateDeleted is reported once an instance desired "deleted" is gone from the node.
const StateDeleted = "deleted"

// Names is the table of names a node's resolver answers: for every network
// the node has instances on, the running instances of the same accounts on
// it. A client on a network sees only its own account's records.
type Names struct {
	// Revision identifies the table's content; polling with it waits for a
	// different table.
	Revision string        `json:"revision"`
	Networks []NameNetwork `json:"networks"`
	Records  []NameRecord  `json:"records"`
	// CNS, when set, is where names under its suffix are forwarded.
	CNS *CNS `json:"cns,omitempty"`
}

// NameNetwork is a network the node serves names on, at its gateway.
type NameNetwork struct {
	ID      string `json:"id"`
	Gateway string `json:"gateway"`
	Subnet  string `json:"subnet"`
	// VNI, when not zero, is the fabric VLAN whose router namespace holds
	// the gateway on the node.
	VNI int `json:"vni,omitempty"`
}

// NameRecord is one instance's address on a network and its names there
// (the instance name first, then Docker network aliases).
type NameRecord struct {
	NetworkID  string   `json:"network_id"`
	OwnerID    string   `json:"owner_id"`
	InstanceID string   `json:"instance_id"`
	Names      []string `json:"names"`
	IP         string   `json:"ip"`
}

// CNS locates the control plane's CNS server.
type CNS struct {
	Suffix  string `json:"suffix"`
	Address string `json:"address"` // host:port
}

// Firewall is what a node enforces: every live instance assigned to it.
// Anti-spoofing applies to every NIC; Entries apply only when Enabled.
type Firewall struct {
	// Revision identifies the content; polling with it waits for a change.
	Revision  string             `json:"revision"`
	Instances []FirewallInstance `json:"instances"`
}

// FirewallInstance is one instance's part of the node's firewall.
type FirewallInstance struct {
	ID      string        `json:"id"`
	Enabled bool          `json:"enabled"`
	NICs    []FirewallNIC `json:"nics"`
	// Entries are the account's rules (and the instance's published ports)
	// resolved for this instance, in enforcement order.
	Entries []fwrule.Entry `json:"entries,omitempty"`
}

// FirewallNIC is a NIC in position order: the only MAC and IP it may send from.
type FirewallNIC struct {
	Index   int    `json:"index"`
	Primary bool   `json:"primary"`
	MAC     string `json:"mac"`
	IP      string `json:"ip"`
}

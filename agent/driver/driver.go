// Package driver defines the interface between the agent's reconcile loop and
// the things that actually run workloads on a node (sim, runc, qemu).
//
// Imports: standard library, api/errdefs and go-containerregistry's v1 types
// only. It never imports store or the agent loop; drivers live in
// subpackages and are chosen explicitly in cmd.
package driver

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// States a driver reports. They are CloudAPI's instance states.
const (
	StateProvisioning = "provisioning"
	StateRunning      = "running"
	StateStopping     = "stopping"
	StateStopped      = "stopped"
	StateFailed       = "failed"
)

// Brands: what kind of workload an instance is.
const (
	BrandContainer = "joyent-minimal" // OCI container under runc (or sim)
	BrandLX        = "lx"
	BrandBhyve     = "bhyve" // QEMU virtual machine
	BrandKVM       = "kvm"   // QEMU virtual machine
)

// NIC is one network interface of an instance, with the address the control
// plane's IPAM allocated for it.
type NIC struct {
	MAC       string // "90:b8:d0:xx:xx:xx"
	IP        string // dotted quad
	PrefixLen int    // e.g. 24
	Gateway   string // may be empty
	NetworkID string
	// Bridge is the Linux bridge on the node that carries this network
	// (e.g. "flt-1a2b3c4d"); Subnet is the network's CIDR.
	Bridge  string
	Subnet  string
	Primary bool
	// NAT asks for outbound masquerading of this network's subnet.
	NAT       bool
	Resolvers []string
	// VNI, when not zero, puts the NIC on a fabric: an account's VLAN
	// (VLANID) that nodes carry between them as VXLAN network VNI. The node
	// plumbs it on its own fabric bridge for the VNI (Bridge is ignored) with
	// the gateway in the VLAN's router namespace.
	VNI    int `json:",omitempty"`
	VLANID int `json:",omitempty"`
}

// DNSConfig is resolv.conf's content: nameservers, search domains and
// options (Docker's --dns, --dns-search, --dns-option).
type DNSConfig struct {
	Nameservers []string `json:"nameservers,omitempty"`
	Search      []string `json:"search,omitempty"`
	Options     []string `json:"options,omitempty"`
}

// ResolvConf renders c as an /etc/resolv.conf file.
func (c DNSConfig) ResolvConf() string {
	var b strings.Builder
	for _, ns := range c.Nameservers {
		b.WriteString("nameserver " + ns + "\n")
	}
	if len(c.Search) > 0 {
		b.WriteString("search " + strings.Join(c.Search, " ") + "\n")
	}
	if len(c.Options) > 0 {
		b.WriteString("options " + strings.Join(c.Options, " ") + "\n")
	}
	return b.String()
}

// RestartPolicy is Docker's restart policy, enforced by the agent.
type RestartPolicy struct {
	Name              string // "", "no", "on-failure", "always", "unless-stopped"
	MaximumRetryCount int
}

// Image says where a workload's image comes from. The agent resolves it to
// a go-containerregistry image through an ImageSource.
type Image struct {
	ID     string // CloudAPI image uuid
	Ref    string // OCI reference served by the control plane, e.g. "images/<id>@sha256:..."
	Digest string // manifest digest, verified on pull
	Type   string // zone-dataset, lx-dataset, docker, zvol
}

// DefaultPIDsLimit bounds the processes and threads of an instance whose
// spec carries no limit (Triton's default package lwps), so that a fork
// bomb in one container cannot exhaust the node's pid space.
const DefaultPIDsLimit = 4000

// Spec is everything a driver needs to create an instance. It is derived from
// the control plane's desired state; drivers must treat it as read-only.
type Spec struct {
	ID        string // instance uuid
	OwnerID   string
	Name      string
	Brand     string
	Image     Image
	MemoryMiB int64
	DiskMiB   int64
	VCPUs     float64 // CPU limit; 0 = unlimited
	CPUShares int64
	PIDsLimit int64 // processes and threads; 0 = DefaultPIDsLimit, never unlimited

	// Process settings (containers). Empty values fall back to the image config.
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
	Hostname   string
	Tty        bool
	OpenStdin  bool
	StdinOnce  bool
	Labels     map[string]string

	// Metadata is the instance's customer metadata (root_authorized_keys,
	// user-script, ...), delivered to VMs.
	Metadata map[string]string

	NICs []NIC
	// Disks are a VM's data disks, in slot order; its boot disk, if any, is
	// the image's disk sized DiskMiB.
	Disks []Disk `json:",omitempty"`
	// DNS is the container's /etc/resolv.conf: the node's resolver on the
	// primary NIC's gateway unless the user chose nameservers (docker --dns).
	DNS     DNSConfig
	Restart RestartPolicy
	// StopSignal is the signal that asks the main process to stop (a Linux
	// signal number; 0 is SIGTERM). StopTimeout, when set, is the grace in
	// seconds before SIGKILL, instead of the agent's default.
	StopSignal  int  `json:",omitempty"`
	StopTimeout *int `json:",omitempty"`
	// Options are a container's Docker run options beyond the image's.
	Options ContainerOptions `json:",omitzero"`
	// Autoboot starts the instance again when its node's agent starts and
	// finds it stopped while it is desired running (a node reboot), as
	// Triton's autoboot does. Docker containers use Restart instead.
	Autoboot bool
	// Healthcheck, when set, is the container's health check, which the
	// agent runs while the container runs.
	Healthcheck *Healthcheck `json:",omitempty"`
}

// Healthcheck is a container's Docker health check with its defaults
// applied: Test is ["CMD", args...] or ["CMD-SHELL", command], run in the
// container every Interval (StartInterval during StartPeriod until the
// first success), failing after Timeout; Retries consecutive failures make
// the container unhealthy.
type Healthcheck struct {
	Test          []string      `json:"test"`
	Interval      time.Duration `json:"interval"`
	Timeout       time.Duration `json:"timeout"`
	StartPeriod   time.Duration `json:"start_period,omitempty"`
	StartInterval time.Duration `json:"start_interval"`
	Retries       int           `json:"retries"`
}

// Docker's health check defaults.
const (
	DefaultHealthInterval      = 30 * time.Second
	DefaultHealthTimeout       = 30 * time.Second
	DefaultHealthStartInterval = 5 * time.Second
	DefaultHealthRetries       = 3
)

// Command is the process a probe runs: CMD-SHELL's command under
// /bin/sh -c (as dockerd runs it), CMD's arguments as they are. It is empty for a test of
// another kind.
func (h Healthcheck) Command() []string {
	if len(h.Test) < 2 {
		return nil
	}
	switch h.Test[0] {
	case "CMD":
		return h.Test[1:]
	case "CMD-SHELL":
		return append([]string{"/bin/sh", "-c"}, h.Test[1:]...)
	}
	return nil
}

// Disk is one data disk of a VM.
type Disk struct {
	ID      string // uuid: names the disk's file on the node and its serial in the guest
	Slot    int    // 1 to 7: the disk's place on the VM (its PCI slot)
	SizeMiB int64
}

// DiskPCISlot is the PCI slot (bus 0, function 0) at which a VM has its
// data disk in slot: 0x18 + slot, clear of the devices placed in order
// before it.
func DiskPCISlot(slot int) int { return 0x18 + slot }

// DiskSet is a stable summary of disks (ids, slots and sizes), to tell
// whether the disks applied to an instance are the ones wanted.
func DiskSet(disks []Disk) string {
	var b strings.Builder
	for _, d := range disks {
		fmt.Fprintf(&b, "%s@%d=%d;", d.ID, d.Slot, d.SizeMiB)
	}
	return b.String()
}

// VMFormatLabel is the image config label that tells a VM image's format:
// "disk" (a bootable qcow2 disk) or "kernel" (a kernel and an initrd, no
// boot disk).
const VMFormatLabel = "io.flotilla.vm.format"

// Status is what a driver observes about one instance.
type Status struct {
	ID         string
	State      string // one of the State* constants
	ExitCode   *int   // set once the main process has exited
	Pid        int
	StartedAt  time.Time
	FinishedAt time.Time
	// Error explains a failed state.
	Error string
	// Restarts counts restarts made by the driver or agent (restart policy).
	Restarts int
}

// ImageSource fetches images for drivers (from the control plane's OCI
// distribution endpoint in production, from memory in tests).
type ImageSource interface {
	Image(ctx context.Context, img Image) (v1.Image, error)
}

// Driver runs instances of some brands on this node. All methods are safe for
// concurrent use on different instance ids; the agent never calls two methods
// for the same id at once. Methods return errdefs NotFound for unknown ids.
type Driver interface {
	// Name is "sim", "runc" or "qemu".
	Name() string
	// Brands lists the brands this driver runs on this node.
	Brands() []string
	// List returns the status of every instance this driver knows about,
	// running or not; the agent adopts them at start.
	List(ctx context.Context) ([]Status, error)
	// Inspect returns the status of one instance.
	Inspect(ctx context.Context, id string) (Status, error)
	// Create prepares an instance (image, disk/rootfs, network) without
	// starting it. Creating an existing id is a no-op.
	Create(ctx context.Context, spec Spec) error
	// Start starts a created or stopped instance. Starting a running one is a no-op.
	Start(ctx context.Context, id string) error
	// Stop asks the workload to stop, waits up to grace, then kills it.
	Stop(ctx context.Context, id string, grace time.Duration) error
	// Delete stops the instance if needed and removes everything it left on
	// the node (processes, network, disks, cgroups). Deleting an unknown id is a no-op.
	Delete(ctx context.Context, id string) error
}

// CgroupReporter is implemented by drivers that put instances in cgroups:
// the node reports what it really has (`docker info` shows it).
type CgroupReporter interface {
	Cgroups() CgroupInfo
}

// CgroupInfo names a node's cgroup hierarchy as Docker does.
type CgroupInfo struct {
	Version string // "1" (v1 or hybrid) or "2" (unified)
	Driver  string // "cgroupfs" or "systemd"
}

// HostInterfacer is implemented by drivers whose instances' NICs appear on
// the node as host-side interfaces on a bridge (veth ends, taps); the node
// firewall filters by these names.
type HostInterfacer interface {
	// HostInterfaces returns, for each NIC of instance id in position order,
	// the names of its host-side interfaces: none for a NIC the driver does
	// not connect.
	HostInterfaces(id string, nics []NICRef) [][]string
}

// NICRef identifies one NIC of an instance for HostInterfaces.
type NICRef struct {
	MAC     string
	Primary bool
}

// Updater is implemented by drivers that can change resources of an existing
// instance (resize).
type Updater interface {
	Update(ctx context.Context, spec Spec) error
}

// NICUpdater is implemented by drivers that can add and remove NICs of an
// existing instance (spec.NICs is the new set), while it runs.
type NICUpdater interface {
	UpdateNICs(ctx context.Context, spec Spec) error
}

// NICSet identifies a set of NICs (MAC, address, network, primary), so
// that the agent can tell when an instance's NICs changed.
func NICSet(nics []NIC) string {
	var b strings.Builder
	for _, n := range nics {
		b.WriteString(n.MAC + "/" + n.IP + "/" + n.NetworkID)
		if n.Primary {
			b.WriteString("/p")
		}
		b.WriteString(";")
	}
	return b.String()
}

// LogOptions select log lines.
type LogOptions struct {
	Stdout, Stderr bool
	Follow         bool
	Since, Until   time.Time
	Tail           int // <0 = all
	Timestamps     bool
}

// LogEntry is one line of output.
type LogEntry struct {
	Time   time.Time
	Stream string // "stdout" or "stderr"
	Line   []byte // including the trailing newline
}

// AttachOptions select the streams of an attach.
type AttachOptions struct {
	Stdin, Stdout, Stderr bool
	Stream                bool
}

// Streams is a live connection to a process's stdio. For a tty, Stdout
// carries all output and Stderr is nil.
type Streams struct {
	Stdin  io.WriteCloser
	Stdout io.Reader
	Stderr io.Reader
	Tty    bool
	// Done is closed when the connection is over (the process exited or the
	// attach was closed).
	Done  <-chan struct{}
	Close func() error
}

// ExecConfig describes a process to run inside a running instance.
type ExecConfig struct {
	Cmd                                     []string
	Env                                     []string
	User                                    string
	WorkingDir                              string
	Tty                                     bool
	AttachStdin, AttachStdout, AttachStderr bool
}

// ExecProcess is a running exec.
type ExecProcess struct {
	Streams
	Pid int
	// Wait blocks until the process exits and returns its exit code.
	Wait func() (int, error)
	// Resize changes the tty size.
	Resize func(h, w uint16) error
}

// Streamer is implemented by drivers that expose process I/O (runc).
type Streamer interface {
	Logs(ctx context.Context, id string, opts LogOptions, out chan<- LogEntry) error
	Attach(ctx context.Context, id string, opts AttachOptions) (*Streams, error)
	Resize(ctx context.Context, id string, h, w uint16) error
	Exec(ctx context.Context, id string, cfg ExecConfig) (*ExecProcess, error)
	// Top lists the processes of the instance (ps-style titles and rows).
	Top(ctx context.Context, id string, psArgs string) ([]string, [][]string, error)
}

// Stats is a resource usage sample.
type Stats struct {
	Time        time.Time
	CPUUsageNs  uint64
	MemoryBytes uint64
	MemoryLimit uint64
	PIDs        uint64
}

// StatsReader is implemented by drivers that can sample resource usage.
type StatsReader interface {
	Stats(ctx context.Context, id string) (Stats, error)
}

// StartOptions change how a driver starts an instance.
type StartOptions struct {
	// Attachers is how many attach streams are on their way (`docker run`
	// attaches before it starts): the process is held until that many have
	// joined, or a few seconds have passed, so none of its input or output
	// is lost.
	Attachers int
}

// AttachStarter is implemented by drivers that can hold a new run until
// its attach streams have joined it.
type AttachStarter interface {
	StartWith(ctx context.Context, id string, opts StartOptions) error
}

// Signaler is implemented by drivers that can deliver signals to an
// instance's main process. Methods return Conflict when it is not running.
type Signaler interface {
	// Signal delivers sig (a Linux signal number) to the main process.
	// With stop, the instance is first marked stopped on purpose, so that
	// its restart policy does not start it again when the signal ends it.
	Signal(ctx context.Context, id string, sig int, stop bool) error
	// StopSignal is Stop with the signal to send first (0: SIGTERM).
	StopSignal(ctx context.Context, id string, sig int, grace time.Duration) error
}

// ContainerOptions are the Docker run options a container driver applies
// (--read-only, --tmpfs, --shm-size, --ulimit, --cap-add, --cap-drop). The
// control plane has checked them; drivers check again and return Invalid.
type ContainerOptions struct {
	ReadOnly bool              `json:",omitempty"` // read-only root filesystem
	Tmpfs    map[string]string `json:",omitempty"` // mount point -> mount options ("size=64m,mode=1777")
	ShmSize  int64             `json:",omitempty"` // bytes of /dev/shm; 0 = 64 MiB
	Ulimits  []Ulimit          `json:",omitempty"`
	CapAdd   []string          `json:",omitempty"` // "NET_ADMIN" form, no CAP_ prefix
	CapDrop  []string          `json:",omitempty"` // or "ALL"
	// Volumes are the account's volumes mounted into the container: each
	// is a directory of the node's own (the driver's data), never a path
	// the caller chose.
	Volumes []VolumeMount `json:",omitempty"`
	// ConsoleHeight and ConsoleWidth size a tty from its first moment
	// (Docker's HostConfig.ConsoleSize), before any resize arrives.
	ConsoleHeight uint `json:",omitempty"`
	ConsoleWidth  uint `json:",omitempty"`
}

// VolumeMount mounts a volume (by id) at Destination in the container.
type VolumeMount struct {
	Volume      string // volume uuid; the storage is the driver's to find
	Name        string `json:",omitempty"` // the volume's name, for inspect
	Destination string // absolute path in the container
	ReadOnly    bool   `json:",omitempty"`
	// SizeMiB is the volume's size, which the control plane fills in from
	// the volume when it assigns the instance: a driver that can enforce
	// it gives the volume a filesystem of that size (0: no limit).
	SizeMiB int64 `json:",omitempty"`
	// Remote is set when the volume's storage lives on another node: the
	// driver mounts that node's share of it (see VolumeSharer) instead of
	// local storage.
	Remote *RemoteVolume `json:",omitempty"`
}

// RemoteVolume locates another node's share of a volume.
type RemoteVolume struct {
	Node    string // the node's id (its stream server's certificate names it)
	Address string // the node's stream server, host:port
	Token   string // the share's bearer token (wire.VolumeShareToken)
	TLS     bool   `json:",omitempty"` // the stream server speaks TLS
}

// ShareUpdater is a driver whose instances mount other nodes' volumes: it
// takes, before a start, the current way to reach them (vols, as the
// control plane gives them now) in place of the one it was created with.
type ShareUpdater interface {
	UpdateShares(ctx context.Context, id string, vols []VolumeMount) error
}

// VolumeSharer is a driver whose volumes other nodes may mount: it returns
// the directory holding volume id's files on this node, making its storage
// (of sizeMiB, when it has a size) if this is its first use.
type VolumeSharer interface {
	VolumeDir(ctx context.Context, id string, sizeMiB int64) (string, error)
}

// VolumeRemover is implemented by drivers that keep volumes' storage on the
// node: a deleted volume's storage is reclaimed.
type VolumeRemover interface {
	// RemoveVolume removes the storage of volume id from the node. It
	// returns Conflict while a container of the node mounts it; removing a
	// volume the node does not have is not an error.
	RemoveVolume(ctx context.Context, id string) error
	// ReleaseVolumes unmounts what the node mounted for volumes that no
	// running container uses, keeping their storage: the next start mounts
	// it again. `flotilla dev` calls it when it stops, to leave nothing
	// mounted on the host.
	ReleaseVolumes(ctx context.Context) error
}

// Ulimit is one resource limit (setrlimit) of a container's processes.
type Ulimit struct {
	Name string // nofile, nproc, core, ... as docker run --ulimit names them
	Soft int64
	Hard int64
}

// Environment of `flotilla volume-pipe` (agent.PipeVolumeShare), the
// transport sshfs runs to reach another node's share of a volume.
const (
	EnvShareAddress = "FLOTILLA_SHARE_ADDRESS" // the volume's node's stream server, host:port
	EnvShareNode    = "FLOTILLA_SHARE_NODE"    // that node's id (its certificate's name)
	EnvShareVolume  = "FLOTILLA_SHARE_VOLUME"  // the volume's id
	EnvShareSize    = "FLOTILLA_SHARE_SIZE"    // its size in MiB
	EnvShareToken   = "FLOTILLA_SHARE_TOKEN"   // wire.VolumeShareToken
	EnvShareCA      = "FLOTILLA_SHARE_CA"      // the node CA's PEM file, when stream servers speak TLS
)

package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// The stream API is the second, smaller HTTP API between the control plane
// and an agent, in the other direction: the agent serves it on its node's
// address (RegisterRequest.Address) and the control plane (api/nodeclient)
// calls it to reach the processes of the node's instances. Every request
// carries "Authorization: Bearer <RegisterRequest.StreamToken>"; errors are
// {"code","message"} with the errdefs code.
//
//	GET  /streams/v1/instances/{id}/logs?stdout=1&stderr=1&follow=1&since=T&until=T&tail=N&timestamps=1&raw=1
//	     -> 200, the selected lines as they are (see Framing); follow keeps
//	     the body open until the main process has exited and its output is drained.
//	     T is Unix seconds with an optional fraction, N is a count or "all".
//	POST /streams/v1/instances/{id}/attach?stdin=1&stdout=1&stderr=1   Upgrade (see Upgrades)
//	     Answers 101 at once, then waits for the process to run (a `docker
//	     run` attaches before it starts) and joins its stdio. The stream ends
//	     when the process exits and its output is drained.
//	POST /streams/v1/instances/{id}/resize?h=ROWS&w=COLS              -> 204
//	GET  /streams/v1/instances/{id}/wait?condition=next-exit|not-running -> 200 WaitResult
//	     Blocks until the condition holds: not-running returns at once when
//	     the main process is not running; next-exit waits for the end of
//	     the current run, or of the next one when none is running. With
//	     after=T (Unix seconds, 0 for never) next-exit also answers at once
//	     when a run that started after T (to the microsecond) has ended.
//	POST /streams/v1/instances/{id}/kill?signal=N&stop=1              -> 204
//	     Delivers signal N to the main process; stop=1 first marks the
//	     instance stopped on purpose (its restart policy leaves it so).
//	POST /streams/v1/instances/{id}/stop?signal=N&t=DURATION          -> 204
//	     Signal N (0: the instance's stop signal), SIGKILL after t; answers
//	     when the process has ended.
//	GET  /streams/v1/instances/{id}/top?ps_args=-ef                   -> 200 TopResult
//	GET  /streams/v1/instances/{id}/stats?stream=1&interval=1s        -> 200 StatsSample per line
//	POST /streams/v1/instances/{id}/exec    body ExecCreate           -> 201 ExecCreated
//	POST /streams/v1/instances/{id}/exec/{exec}/start?h=&w=          Upgrade; or ?detach=1 -> 204
//	POST /streams/v1/instances/{id}/exec/{exec}/resize?h=&w=         -> 204
//	GET  /streams/v1/instances/{id}/exec/{exec}                      -> 200 ExecInfo
//	GET  /streams/v1/instances/{id}/archive/stat?path=P               -> 200 PathStat
//	GET  /streams/v1/instances/{id}/archive?path=P                    -> 200 application/x-tar,
//	     header StreamPathStatHeader (PathStat JSON); a failure after the
//	     headers aborts the connection, so a cut archive is never mistaken
//	     for a whole one.
//	PUT  /streams/v1/instances/{id}/archive?path=DIR&noOverwriteDirNonDir=1  body tar -> 204
//	     P and DIR are absolute paths as the instance sees them; a missing
//	     one is NotFound, a DIR that is not a directory Invalid.
//	GET  /streams/v1/instances/{id}/changes                          -> 200 []Change
//	GET  /streams/v1/instances/{id}/export                           -> 200 application/x-tar,
//	     the whole filesystem
//	GET  /streams/v1/instances/{id}/layer                            -> 200 application/x-tar,
//	     what the instance changed, as an uncompressed OCI layer (whiteouts
//	     for deletions); both tars abort the connection on a failure after
//	     the headers. An instance whose driver keeps no record of its
//	     changes (a VM, a copied rootfs) is NotImplemented.
//	GET    /streams/v1/instances/{id}/migration/disk              -> 200 application/x-tar,
//	       what the instance wrote to its disk, with headers StreamDiskLayerHeader
//	       (its kind) and StreamDiskSizeHeader
//	PUT    /streams/v1/instances/{id}/migration/disk?layer=K  body tar -> 204: stage the
//	       disk of an instance a migration moves onto this node (Assignment.ImportDisk)
//	DELETE /streams/v1/instances/{id}/migration/disk              -> 204: drop it
//	POST   /streams/v1/instances/{id}/migration/release           -> 204: the stopped instance
//	       gives back its host resources, keeping its disk (before it moves away)
//	POST   /streams/v1/instances/{id}/migration/remove            -> 204: remove the node's
//	       copy of an instance that moved away
//	POST   /streams/v1/instances/{id}/migration/discard           -> 204: delete the
//	       instance a failed switch left on this node
//	POST   /streams/v1/volumes/{id}/share?size=MiB                  -> 101, then SFTP (version 3
//	       with OpenSSH's extensions) over the volume's files: another node's
//	       sshfs mounts it for its instances. Its bearer token is
//	       VolumeShareToken(stream token, id), never the stream token
//	DELETE /streams/v1/volumes/{id}                               -> 204: remove a deleted
//	       volume's storage from the node (none there is not an error); Conflict
//	       while a container of the node still mounts it, after waiting a while
//	       for such containers to be deleted
//
// Upgrades: the request has "Connection: Upgrade" and "Upgrade: tcp"; the
// answer is "101 Switching Protocols" with header StreamTTYHeader ("1" for a
// tty), after which the connection is a raw byte stream both ways: the
// caller's bytes are the process's stdin, unframed; the caller's half-close
// (TCP FIN) closes stdin; the agent closes the connection when the output is
// over, and for an exec only once its exit code can be read with ExecInfo.
//
// Framing: output without a tty uses Docker's stdcopy frames, an 8-byte
// header [stream, 0, 0, 0, big-endian uint32 length] then the payload, with
// stream 1 stdout and 2 stderr; output of a tty is the raw bytes. Logs are
// framed the same way unless raw=1 asks for bare lines. The control plane can
// hence copy agent bytes to a Docker client without looking at them.
const (
	StreamPathPrefix = "/streams/v1"
	StreamTTYHeader  = "Flotilla-Tty"
	// StreamPathStatHeader carries the PathStat of an archive's path.
	StreamPathStatHeader = "Flotilla-Path-Stat"
	// StreamDiskLayerHeader and StreamDiskSizeHeader carry the kind and
	// size of a disk a migration exports (GET .../migration/disk).
	StreamDiskLayerHeader = "Flotilla-Disk-Layer"
	StreamDiskSizeHeader  = "Flotilla-Disk-Size"
)

// PathStat describes a path in an instance's filesystem; its JSON is
// Docker's container.PathStat. Mode has io/fs's type bits (os.ModeDir...).
type PathStat struct {
	Name       string    `json:"name"`
	Size       int64     `json:"size"`
	Mode       uint32    `json:"mode"`
	Mtime      time.Time `json:"mtime"`
	LinkTarget string    `json:"linkTarget"`
}

// Change is a path of an instance's filesystem that differs from its
// image; its JSON is Docker's container.FilesystemChange (Kind 0 modified,
// 1 added, 2 deleted).
type Change struct {
	Path string `json:"Path"`
	Kind uint8  `json:"Kind"`
}

// WaitResult is the exit of an instance's main process.
type WaitResult struct {
	StatusCode int    `json:"StatusCode"`
	Error      string `json:"Error,omitempty"`
}

// TopResult lists an instance's processes, ps-style.
type TopResult struct {
	Titles    []string   `json:"Titles"`
	Processes [][]string `json:"Processes"`
}

// StatsSample is one resource usage sample of an instance, with the node's
// CPU counters so that the caller can compute a CPU percentage.
type StatsSample struct {
	Time        time.Time `json:"time"`
	CPUUsageNs  uint64    `json:"cpu_usage_ns"`
	SystemCPUNs uint64    `json:"system_cpu_ns"` // the node's total CPU time, all CPUs
	OnlineCPUs  int       `json:"online_cpus"`
	MemoryBytes uint64    `json:"memory_bytes"`
	MemoryLimit uint64    `json:"memory_limit"`
	PIDs        uint64    `json:"pids"`
}

// ExecCreate describes a process to run in a running instance.
type ExecCreate struct {
	Cmd          []string `json:"cmd"`
	Env          []string `json:"env,omitempty"`
	User         string   `json:"user,omitempty"`
	WorkingDir   string   `json:"working_dir,omitempty"`
	Tty          bool     `json:"tty,omitempty"`
	AttachStdin  bool     `json:"attach_stdin,omitempty"`
	AttachStdout bool     `json:"attach_stdout,omitempty"`
	AttachStderr bool     `json:"attach_stderr,omitempty"`
}

// ExecCreated names a created exec.
type ExecCreated struct {
	ID string `json:"id"`
}

// ExecInfo is the state of an exec.
type ExecInfo struct {
	ID         string     `json:"id"`
	InstanceID string     `json:"instance_id"`
	Config     ExecCreate `json:"config"`
	Running    bool       `json:"running"`
	Started    bool       `json:"started"`
	ExitCode   *int       `json:"exit_code,omitempty"`
	Pid        int        `json:"pid,omitempty"`
}

// NodeCertName is the DNS name in the certificate of node id's stream
// server: the control plane verifies it (TLS server name) against the node it
// means to reach, whatever the node's address.
func NodeCertName(id string) string { return id + ".node.flotilla.internal" }

// CertificateRequest asks the control plane for a stream server
// certificate (POST /agent/v1/nodes/{node}/certificate).
type CertificateRequest struct {
	// PublicKey is the stream server's public key, PEM "PUBLIC KEY" (PKIX).
	PublicKey string `json:"public_key"`
}

// CertificateResponse is the certificate and the CA that signed it.
type CertificateResponse struct {
	Certificate string `json:"certificate"` // PEM
	CA          string `json:"ca"`          // PEM
}

// VolumeSharePath is the stream route a node serves a volume's files on to
// other nodes whose instances mount it (an upgrade to SFTP, POST), with the
// volume's id in place of {id}.
const VolumeSharePath = StreamPathPrefix + "/volumes/{id}/share"

// VolumeShareToken is the bearer token for volume id's share route on the
// node whose stream token is nodeToken: the control plane hands it to the
// nodes that mount the volume, and the volume's node checks it without
// keeping anything, so a token opens one volume of one node only.
func VolumeShareToken(nodeToken, id string) string {
	m := hmac.New(sha256.New, []byte(nodeToken))
	m.Write([]byte("flotilla volume share\x00" + id))
	return hex.EncodeToString(m.Sum(nil))
}

package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/network"
	"flotilla/api/errdefs"
)

// Network is what the driver needs from the node's networking: taps on the
// network's bridge. HostNetwork (package agent/network) is the real one.
type Network interface {
	EnsureBridge(name, gatewayCIDR string) error
	EnableNAT(bridge, subnet string) error
	CreateTap(name, bridge, mac string) error
	DeleteLink(name string) error
	LinkExists(name string) bool
}

// HostNetwork plumbs taps with package agent/network.
type HostNetwork struct{}

func (HostNetwork) EnsureBridge(name, gatewayCIDR string) error {
	return network.EnsureBridge(name, gatewayCIDR)
}
func (HostNetwork) EnableNAT(bridge, subnet string) error { return network.EnableNAT(bridge, subnet) }
func (HostNetwork) CreateTap(name, bridge, mac string) error {
	return network.CreateTap(name, bridge, mac)
}
func (HostNetwork) DeleteLink(name string) error { return network.DeleteLink(name) }
func (HostNetwork) LinkExists(name string) bool  { return network.LinkExists(name) }

// Config configures the QEMU driver.
type Config struct {
	// Root is the driver's state directory (e.g. /var/lib/flotilla/qemu):
	// instances/<id>/ and the image cache images/<digest>/. Required; it may
	// not contain ':' or ',' (QEMU option syntax).
	Root string
	// Images resolves Spec.Image; required by Create.
	Images driver.ImageSource
	// QEMU and QEMUImg are the binaries; defaults qemu-system-x86_64 and qemu-img.
	QEMU, QEMUImg string
	// Accel forces "kvm" or "tcg". Empty means probe once with ProbeKVM,
	// booting ProbeKernel (or the first kernel-format image started).
	Accel       string
	ProbeKernel string
	// Machine is QEMU's -machine type; default "pc".
	Machine string
	// Network plumbs taps; default HostNetwork.
	Network Network
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Driver runs VMs with QEMU. It implements driver.Driver and driver.Updater.
type Driver struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	images map[string]*sync.Mutex // image digest -> unpack lock
	accel  string
}

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Updater = (*Driver)(nil)
)

// New returns a driver keeping its state under cfg.Root. It returns Invalid
// for an unusable Root and Unavailable when QEMU is not installed.
func New(cfg Config) (*Driver, error) {
	if cfg.Root == "" || strings.ContainsAny(cfg.Root, ":,") {
		return nil, errdefs.InvalidArgument("qemu driver root %q must be a directory path without ':' or ','", cfg.Root)
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "qemu driver root %q", cfg.Root)
	}
	cfg.Root = root
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.QEMUImg == "" {
		cfg.QEMUImg = "qemu-img"
	}
	for _, bin := range []string{cfg.QEMU, cfg.QEMUImg} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, errdefs.Wrap(errdefs.Unavailable, err, "%s not found: apt-get install -y qemu-system-x86 qemu-utils", bin)
		}
	}
	switch cfg.Accel {
	case "", AccelKVM, AccelTCG:
	default:
		return nil, errdefs.InvalidArgument("accel %q: want kvm, tcg or empty (probe)", cfg.Accel)
	}
	if cfg.Machine == "" {
		cfg.Machine = "pc"
	}
	if cfg.Network == nil {
		cfg.Network = HostNetwork{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, d := range []string{"instances", "images"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "create %s", filepath.Join(root, d))
		}
	}
	return &Driver{cfg: cfg, log: cfg.Logger.With("driver", "qemu"), images: map[string]*sync.Mutex{}, accel: cfg.Accel}, nil
}

// Name is "qemu".
func (d *Driver) Name() string { return "qemu" }

// Brands are bhyve and kvm: both run as QEMU VMs here.
func (d *Driver) Brands() []string { return []string{driver.BrandBhyve, driver.BrandKVM} }

// instance state kept in state.json.
type instanceState struct {
	Spec       driver.Spec
	Format     string
	Cmdline    string
	Taps       []string
	Accel      string
	CreatedAt  time.Time
	StartedAt  time.Time
	FinishedAt time.Time
}

// File names inside an instance directory.
const (
	stateFile   = "state.json"
	pidFile     = "qemu.pid"
	qmpSock     = "qmp.sock"
	consoleFile = "console.log"
	qemuLogFile = "qemu.log"
	cidataDir   = "cidata"
	cidataImage = "cidata.img"
)

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func (d *Driver) dir(id string) string { return filepath.Join(d.cfg.Root, "instances", id) }

// ConsoleLogPath is the file that keeps instance id's serial console output,
// appended across boots. It is empty for an id that cannot be an instance.
func (d *Driver) ConsoleLogPath(id string) string {
	if !validID.MatchString(id) {
		return ""
	}
	return filepath.Join(d.dir(id), consoleFile)
}

func checkID(id string) error {
	if !validID.MatchString(id) {
		return errdefs.InvalidArgument("instance id %q: use letters, digits, '.', '_' and '-' (at most 128)", id)
	}
	return nil
}

func (d *Driver) loadState(id string) (instanceState, error) {
	var st instanceState
	if err := checkID(id); err != nil {
		return st, errdefs.NotFoundf("no VM %q on this node", id)
	}
	b, err := os.ReadFile(filepath.Join(d.dir(id), stateFile))
	if os.IsNotExist(err) {
		return st, errdefs.NotFoundf("no VM %s on this node", id)
	}
	if err != nil {
		return st, errdefs.Wrap(errdefs.Internal, err, "read state of VM %s", id)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, errdefs.Wrap(errdefs.Internal, err, "state of VM %s is corrupt", id)
	}
	return st, nil
}

func (d *Driver) saveState(st instanceState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "encode state of VM %s", st.Spec.ID)
	}
	return writeFileAtomic(filepath.Join(d.dir(st.Spec.ID), stateFile), b, 0o600)
}

// nicMAC is the NIC's MAC in lower case, or a stable locally administered
// one derived from the instance id when the control plane gave none.
func nicMAC(id string, i int, nic driver.NIC) string {
	if hw, err := net.ParseMAC(nic.MAC); err == nil && len(hw) == 6 {
		return hw.String()
	}
	h := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", id, i)))
	return net.HardwareAddr{0x52, 0x54, 0x00, h[0], h[1], h[2]}.String()
}

// Create prepares the VM: image, disk overlay or kernel pair, config drive
// and taps. Creating an existing id is a no-op. It returns Invalid for a
// brand or image this driver cannot run.
func (d *Driver) Create(ctx context.Context, spec driver.Spec) (err error) {
	if err := checkID(spec.ID); err != nil {
		return err
	}
	if spec.Brand != driver.BrandBhyve && spec.Brand != driver.BrandKVM {
		return errdefs.InvalidArgument("brand %q is not a VM brand (want %s or %s)", spec.Brand, driver.BrandBhyve, driver.BrandKVM)
	}
	if _, err := d.loadState(spec.ID); err == nil {
		return nil
	}
	for i, nic := range spec.NICs {
		if nic.Bridge == "" {
			return errdefs.InvalidArgument("NIC %d of VM %s has no bridge", i, spec.ID)
		}
	}
	img, err := d.image(ctx, spec.Image)
	if err != nil {
		return err
	}
	dir := d.dir(spec.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create %s", dir)
	}
	st := instanceState{Spec: spec, Format: img.Format, Cmdline: img.Cmdline, CreatedAt: time.Now().UTC()}
	defer func() {
		if err != nil {
			d.removeTaps(spec.ID, len(spec.NICs))
			os.RemoveAll(dir)
		}
	}()
	switch img.Format {
	case FormatDisk:
		if err := d.createOverlay(ctx, img.path(FileDisk), filepath.Join(dir, FileDisk), spec.DiskMiB); err != nil {
			return err
		}
	case FormatKernel:
		for _, f := range []string{FileKernel, FileInitrd} {
			if err := linkOrCopy(img.path(f), filepath.Join(dir, f)); err != nil {
				return err
			}
		}
	}
	if err := d.syncDisks(ctx, spec.ID, spec.Disks); err != nil {
		return err
	}
	if err := writeConfigDrive(filepath.Join(dir, cidataDir), spec); err != nil {
		return err
	}
	if st.Taps, err = d.plumb(spec); err != nil {
		return err
	}
	return d.saveState(st)
}

// plumb creates (or re-creates after a host reboot) the VM's taps.
func (d *Driver) plumb(spec driver.Spec) ([]string, error) {
	defer network.HoldFabrics()()
	var taps []string
	for i, nic := range spec.NICs {
		if nic.VNI != 0 {
			// A fabric NIC: its VLAN's bridge, VXLAN device and router
			// namespace (EnsureNICBridge points nic.Bridge at the bridge).
			if err := network.EnsureNICBridge(&nic); err != nil {
				return taps, err
			}
		} else if nic.Gateway != "" && nic.PrefixLen > 0 {
			if err := d.cfg.Network.EnsureBridge(nic.Bridge, fmt.Sprintf("%s/%d", nic.Gateway, nic.PrefixLen)); err != nil {
				return taps, err
			}
		}
		if nic.VNI == 0 && nic.NAT && nic.Subnet != "" {
			if err := d.cfg.Network.EnableNAT(nic.Bridge, nic.Subnet); err != nil {
				return taps, err
			}
		}
		tap := network.TapName(spec.ID, i)
		if err := d.cfg.Network.CreateTap(tap, nic.Bridge, nicMAC(spec.ID, i, nic)); err != nil {
			return taps, err
		}
		taps = append(taps, tap)
	}
	return taps, nil
}

func (d *Driver) removeTaps(id string, n int) error {
	var first error
	for i := 0; i < n; i++ {
		if err := d.cfg.Network.DeleteLink(network.TapName(id, i)); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open %s", src)
	}
	defer in.Close()
	return copyToFile(dst, in)
}

// image returns the unpacked VM image, fetching and unpacking it into the
// image cache on first use.
func (d *Driver) image(ctx context.Context, ref driver.Image) (vmImage, error) {
	if d.cfg.Images == nil {
		return vmImage{}, errdefs.New(errdefs.Unavailable, "qemu driver has no image source configured")
	}
	img, err := d.cfg.Images.Image(ctx, ref)
	if err != nil {
		return vmImage{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return vmImage{}, errdefs.Wrap(errdefs.Unavailable, err, "image %s has no digest", ref.ID)
	}
	if ref.Digest != "" && ref.Digest != digest.String() {
		return vmImage{}, errdefs.New(errdefs.Invalid, "image %s has digest %s, want %s", ref.ID, digest, ref.Digest)
	}
	d.mu.Lock()
	lk, ok := d.images[digest.Hex]
	if !ok {
		lk = &sync.Mutex{}
		d.images[digest.Hex] = lk
	}
	d.mu.Unlock()
	lk.Lock()
	defer lk.Unlock()

	final := filepath.Join(d.cfg.Root, "images", digest.Hex)
	if b, err := os.ReadFile(filepath.Join(final, "image.json")); err == nil {
		var v vmImage
		if json.Unmarshal(b, &v) == nil {
			v.Dir = final
			return v, nil
		}
	}
	tmp := final + ".unpack"
	os.RemoveAll(tmp)
	v, err := unpackVMImage(ctx, img, tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return vmImage{}, err
	}
	b, _ := json.Marshal(v)
	if err := os.WriteFile(filepath.Join(tmp, "image.json"), b, 0o644); err != nil {
		os.RemoveAll(tmp)
		return vmImage{}, errdefs.Wrap(errdefs.Internal, err, "write image cache")
	}
	os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return vmImage{}, errdefs.Wrap(errdefs.Internal, err, "move image into cache")
	}
	v.Dir = final
	return v, nil
}

// qemuImgInfo is the part of `qemu-img info --output=json` we read.
type qemuImgInfo struct {
	VirtualSize int64  `json:"virtual-size"`
	Format      string `json:"format"`
}

func (d *Driver) diskInfo(ctx context.Context, path string) (qemuImgInfo, error) {
	var info qemuImgInfo
	out, err := exec.CommandContext(ctx, d.cfg.QEMUImg, "info", "-U", "--output=json", path).Output()
	if err != nil {
		return info, errdefs.Wrap(errdefs.Invalid, cmdErr(err), "qemu-img info %s", path)
	}
	if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize <= 0 {
		return info, errdefs.New(errdefs.Invalid, "qemu-img info %s: no virtual size", path)
	}
	return info, nil
}

const mib = 1 << 20

func (d *Driver) createOverlay(ctx context.Context, base, overlay string, diskMiB int64) error {
	info, err := d.diskInfo(ctx, base)
	if err != nil {
		return err
	}
	if info.Format != "qcow2" {
		return errdefs.InvalidArgument("VM image disk is %s, want qcow2", info.Format)
	}
	size := info.VirtualSize
	if diskMiB*mib > size {
		size = diskMiB * mib
	}
	out, err := exec.CommandContext(ctx, d.cfg.QEMUImg, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base,
		overlay, fmt.Sprint(size)).CombinedOutput()
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out))), "create disk overlay %s", overlay)
	}
	return nil
}

func cmdErr(err error) error {
	if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

// pid returns the pid of the instance's running QEMU, or 0.
func (d *Driver) pid(id string) int {
	pid, err := readPidfile(filepath.Join(d.dir(id), pidFile))
	if err != nil || !processHasArg(pid, d.dir(id)) {
		return 0
	}
	return pid
}

// withQMP runs fn on a fresh QMP session to the instance. QEMU serves one
// QMP client at a time, so the driver never holds a session between calls:
// a restarted agent, or an operator's tool, can always get in.
func (d *Driver) withQMP(ctx context.Context, id string, fn func(*QMP) error) error {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q, err := DialQMP(dctx, driver.SocketPath(d.dir(id), qmpSock))
	if err != nil {
		return err
	}
	defer q.Close()
	return fn(q)
}

// accelFor picks the accelerator, probing once if not configured.
func (d *Driver) accelFor(ctx context.Context, kernel string) string {
	d.mu.Lock()
	a := d.accel
	d.mu.Unlock()
	if a != "" {
		return a
	}
	probe := d.cfg.ProbeKernel
	if probe == "" {
		probe = kernel
	}
	if probe == "" {
		// Nothing to boot for the probe: TCG is slow but always right.
		return AccelTCG
	}
	a = ProbeKVM(ctx, probe, "")
	d.log.Info("accelerator chosen by boot probe", "accel", a)
	d.mu.Lock()
	d.accel = a
	d.mu.Unlock()
	return a
}

// qemuArgs is the command line of instance st's QEMU.
func (d *Driver) qemuArgs(st instanceState, accel string) []string {
	dir := d.dir(st.Spec.ID)
	esc := func(p string) string { return strings.ReplaceAll(p, ",", ",,") }
	mem := st.Spec.MemoryMiB
	if mem <= 0 {
		mem = 256
	}
	cpus := int(math.Ceil(st.Spec.VCPUs))
	if cpus < 1 {
		cpus = 1
	}
	args := []string{
		"-name", "guest=" + st.Spec.ID,
		"-nodefaults", "-no-user-config",
		"-machine", d.cfg.Machine + ",accel=" + accel,
		"-m", fmt.Sprint(mem), "-smp", fmt.Sprint(cpus),
		"-display", "none",
		"-chardev", "file,id=console,append=on,path=" + esc(filepath.Join(dir, consoleFile)),
		"-serial", "chardev:console",
		"-qmp", "unix:" + esc(driver.SocketPath(dir, qmpSock)) + ",server=on,wait=off",
		"-pidfile", filepath.Join(dir, pidFile),
		"-daemonize",
	}
	if accel == AccelKVM {
		args = append(args, "-cpu", "host")
	}
	// Confine QEMU: a seccomp filter (no obsolete or resource-control
	// calls, no new privileges; it still forks to daemonize) and, once it
	// has opened its disks, taps and sockets as root, an unprivileged user
	// of its own.
	args = append(args, "-sandbox", "on,obsolete=deny,elevateprivileges=allow,resourcecontrol=deny")
	if os.Geteuid() == 0 {
		uid := GuestUID(st.Spec.ID)
		args = append(args, "-runas", fmt.Sprintf("%d:%d", uid, uid))
	}
	switch st.Format {
	case FormatDisk:
		args = append(args, "-drive", "if=virtio,format=qcow2,discard=unmap,file="+esc(filepath.Join(dir, FileDisk)))
	case FormatKernel:
		args = append(args, "-kernel", filepath.Join(dir, FileKernel), "-initrd", filepath.Join(dir, FileInitrd),
			"-append", strings.TrimSpace("console=ttyS0 "+st.Cmdline))
	}
	args = append(args, "-drive", "if=virtio,format=raw,readonly=on,file="+esc(filepath.Join(dir, cidataImage)))
	args = append(args, d.dataDiskArgs(st)...)
	for i, nic := range st.Spec.NICs {
		args = append(args,
			"-netdev", fmt.Sprintf("tap,id=net%d,ifname=%s,script=no,downscript=no", i, network.TapName(st.Spec.ID, i)),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=net%d,mac=%s", i, nicMAC(st.Spec.ID, i, nic)))
	}
	return args
}

// GuestUID is the user and group a VM's QEMU runs as after setup: one per
// instance, outside the range of the host's own users, so no two VMs' QEMU
// processes can signal or trace each other and none holds a privilege.
func GuestUID(id string) int {
	h := sha256.Sum256([]byte(id))
	return 0x10000000 + int(h[0])<<16 | int(h[1])<<8 | int(h[2])
}

// Start boots the VM. Starting a running VM is a no-op. It returns NotFound
// for an unknown id and Internal, with QEMU's complaint, if QEMU refuses.
func (d *Driver) Start(ctx context.Context, id string) error {
	st, err := d.loadState(id)
	if err != nil {
		return err
	}
	if d.pid(id) != 0 {
		return nil
	}
	dir := d.dir(id)
	os.Remove(filepath.Join(dir, pidFile))
	os.Remove(driver.SocketPath(dir, qmpSock))
	if _, err := d.plumb(st.Spec); err != nil {
		return err
	}
	kernel := ""
	if st.Format == FormatKernel {
		kernel = filepath.Join(dir, FileKernel)
	}
	st.Accel = d.accelFor(ctx, kernel)
	// The data disks as last applied: a file lost meanwhile is made again
	// (empty) rather than keeping the VM from starting.
	if err := d.syncDisks(ctx, id, st.Spec.Disks); err != nil {
		return err
	}
	if err := d.buildConfigDrive(ctx, dir); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, qemuLogFile))
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create %s", qemuLogFile)
	}
	defer logf.Close()
	runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(runCtx, d.cfg.QEMU, d.qemuArgs(st, st.Accel)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		msg, _ := os.ReadFile(filepath.Join(dir, qemuLogFile))
		return errdefs.Wrap(errdefs.Internal, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(msg))), "qemu failed to start VM %s", id)
	}
	pid := d.pid(id)
	if pid == 0 {
		return errdefs.New(errdefs.Internal, "qemu for VM %s exited right after starting; see %s", id, filepath.Join(dir, qemuLogFile))
	}
	err = d.withQMP(ctx, id, func(q *QMP) error {
		s, err := q.QueryStatus(ctx)
		if err == nil && !s.Running {
			err = q.Cont(ctx)
		}
		return err
	})
	if err != nil {
		return err
	}
	st.StartedAt = time.Now().UTC()
	st.FinishedAt = time.Time{}
	d.log.Info("VM started", "instance", id, "pid", pid, "accel", st.Accel)
	return d.saveState(st)
}

// buildConfigDrive makes the config drive's disk image, a FAT filesystem
// labelled cidata holding the files of the cidata directory. QEMU gets the
// image rather than the directory because it reads a directory's files
// lazily, after it has given up root for a user that may not reach them.
func (d *Driver) buildConfigDrive(ctx context.Context, dir string) error {
	src, err := json.Marshal(map[string]string{"driver": "vvfat", "dir": filepath.Join(dir, cidataDir), "label": "cidata"})
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "config drive")
	}
	img := filepath.Join(dir, cidataImage)
	os.Remove(img)
	cmd := exec.CommandContext(ctx, d.cfg.QEMUImg, "convert", "-q", "-O", "raw", "json:"+string(src), img)
	if out, err := cmd.CombinedOutput(); err != nil {
		return errdefs.Wrap(errdefs.Internal, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out))), "make config drive image %s", img)
	}
	return nil
}

// waitExit waits until pid is gone or ctx ends; it reports whether it is gone.
func waitExit(ctx context.Context, pid int, dir string) bool {
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	for {
		if !processHasArg(pid, dir) {
			return true
		}
		select {
		case <-ctx.Done():
			return !processHasArg(pid, dir)
		case <-t.C:
		}
	}
}

// Stop presses the ACPI power button, waits up to grace for the guest to
// power off, then makes QEMU quit (and kills it if even that fails).
// Stopping a stopped VM is a no-op.
func (d *Driver) Stop(ctx context.Context, id string, grace time.Duration) error {
	st, err := d.loadState(id)
	if err != nil {
		return err
	}
	pid := d.pid(id)
	if pid == 0 {
		return nil
	}
	dir := d.dir(id)
	if grace > 0 {
		// A guest that was not listening yet (still booting) misses a press,
		// as a real machine would: press again every couple of seconds.
		deadline := time.Now().Add(grace)
		for time.Now().Before(deadline) {
			if err := d.withQMP(ctx, id, func(q *QMP) error { return q.SystemPowerdown(ctx) }); err != nil {
				break
			}
			until := time.Now().Add(2 * time.Second)
			if until.After(deadline) {
				until = deadline
			}
			gctx, cancel := context.WithDeadline(ctx, until)
			exited := waitExit(gctx, pid, dir)
			cancel()
			if exited {
				break
			}
		}
	}
	if err := d.kill(ctx, id, pid); err != nil {
		return err
	}
	st.FinishedAt = time.Now().UTC()
	d.log.Info("VM stopped", "instance", id)
	return d.saveState(st)
}

// kill makes QEMU pid quit through QMP, then with SIGKILL, and removes its
// pidfile and socket.
func (d *Driver) kill(ctx context.Context, id string, pid int) error {
	dir := d.dir(id)
	if processHasArg(pid, dir) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if d.withQMP(qctx, id, func(q *QMP) error { return q.Quit(qctx) }) == nil {
			waitExit(qctx, pid, dir)
		}
		cancel()
	}
	if processHasArg(pid, dir) {
		syscall.Kill(pid, syscall.SIGKILL)
		kctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		gone := waitExit(kctx, pid, dir)
		cancel()
		if !gone {
			return errdefs.New(errdefs.Internal, "qemu pid %d of VM %s survives SIGKILL", pid, id)
		}
	}
	os.Remove(filepath.Join(dir, pidFile))
	os.Remove(driver.SocketPath(dir, qmpSock))
	return nil
}

// Inspect reports the VM's state: running while QEMU runs the guest,
// stopped once QEMU is gone. It returns NotFound for an unknown id.
func (d *Driver) Inspect(ctx context.Context, id string) (driver.Status, error) {
	st, err := d.loadState(id)
	if err != nil {
		return driver.Status{}, err
	}
	s := driver.Status{ID: id, State: driver.StateStopped, StartedAt: st.StartedAt, FinishedAt: st.FinishedAt}
	pid := d.pid(id)
	if pid == 0 {
		return s, nil
	}
	s.Pid = pid
	s.FinishedAt = time.Time{}
	var qs QMPStatus
	err = d.withQMP(ctx, id, func(q *QMP) (err error) {
		qs, err = q.QueryStatus(ctx)
		return err
	})
	if err != nil {
		s.State = driver.StateRunning
		s.Error = "query-status: " + errdefs.MessageOf(err)
		return s, nil
	}
	switch qs.Status {
	case "running", "debug", "finish-migrate", "inmigrate", "postmigrate", "prelaunch", "restore-vm", "save-vm", "suspended", "paused", "colo":
		s.State = driver.StateRunning
		if !qs.Running {
			s.Error = "VM is " + qs.Status
		}
	case "shutdown":
		s.State = driver.StateStopping
	default: // guest-panicked, internal-error, io-error, watchdog
		s.State = driver.StateFailed
		s.Error = "VM is " + qs.Status
	}
	return s, nil
}

// List returns the status of every VM under Root, running or not; running
// VMs of a previous agent are adopted through their QMP sockets.
func (d *Driver) List(ctx context.Context) ([]driver.Status, error) {
	ents, err := os.ReadDir(filepath.Join(d.cfg.Root, "instances"))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "list VMs")
	}
	var out []driver.Status
	for _, e := range ents {
		if !e.IsDir() || !validID.MatchString(e.Name()) {
			continue
		}
		s, err := d.Inspect(ctx, e.Name())
		if errdefs.CodeOf(err) == errdefs.NotFound {
			continue // being created or deleted
		}
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Delete kills the VM and removes its taps, socket, disks and directory.
// Deleting an unknown id is a no-op.
func (d *Driver) Delete(ctx context.Context, id string) error {
	if !validID.MatchString(id) {
		return nil
	}
	dir := d.dir(id)
	st, err := d.loadState(id)
	if err != nil && errdefs.CodeOf(err) != errdefs.NotFound {
		return err
	}
	if pid := d.pid(id); pid != 0 {
		if err := d.kill(ctx, id, pid); err != nil {
			return err
		}
	}
	// A create that crashed half-way left no state but maybe taps: sweep
	// the first indexes too.
	n := len(st.Spec.NICs)
	for i := n; i < 10; i++ {
		if tap := network.TapName(id, i); d.cfg.Network.LinkExists(tap) {
			n = i + 1
		}
	}
	if err := d.removeTaps(id, n); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "remove %s", dir)
	}
	return nil
}

// Update applies a new spec to a stopped VM: memory, vCPUs, metadata, a
// larger boot disk and its data disks (made, resized or removed). It
// returns Conflict while the VM runs and Invalid for a boot disk shrink.
func (d *Driver) Update(ctx context.Context, spec driver.Spec) error {
	st, err := d.loadState(spec.ID)
	if err != nil {
		return err
	}
	if d.pid(spec.ID) != 0 {
		return errdefs.Conflictf("VM %s is running: stop it before resizing", spec.ID)
	}
	dir := d.dir(spec.ID)
	if st.Format == FormatDisk && spec.DiskMiB > 0 {
		disk := filepath.Join(dir, FileDisk)
		info, err := d.diskInfo(ctx, disk)
		if err != nil {
			return err
		}
		want := spec.DiskMiB * mib
		switch {
		case want < info.VirtualSize:
			return errdefs.InvalidArgument("VM %s disk is %d MiB; shrinking it to %d MiB would lose data", spec.ID, info.VirtualSize/mib, spec.DiskMiB)
		case want > info.VirtualSize:
			if out, err := exec.CommandContext(ctx, d.cfg.QEMUImg, "resize", "-q", disk, fmt.Sprint(want)).CombinedOutput(); err != nil {
				return errdefs.Wrap(errdefs.Internal, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out))), "resize disk of VM %s", spec.ID)
			}
		}
	}
	if err := d.syncDisks(ctx, spec.ID, spec.Disks); err != nil {
		return err
	}
	nics := st.Spec.NICs // networking changes need a re-create
	st.Spec.MemoryMiB, st.Spec.VCPUs, st.Spec.DiskMiB = spec.MemoryMiB, spec.VCPUs, spec.DiskMiB
	st.Spec.Disks = spec.Disks
	st.Spec.Metadata = spec.Metadata
	st.Spec.NICs = nics
	if err := writeConfigDrive(filepath.Join(dir, cidataDir), st.Spec); err != nil {
		return err
	}
	return d.saveState(st)
}

// HostInterfaces names each NIC's tap.
func (d *Driver) HostInterfaces(id string, nics []driver.NICRef) [][]string {
	out := make([][]string, len(nics))
	for i := range nics {
		out[i] = []string{network.TapName(id, i)}
	}
	return out
}

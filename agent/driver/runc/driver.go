// Package runc is the container driver: OCI containers run by runc, one
// per-container shim (this binary re-executed, see ShimMain) owning each
// container's stdio, exit status and restart policy, root filesystems from
// OCI images (overlayfs over per-layer caches, or a copy where overlayfs is
// unavailable), cgroup v1 limits under the "flotilla" parent, and networking
// from agent/network (a persistent named netns per instance on the
// network's bridge).
//
// Restart policies are applied by the shim, not by the agent, so a
// container keeps its policy while the agent is down.
//
// On-disk state under Config.Root:
//
//	runc/               runc --root (private to this driver)
//	layers/<diffid>/    unpacked layers in overlay format, shared
//	containers/<id>/    the bundle: config.json, spec.json, rootfs/, upper/,
//	                    work/, shim.json, status.json, exit.json,
//	                    container.log[.N], attach.sock, runc.log, shim.log
//	volumes/<id>/       a volume's storage: _data/, on which disk.img is
//	                    loop-mounted when the volume has a size (volumes.go)
//
// Imports: standard library, agent/driver, agent/network, oci, api/errdefs,
// go-containerregistry, go-runc, containerd/console, creack/pty,
// runtime-spec and x/sys. Never store or api.
package runc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	gorunc "github.com/containerd/go-runc"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/agent/network"
	"flotilla/api/errdefs"
	"flotilla/oci"
)

// Config configures a Driver.
type Config struct {
	// Root holds all of the driver's state (required). A new Driver over
	// the same Root adopts the containers of an earlier one.
	Root string
	// Images resolves driver.Image to an image (required for Create).
	Images driver.ImageSource
	// RuncBinary is the OCI runtime; default "runc".
	RuncBinary string
	// ShimPath is the executable run as the shim; default ShimBinary next
	// to os.Executable() when it is there (and ShimArgs is nil), else
	// os.Executable() itself.
	ShimPath string
	// ShimArgs come before the shim's own flags; default ["runc-shim"]
	// (none for ShimBinary).
	// The executable must call ShimMain with the arguments after them.
	ShimArgs []string
	// ShimEnv is added to the shim's environment.
	ShimEnv []string
	// LogMaxSize rotates a container's log at this size (default 10 MiB);
	// LogFiles is how many files are kept, rotated ones included (default 3).
	LogMaxSize int64
	LogFiles   int
	// CopyRootfs unpacks every layer into each container's rootfs instead
	// of mounting overlayfs over the shared layer cache.
	CopyRootfs bool
	// StartTimeout bounds how long Start waits for the shim to report the
	// container running; default 30 s.
	StartTimeout time.Duration
	// SharePipe is the command sshfs runs as its transport to another
	// node's volume; default [os.Executable(), "volume-pipe"] (see share.go).
	SharePipe []string
	// ShareCA is the node CA's certificate file, for volumes of nodes whose
	// stream servers speak TLS.
	ShareCA string
	Logger  *slog.Logger
}

// Driver runs containers with runc. It implements driver.Driver,
// driver.Streamer and driver.StatsReader.
type Driver struct {
	cfg Config
	rc  *gorunc.Runc
	log *slog.Logger

	layers keyedLocks // per layer directory, while unpacking

	shareMu sync.Mutex // mounts of other nodes' volumes
	vols    volumes    // volumes' storage (volumes.go)
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.AttachStarter = (*Driver)(nil)
	_ driver.Signaler      = (*Driver)(nil)
	_ driver.Streamer      = (*Driver)(nil)
	_ driver.StatsReader   = (*Driver)(nil)
)

// New returns a driver over cfg.Root, creating its directories. It returns
// Invalid for a missing Root and Unavailable if the runc binary is missing.
func New(cfg Config) (*Driver, error) {
	if cfg.Root == "" {
		return nil, errdefs.InvalidArgument("runc driver: Config.Root is required")
	}
	if cfg.RuncBinary == "" {
		cfg.RuncBinary = "runc"
	}
	if _, err := exec.LookPath(cfg.RuncBinary); err != nil {
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "runc driver: OCI runtime %q not found (apt-get install runc)", cfg.RuncBinary)
	}
	if cfg.ShimPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "runc driver: find own executable for the shim")
		}
		cfg.ShimPath = exe
		if cfg.ShimArgs == nil {
			cfg.ShimPath, cfg.ShimArgs = defaultShim(exe)
		}
	}
	if cfg.ShimArgs == nil {
		cfg.ShimArgs = []string{"runc-shim"}
	}
	if cfg.LogMaxSize == 0 {
		cfg.LogMaxSize = 10 << 20
	}
	if cfg.LogFiles <= 0 {
		cfg.LogFiles = 3
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	abs, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "runc driver root %q", cfg.Root)
	}
	if strings.ContainsAny(abs, ",:") {
		return nil, errdefs.InvalidArgument("runc driver root %q must not contain ',' or ':' (overlayfs options)", abs)
	}
	cfg.Root = abs
	for _, d := range []string{"runc", "layers", "containers"} {
		if err := os.MkdirAll(filepath.Join(cfg.Root, d), 0o711); err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "runc driver: create %s", d)
		}
	}
	return &Driver{
		cfg: cfg,
		rc:  &gorunc.Runc{Command: cfg.RuncBinary, Root: filepath.Join(cfg.Root, "runc")},
		log: cfg.Logger,
	}, nil
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "runc" }

// Brands implements driver.Driver.
func (d *Driver) Brands() []string { return []string{driver.BrandContainer, driver.BrandLX} }

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func (d *Driver) bundle(id string) (string, error) {
	if !validID.MatchString(id) {
		return "", errdefs.InvalidArgument("instance id %q is not valid for a container (letters, digits, '_', '.', '-')", id)
	}
	return filepath.Join(d.cfg.Root, "containers", id), nil
}

// loadSpec reads the spec a container was created with; NotFound if the
// container does not exist (or its creation never finished).
func (d *Driver) loadSpec(id string) (string, driver.Spec, error) {
	b, err := d.bundle(id)
	if err != nil {
		return "", driver.Spec{}, err
	}
	var s driver.Spec
	if err := readJSON(filepath.Join(b, fileSpec), &s); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", s, errdefs.NotFoundf("container %s does not exist on this node", id)
		}
		return "", s, errdefs.Wrap(errdefs.Internal, err, "read spec of container %s", id)
	}
	return b, s, nil
}

// Create implements driver.Driver: it fetches and unpacks the image, makes
// the rootfs, the network namespace and the bundle. Creating an existing
// container is a no-op. On failure nothing is left behind.
func (d *Driver) Create(ctx context.Context, spec driver.Spec) (err error) {
	bundle, err := d.bundle(spec.ID)
	if err != nil {
		return err
	}
	if _, _, err := d.loadSpec(spec.ID); err == nil {
		return nil
	}
	if d.cfg.Images == nil {
		return errdefs.New(errdefs.Internal, "runc driver has no image source configured")
	}
	img, err := d.cfg.Images.Image(ctx, spec.Image)
	if err != nil {
		return err
	}
	if spec.Image.Digest != "" {
		dg, err := img.Digest()
		if err != nil || dg.String() != spec.Image.Digest {
			return errdefs.New(errdefs.Invalid, "image %s has digest %s, not the expected %s", spec.Image.Ref, dg, spec.Image.Digest)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "read config of image %s", spec.Image.Ref)
	}
	if err := os.MkdirAll(bundle, 0o711); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create bundle for %s", spec.ID)
	}
	defer func() {
		if err != nil {
			d.cleanup(context.WithoutCancel(ctx), spec.ID, bundle)
		}
	}()
	rootfs := filepath.Join(bundle, dirRootfs)
	// The network namespace and the root filesystem do not depend on each
	// other: make them at the same time (each takes milliseconds).
	netnsPath := ""
	netDone := make(chan error, 1)
	if _, ok := primaryNIC(spec.NICs); ok {
		netnsPath = network.NetNSPath(network.NetNSName(spec.ID))
		go func() { netDone <- setupNetwork(spec.ID, spec.NICs) }()
	} else {
		netDone <- nil
	}
	rootErr := d.makeRootfs(ctx, img, bundle)
	if netErr := <-netDone; netErr != nil {
		return netErr
	}
	if rootErr != nil {
		return rootErr
	}
	s, err := buildSpec(spec, cf, bundle, rootfs, netnsPath)
	if err != nil {
		return err
	}
	if err := d.mountVolumes(ctx, spec.Options.Volumes); err != nil {
		return err
	}
	if err := applyOptions(s, spec.Options, filepath.Join(d.cfg.Root, "volumes")); err != nil {
		return err
	}
	if err := writeNetworkFiles(bundle, s.Hostname, spec.NICs, spec.DNS); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "write network files for %s", spec.ID)
	}
	if err := writeJSONAtomic(filepath.Join(bundle, fileConfig), s); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "write runtime spec for %s", spec.ID)
	}
	// spec.json last: its presence means the container exists.
	if err := writeJSONAtomic(filepath.Join(bundle, fileSpec), spec); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "write spec for %s", spec.ID)
	}
	return nil
}

// setupNetwork plumbs every NIC of the instance into its namespace.
func setupNetwork(id string, nics []driver.NIC) error {
	return network.SyncInstanceNICs(network.NetNSName(id), id, nics)
}

// UpdateNICs implements driver.NICUpdater: NICs added to or removed from
// the spec are plumbed into (or out of) the instance's namespace, live.
func (d *Driver) UpdateNICs(ctx context.Context, spec driver.Spec) error {
	bundle, cur, err := d.loadSpec(spec.ID)
	if err != nil {
		return err
	}
	if err := setupNetwork(spec.ID, spec.NICs); err != nil {
		return err
	}
	for _, old := range cur.NICs {
		if old.VNI != 0 && !slices.ContainsFunc(spec.NICs, func(n driver.NIC) bool { return n.VNI == old.VNI }) {
			if _, err := network.ReleaseFabric(old.VNI); err != nil {
				return err
			}
		}
	}
	cur.NICs = spec.NICs
	if err := writeJSONAtomic(filepath.Join(bundle, fileSpec), cur); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "write spec of %s", spec.ID)
	}
	return nil
}

// makeRootfs mounts overlayfs over the cached layers (or, with CopyRootfs or
// when the mount fails, unpacks the image into rootfs).
func (d *Driver) makeRootfs(ctx context.Context, img v1.Image, bundle string) error {
	rootfs := filepath.Join(bundle, dirRootfs)
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create rootfs")
	}
	if !d.cfg.CopyRootfs {
		lowers, err := d.cachedLayers(ctx, img)
		if err != nil {
			return err
		}
		os.WriteFile(filepath.Join(bundle, "lowers"), []byte(joinLowers(lowers)), 0o600)
		if err := mountOverlay(bundle); err == nil {
			return nil
		} else {
			d.log.Warn("overlayfs mount failed; copying the image instead", "err", err)
			os.Remove(filepath.Join(bundle, "lowers"))
		}
	}
	return oci.UnpackImage(ctx, img, rootfs)
}

func joinLowers(l []string) string {
	s := ""
	for i := len(l) - 1; i >= 0; i-- { // overlay wants the top layer first
		if s != "" {
			s += ":"
		}
		s += l[i]
	}
	return s
}

// mountOverlay mounts the bundle's rootfs if it has a lowers file and is
// not mounted yet.
func mountOverlay(bundle string) error {
	lowers, err := os.ReadFile(filepath.Join(bundle, "lowers"))
	if err != nil {
		return nil // a copied rootfs
	}
	rootfs := filepath.Join(bundle, dirRootfs)
	if isMountPoint(rootfs) {
		return nil
	}
	upper, work := filepath.Join(bundle, "upper"), filepath.Join(bundle, "work")
	os.MkdirAll(upper, 0o755)
	os.MkdirAll(work, 0o700)
	data := "lowerdir=" + string(lowers) + ",upperdir=" + upper + ",workdir=" + work
	// nodev: a device node in the rootfs (made with CAP_MKNOD, say) opens
	// nothing, neither for the container nor for the agent copying files.
	if err := unix.Mount("overlay", rootfs, "overlay", unix.MS_NODEV, data); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", rootfs, err)
	}
	return nil
}

func isMountPoint(p string) bool {
	var st, pst unix.Stat_t
	if unix.Lstat(p, &st) != nil || unix.Lstat(filepath.Dir(p), &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev
}

// cachedLayers unpacks each layer of img once, in overlay format, into
// layers/<diffid> and returns those directories bottom first.
func (d *Driver) cachedLayers(ctx context.Context, img v1.Image) ([]string, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "read image layers")
	}
	var dirs []string
	for i, l := range layers {
		diffID, err := l.DiffID()
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Invalid, err, "layer %d digest", i)
		}
		dir := filepath.Join(d.cfg.Root, "layers", diffID.Hex)
		if err := d.unpackLayerOnce(ctx, l, dir); err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, diffID, err)
		}
		dirs = append(dirs, dir)
	}
	return dirs, nil
}

func (d *Driver) unpackLayerOnce(ctx context.Context, l v1.Layer, dir string) error {
	defer d.layers.lock(dir)()
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".unpack-")
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create layer directory")
	}
	os.Chmod(tmp, 0o755)
	if err := oci.UnpackLayer(ctx, l, tmp, oci.UnpackOptions{Overlay: true}); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return errdefs.Wrap(errdefs.Internal, err, "store unpacked layer")
	}
	return nil
}

// shimAlive reports whether the shim recorded in bundle is still running.
func shimAlive(bundle string) (shimInfo, bool) {
	var info shimInfo
	if err := readJSON(filepath.Join(bundle, fileShim), &info); err != nil || info.Pid <= 0 {
		return info, false
	}
	st := procStartTime(info.Pid)
	return info, st != 0 && st == info.StartTime
}

// Inspect implements driver.Driver.
func (d *Driver) Inspect(ctx context.Context, id string) (driver.Status, error) {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return driver.Status{}, err
	}
	return d.status(ctx, id, bundle), nil
}

func (d *Driver) status(ctx context.Context, id, bundle string) driver.Status {
	st := driver.Status{ID: id, State: driver.StateStopped}
	if _, alive := shimAlive(bundle); alive {
		var s shimStatus
		if err := readJSON(filepath.Join(bundle, fileStatus), &s); err != nil {
			st.State = driver.StateProvisioning
			return st
		}
		st.State, st.Pid, st.StartedAt, st.Restarts = driver.StateRunning, s.Pid, s.StartedAt, s.Restarts
		if s.State == shimStateWait {
			st.Pid = 0
			st.ExitCode, st.FinishedAt = s.ExitCode, s.FinishedAt
		}
		return st
	}
	var s shimStatus
	if err := readJSON(filepath.Join(bundle, fileExit), &s); err == nil {
		st.ExitCode, st.StartedAt, st.FinishedAt, st.Restarts = s.ExitCode, s.StartedAt, s.FinishedAt, s.Restarts
		if s.Error != "" {
			st.State, st.Error = driver.StateFailed, s.Error
		}
		return st
	}
	// No shim and no exit file: never started, or the shim died. A
	// container runc still runs is reported running, without an owner.
	if c, err := d.rc.State(ctx, id); err == nil && c.Status == "running" {
		st.State, st.Pid = driver.StateRunning, c.Pid
	}
	return st
}

// List implements driver.Driver.
func (d *Driver) List(ctx context.Context) ([]driver.Status, error) {
	ents, err := os.ReadDir(filepath.Join(d.cfg.Root, "containers"))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "list containers")
	}
	var out []driver.Status
	for _, e := range ents {
		bundle, _, err := d.loadSpec(e.Name())
		if err != nil {
			continue
		}
		out = append(out, d.status(ctx, e.Name(), bundle))
	}
	return out, nil
}

// Start implements driver.Driver: it starts a new shim, which re-creates the
// runc container from the bundle. Starting a running container is a no-op.
func (d *Driver) Start(ctx context.Context, id string) error {
	return d.StartWith(ctx, id, driver.StartOptions{})
}

// StartWith implements driver.AttachStarter: Start, with the first run held
// by the shim until opts.Attachers attach streams have joined it. A command
// that cannot be executed is an Invalid error with Docker's message (the
// exit code, 126 or 127, is in the container's status).
func (d *Driver) StartWith(ctx context.Context, id string, opts driver.StartOptions) error {
	bundle, spec, err := d.loadSpec(id)
	if err != nil {
		return err
	}
	if _, alive := shimAlive(bundle); alive {
		return nil
	}
	if err := mountOverlay(bundle); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "mount rootfs of %s", id)
	}
	if err := d.mountShares(ctx, spec); err != nil {
		return err
	}
	// Volumes' filesystems are unmounted after a reboot too.
	if err := d.mountVolumes(ctx, spec.Options.Volumes); err != nil {
		return err
	}
	if _, ok := primaryNIC(spec.NICs); ok && !network.NetNSExists(network.NetNSName(id)) {
		if err := setupNetwork(id, spec.NICs); err != nil {
			return err
		}
	}
	for _, f := range []string{fileStop, fileExit, fileStatus, fileShim} {
		os.Remove(filepath.Join(bundle, f))
	}
	args := append(append([]string{}, d.cfg.ShimArgs...),
		"-bundle", bundle, "-id", id, "-root", d.rc.Root, "-runc", d.cfg.RuncBinary,
		"-restart", spec.Restart.Name, "-max-retries", strconv.Itoa(spec.Restart.MaximumRetryCount),
		"-log-max-size", strconv.FormatInt(d.cfg.LogMaxSize, 10), "-log-files", strconv.Itoa(d.cfg.LogFiles))
	if spec.OpenStdin {
		args = append(args, "-stdin")
	}
	if spec.StdinOnce {
		args = append(args, "-stdin-once")
	}
	if spec.Tty {
		args = append(args, "-tty")
	}
	if opts.Attachers > 0 {
		args = append(args, "-wait-attach", strconv.Itoa(opts.Attachers))
	}
	logf, err := os.OpenFile(filepath.Join(bundle, fileShimLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open shim log of %s", id)
	}
	defer logf.Close()
	cmd := exec.Command(d.cfg.ShimPath, args...)
	cmd.Env = append(os.Environ(), d.cfg.ShimEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = bundle
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "start shim for %s", id)
	}
	// The shim outlives this call (and the agent); reap it if it ends
	// while we are still around.
	go cmd.Wait()

	deadline := time.Now().Add(d.cfg.StartTimeout)
	for {
		var s shimStatus
		if readJSON(filepath.Join(bundle, fileStatus), &s) == nil && s.Pid > 0 {
			return nil
		}
		if readJSON(filepath.Join(bundle, fileExit), &s) == nil {
			if s.Error != "" {
				if s.ExitCode != nil && (*s.ExitCode == 126 || *s.ExitCode == 127) {
					return errdefs.New(errdefs.Invalid, "%s", s.Error)
				}
				return errdefs.New(errdefs.Internal, "container %s failed to start: %s", id, s.Error)
			}
			return nil // it ran and exited already
		}
		if time.Now().After(deadline) {
			return errdefs.New(errdefs.Unavailable, "container %s did not start within %s; see %s", id, d.cfg.StartTimeout, filepath.Join(bundle, fileShimLog))
		}
		select {
		case <-ctx.Done():
			return errdefs.Wrap(errdefs.Unavailable, ctx.Err(), "start of container %s", id)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Stop implements driver.Driver: the container's stop signal (SIGTERM
// unless its spec names another) to its init, then after grace SIGKILL to
// every process of the container. A stopped container is never restarted
// by its restart policy. Stopping a stopped container is a no-op.
func (d *Driver) Stop(ctx context.Context, id string, grace time.Duration) error {
	return d.StopSignal(ctx, id, 0, grace)
}

// StopSignal implements driver.Signaler: Stop with sig (0: the container's
// stop signal) sent first.
func (d *Driver) StopSignal(ctx context.Context, id string, sig int, grace time.Duration) error {
	bundle, spec, err := d.loadSpec(id)
	if err != nil {
		return err
	}
	if sig <= 0 {
		sig = spec.StopSignal
	}
	if sig <= 0 {
		sig = int(unix.SIGTERM)
	}
	if err := os.WriteFile(filepath.Join(bundle, fileStop), nil, 0o600); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "mark %s stopped", id)
	}
	if _, alive := shimAlive(bundle); !alive {
		// Without a shim there is nobody to wait for; make sure no
		// orphaned container process lives on.
		d.rc.Kill(ctx, id, int(unix.SIGKILL), &gorunc.KillOpts{All: true})
		return nil
	}
	if grace > 0 && sig != int(unix.SIGKILL) {
		d.rc.Kill(ctx, id, sig, nil)
		if waitShim(ctx, bundle, grace) {
			return nil
		}
	}
	d.rc.Kill(ctx, id, int(unix.SIGKILL), &gorunc.KillOpts{All: true})
	if waitShim(ctx, bundle, 10*time.Second) {
		return nil
	}
	return errdefs.New(errdefs.Unavailable, "container %s did not stop after SIGKILL within 10 s", id)
}

// Signal implements driver.Signaler: sig to the container's init, as
// `docker kill` sends it. With stop the container is marked stopped first.
func (d *Driver) Signal(ctx context.Context, id string, sig int, stop bool) error {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return err
	}
	if sig <= 0 || sig > 64 {
		return errdefs.InvalidArgument("invalid signal %d", sig)
	}
	if _, alive := shimAlive(bundle); !alive {
		return errdefs.Conflictf("container %s is not running", id)
	}
	if stop {
		if err := os.WriteFile(filepath.Join(bundle, fileStop), nil, 0o600); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "mark %s stopped", id)
		}
	}
	if err := d.rc.Kill(ctx, id, sig, nil); err != nil {
		if _, alive := shimAlive(bundle); !alive {
			return errdefs.Conflictf("container %s is not running", id)
		}
		return errdefs.Wrap(errdefs.Conflict, err, "signal %d to container %s", sig, id)
	}
	return nil
}

func waitShim(ctx context.Context, bundle string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if _, alive := shimAlive(bundle); !alive {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Delete implements driver.Driver: it kills the container if it runs and
// removes its runc state, rootfs mount, bundle, logs, network namespace and
// veth, and cgroups. Deleting an unknown container is a no-op.
func (d *Driver) Delete(ctx context.Context, id string) error {
	bundle, err := d.bundle(id)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bundle); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_, spec, err := d.loadSpec(id)
	if err == nil {
		if err := d.Stop(ctx, id, 0); err != nil {
			return err
		}
	}
	if err := d.cleanup(ctx, id, bundle); err != nil {
		return err
	}
	d.unmountShares(spec)
	return nil
}

func (d *Driver) cleanup(ctx context.Context, id, bundle string) error {
	errs := d.releaseHost(ctx, id, bundle)
	if len(errs) == 0 {
		if err := os.RemoveAll(bundle); err != nil {
			errs = append(errs, err)
		}
		removeSockets(bundle)
	}
	if len(errs) > 0 {
		return errdefs.Wrap(errdefs.Internal, errors.Join(errs...), "remove container %s", id)
	}
	return nil
}

var _ driver.Updater = (*Driver)(nil)

// Update implements driver.Updater: it changes the memory, CPU and pids
// limits of a container, live if it runs, and in its bundle so that later
// starts keep them. Other fields of spec are ignored.
func (d *Driver) Update(ctx context.Context, spec driver.Spec) error {
	bundle, cur, err := d.loadSpec(spec.ID)
	if err != nil {
		return err
	}
	cur.MemoryMiB, cur.VCPUs, cur.CPUShares, cur.PIDsLimit = spec.MemoryMiB, spec.VCPUs, spec.CPUShares, spec.PIDsLimit
	res := resources(cur)
	if _, alive := shimAlive(bundle); alive {
		if err := d.rc.Update(ctx, spec.ID, res); err != nil {
			return errdefs.Wrap(errdefs.Conflict, err, "update limits of running container %s", spec.ID)
		}
	}
	var s specs.Spec
	if err := readJSON(filepath.Join(bundle, fileConfig), &s); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "read runtime spec of %s", spec.ID)
	}
	s.Linux.Resources = res
	if err := writeJSONAtomic(filepath.Join(bundle, fileConfig), &s); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "write runtime spec of %s", spec.ID)
	}
	if err := writeJSONAtomic(filepath.Join(bundle, fileSpec), cur); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "write spec of %s", spec.ID)
	}
	return nil
}

// removeSockets removes the container's sockets kept outside its bundle
// (driver.SocketPath), if any.
func removeSockets(bundle string) {
	for _, name := range []string{fileAttach, fileConsole} {
		os.Remove(driver.SocketPath(bundle, name))
	}
}

// ShimBinary is the name of the shim's own executable (cmd/flotilla-shim),
// which starts faster than the whole flotilla binary.
const ShimBinary = "flotilla-shim"

// defaultShim is the shim of a driver in executable exe: ShimBinary next
// to it if it is there, else exe runc-shim.
func defaultShim(exe string) (string, []string) {
	if shim := filepath.Join(filepath.Dir(exe), ShimBinary); isExecutable(shim) {
		return shim, []string{}
	}
	return exe, []string{"runc-shim"}
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// keyedLocks hands out one mutex per key (a layer's or a volume's
// directory), made on first use.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*sync.Mutex
}

// lock locks key and returns the unlock.
func (k *keyedLocks) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*sync.Mutex{}
	}
	mu, ok := k.m[key]
	if !ok {
		mu = &sync.Mutex{}
		k.m[key] = mu
	}
	k.mu.Unlock()
	mu.Lock()
	return mu.Unlock
}

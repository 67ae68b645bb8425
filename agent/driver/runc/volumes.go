package runc

// Volumes' storage on the node, under Root/volumes/<id>:
//
//	disk.img   a sparse file of the volume's size, formatted ext4
//	_data/     where disk.img is loop-mounted (nosuid, nodev); containers
//	           bind-mount this directory
//
// A volume with a size gets its own filesystem of that size, so a
// container that fills it gets ENOSPC and the node's disk is safe. The
// image is made and mounted the first time a container on the node uses
// the volume, and mounted again after a reboot when one starts; it stays
// mounted while the volume exists, and RemoveVolume unmounts it (the loop
// device goes with the mount: mount(8) sets it to clear itself) and
// deletes the directory.
//
// A volume without a size, or one whose plain _data directory was made
// before sizes were enforced, is a plain directory. So is every volume on
// a node that cannot loop-mount (no /dev/loop-control, no mkfs.ext4, or a
// first mount that fails): there the size is not enforced, which the
// driver logs once, and containers still start.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

const (
	volumeImage = "disk.img"
	volumeData  = "_data"
)

var _ driver.VolumeRemover = (*Driver)(nil)

// volumes serializes the making, mounting and removing of each volume's
// storage, and remembers whether the node can loop-mount.
type volumes struct {
	mu   sync.Mutex
	keys keyedLocks

	probe    sync.Once
	loopErr  error // why volumes cannot be loop-mounted here; nil when they can (under mu)
	warnOnce sync.Once
}

// lock locks volume id's storage and returns the unlock.
func (v *volumes) lock(id string) func() { return v.keys.lock(id) }

// canLoopMount reports (once) whether this node can give volumes a
// filesystem of their own.
func (v *volumes) canLoopMount() error {
	v.probe.Do(func() {
		if _, err := os.Stat("/dev/loop-control"); err != nil {
			v.cannotLoopMount(fmt.Errorf("no loop devices: %w", err))
			return
		}
		for _, c := range []string{"mkfs.ext4", "mount"} {
			if _, err := exec.LookPath(c); err != nil {
				v.cannotLoopMount(fmt.Errorf("%s not found: %w", c, err))
				return
			}
		}
	})
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.loopErr
}

// cannotLoopMount records why volumes are plain directories from now on.
func (v *volumes) cannotLoopMount(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.loopErr = err
}

func (d *Driver) warnSizeNotEnforced(err error) {
	d.vols.warnOnce.Do(func() {
		d.log.Warn("volume sizes are not enforced on this node: volumes are plain directories", "err", err)
	})
}

func (d *Driver) volumePath(id string) string {
	return filepath.Join(d.cfg.Root, "volumes", id)
}

// mountVolumes makes ready the storage of every volume in vols (see
// VolumeDir).
func (d *Driver) mountVolumes(ctx context.Context, vols []driver.VolumeMount) error {
	for _, v := range vols {
		if v.Remote != nil {
			continue // another node's (share.go)
		}
		if _, err := d.VolumeDir(ctx, v.Volume, v.SizeMiB); err != nil {
			return err
		}
	}
	return nil
}

// VolumeDir implements driver.VolumeSharer: it returns the directory
// holding volume id's files on this node, making its storage if this is
// its first use on the node: a filesystem of sizeMiB mounted there when
// the volume has a size and the node can loop-mount, a plain directory
// otherwise. A volume already made keeps the kind of storage it has. It
// returns Invalid for a bad id or size, Internal when the storage cannot
// be made or mounted.
func (d *Driver) VolumeDir(ctx context.Context, id string, sizeMiB int64) (string, error) {
	if !driver.ValidVolumeID(id) {
		return "", errdefs.InvalidArgument("invalid volume id %q", id)
	}
	if sizeMiB < 0 {
		return "", errdefs.InvalidArgument("invalid size %d MiB of volume %s", sizeMiB, id)
	}
	unlock := d.vols.lock(id)
	defer unlock()
	dir := d.volumePath(id)
	data, img := filepath.Join(dir, volumeData), filepath.Join(dir, volumeImage)
	_, imgErr := os.Stat(img)
	if errors.Is(imgErr, os.ErrNotExist) {
		if _, err := os.Stat(data); err == nil || sizeMiB == 0 {
			return data, mkdirVolume(id, data) // a plain volume, new or old
		}
		if err := d.vols.canLoopMount(); err != nil {
			d.warnSizeNotEnforced(err)
			return data, mkdirVolume(id, data)
		}
		if err := makeVolumeImage(ctx, img, sizeMiB); err != nil {
			return "", errdefs.Wrap(errdefs.Internal, err, "make the storage of volume %s", id)
		}
		if err := mkdirVolume(id, data); err != nil {
			return "", err
		}
		if err := mountVolumeImage(ctx, img, data); err != nil {
			if ctx.Err() != nil {
				return "", errdefs.Wrap(errdefs.Unavailable, err, "mount the storage of volume %s", id)
			}
			// The node cannot loop-mount after all: keep the volume (and
			// every later one) a plain directory rather than fail starts.
			os.Remove(img)
			d.vols.cannotLoopMount(err)
			d.warnSizeNotEnforced(err)
			return data, nil
		}
		// A fresh filesystem's lost+found is not the container's business.
		os.Remove(filepath.Join(data, "lost+found"))
		return data, nil
	} else if imgErr != nil {
		return "", errdefs.Wrap(errdefs.Internal, imgErr, "read the storage of volume %s", id)
	}
	mounted, err := mountedAt(data)
	if err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "read the node's mounts")
	}
	if mounted {
		return data, nil
	}
	// Made before the agent restarted, or before the node rebooted.
	if err := mkdirVolume(id, data); err != nil {
		return "", err
	}
	if err := mountVolumeImage(ctx, img, data); err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "mount the storage of volume %s", id)
	}
	return data, nil
}

func mkdirVolume(id, data string) error {
	if err := os.MkdirAll(data, 0o755); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create the storage of volume %s", id)
	}
	return nil
}

// makeVolumeImage writes img, a sparse ext4 image of sizeMiB with no space
// reserved for root (a volume's files are all its user's). The image only
// takes its name once formatted, so a crash leaves no half-made one.
func makeVolumeImage(ctx context.Context, img string, sizeMiB int64) error {
	if err := os.MkdirAll(filepath.Dir(img), 0o711); err != nil {
		return err
	}
	tmp := img + ".new"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(sizeMiB << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		var out []byte
		out, err = exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0",
			"-E", "lazy_itable_init=1,lazy_journal_init=1", tmp).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
		}
	}
	if err == nil {
		err = os.Rename(tmp, img)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// mountVolumeImage loop-mounts img on data.
func mountVolumeImage(ctx context.Context, img, data string) error {
	start := time.Now()
	out, err := exec.CommandContext(ctx, "mount", "-t", "ext4", "-o", "loop,nosuid,nodev", img, data).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mount %s: %w: %s (%s)", img, err, strings.TrimSpace(string(out)), time.Since(start))
	}
	return nil
}

// mountedAt reports whether something is mounted on dir, as the node's
// mount table (/proc/self/mountinfo) says.
func mountedAt(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mount-point options ...
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountPath(fields[4]) == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// RemoveVolume implements driver.VolumeRemover: it unmounts volume id's
// filesystem (which detaches its loop device) and removes its storage. It
// returns Conflict while a container of this node mounts the volume,
// Invalid for a bad id.
func (d *Driver) RemoveVolume(ctx context.Context, id string) error {
	if !driver.ValidVolumeID(id) {
		return errdefs.InvalidArgument("invalid volume id %q", id)
	}
	unlock := d.vols.lock(id)
	defer unlock()
	dir := d.volumePath(id)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if users := d.volumeUsers(id, false); len(users) > 0 {
		return errdefs.Conflictf("volume %s is mounted by container %s on this node", id, strings.Join(users, ", "))
	}
	data := filepath.Join(dir, volumeData)
	for {
		mounted, err := mountedAt(data)
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "read the node's mounts")
		}
		if !mounted {
			break
		}
		if err := unix.Unmount(data, 0); err != nil {
			if errors.Is(err, unix.EBUSY) {
				return errdefs.Wrap(errdefs.Conflict, err, "volume %s is in use on this node", id)
			}
			return errdefs.Wrap(errdefs.Internal, err, "unmount volume %s", id)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "remove the storage of volume %s", id)
	}
	return nil
}

// ReleaseVolumes implements driver.VolumeRemover: it unmounts the
// filesystems of volumes, and the mounts of other nodes' volumes, that no
// running container of the node uses. (One a
// container uses stays: unmounted here while the container holds it, it
// would be mounted a second time by the next container.)
func (d *Driver) ReleaseVolumes(ctx context.Context) error {
	d.releaseShares(ctx)
	ents, err := os.ReadDir(filepath.Join(d.cfg.Root, "volumes"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return errdefs.Wrap(errdefs.Internal, err, "list volumes")
	}
	var errs []error
	for _, e := range ents {
		if err := d.releaseVolume(ctx, e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errdefs.Wrap(errdefs.Internal, errors.Join(errs...), "unmount volumes")
	}
	return nil
}

func (d *Driver) releaseVolume(ctx context.Context, id string) error {
	unlock := d.vols.lock(id)
	defer unlock()
	data := filepath.Join(d.volumePath(id), volumeData)
	if mounted, err := mountedAt(data); err != nil || !mounted {
		return err
	}
	for _, c := range d.volumeUsers(id, false) {
		if d.status(ctx, c, filepath.Join(d.cfg.Root, "containers", c)).State == driver.StateRunning {
			return nil
		}
	}
	if err := unix.Unmount(data, 0); err != nil {
		return fmt.Errorf("unmount volume %s: %w", id, err)
	}
	return nil
}

// volumeUsers lists the containers of this node, running or not, whose
// spec mounts volume id: from this node's storage, or with remote from
// another node's share of it (share.go).
func (d *Driver) volumeUsers(id string, remote bool) []string {
	ents, _ := os.ReadDir(filepath.Join(d.cfg.Root, "containers"))
	var out []string
	for _, e := range ents {
		var spec driver.Spec
		if err := readJSON(filepath.Join(d.cfg.Root, "containers", e.Name(), fileSpec), &spec); err != nil {
			continue
		}
		for _, v := range spec.Options.Volumes {
			if v.Volume == id && (v.Remote != nil) == remote {
				out = append(out, e.Name())
				break
			}
		}
	}
	return out
}

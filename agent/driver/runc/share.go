package runc

// Volumes of other nodes: a container that mounts a volume whose storage
// lives on another node (driver.VolumeMount.Remote) bind-mounts
// <root>/shares/<id>, where sshfs mounts that node's share of the volume
// (agent/volumes_share.go) before the container starts. One sshfs mount
// serves every container of this node that mounts the volume; it is
// unmounted when the last of them is deleted. sshfs runs on its own, with
// `flotilla volume-pipe` as its transport, so it outlives the agent and
// reconnects by itself when the connection drops.

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var _ driver.VolumeSharer = (*Driver)(nil)

// shareDir is where volume id of another node is mounted on this one.
func shareDir(volumeRoot, id string) string {
	return filepath.Join(filepath.Dir(volumeRoot), "shares", id)
}

// mountShares mounts the other nodes' volumes spec uses, unless they are
// mounted already.
func (d *Driver) mountShares(ctx context.Context, spec driver.Spec) error {
	for _, v := range spec.Options.Volumes {
		if v.Remote == nil {
			continue
		}
		if err := d.mountShare(ctx, v); err != nil {
			return err
		}
	}
	return nil
}

func (d *Driver) mountShare(ctx context.Context, v driver.VolumeMount) error {
	d.shareMu.Lock()
	defer d.shareMu.Unlock()
	dir := shareDir(filepath.Join(d.cfg.Root, "volumes"), v.Volume)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "make the mount point of volume %s", v.Volume)
	}
	if ok, _ := mountedAt(dir); ok {
		if _, err := os.Stat(dir); err == nil {
			return nil
		}
		// A mount whose sshfs is gone (ENOTCONN): replace it.
		exec.Command("fusermount3", "-u", "-z", dir).Run()
	}
	sshfs, err := exec.LookPath("sshfs")
	if err != nil {
		return errdefs.New(errdefs.Unavailable, "volume %s lives on another node, and this node has no sshfs to mount it: install it (apt-get install sshfs)", v.Name)
	}
	pipe := d.cfg.SharePipe
	if len(pipe) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "find the volume pipe")
		}
		pipe = []string{exe, "volume-pipe"}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sshfs,
		"-o", "ssh_command="+strings.Join(pipe, " "),
		// Other nodes write the same files: cache nothing, so each sees
		// the others' changes at once.
		"-o", "reconnect,ServerAliveInterval=15,ServerAliveCountMax=3,allow_other,idmap=none,dir_cache=no,max_conns=2",
		"-o", "attr_timeout=0,entry_timeout=0,negative_timeout=0",
		"-o", "fsname=flotilla-volume:"+v.Volume+",subtype=flotilla",
		"volume:/", dir)
	cmd.Env = append(os.Environ(),
		driver.EnvShareAddress+"="+v.Remote.Address, driver.EnvShareNode+"="+v.Remote.Node,
		driver.EnvShareVolume+"="+v.Volume, driver.EnvShareSize+"="+strconv.FormatInt(v.SizeMiB, 10),
		driver.EnvShareToken+"="+v.Remote.Token)
	if v.Remote.TLS {
		cmd.Env = append(cmd.Env, driver.EnvShareCA+"="+d.cfg.ShareCA)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "mount volume %s from node %s: %s", v.Name, v.Remote.Node, strings.TrimSpace(stderr.String()))
	}
	d.log.Info("volume of another node mounted", "volume", v.Volume, "node", v.Remote.Node, "took", time.Since(t0))
	return nil
}

// unmountShares unmounts the other nodes' volumes that spec (a deleted
// container) used and no other container of this node uses.
func (d *Driver) unmountShares(spec driver.Spec) {
	want := map[string]bool{}
	for _, v := range spec.Options.Volumes {
		if v.Remote != nil {
			want[v.Volume] = true
		}
	}
	if len(want) == 0 {
		return
	}
	d.shareMu.Lock()
	defer d.shareMu.Unlock()
	for id := range want {
		if !slices.ContainsFunc(d.volumeUsers(id, true), func(c string) bool { return c != spec.ID }) {
			d.unmountShare(id)
		}
	}
}

// unmountShare unmounts this node's mount of another node's volume id.
func (d *Driver) unmountShare(id string) {
	dir := shareDir(filepath.Join(d.cfg.Root, "volumes"), id)
	if ok, _ := mountedAt(dir); !ok {
		return
	}
	if out, err := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput(); err != nil {
		d.log.Warn("unmount volume of another node", "volume", id, "err", err, "output", string(out))
		return
	}
	os.Remove(dir)
}

// releaseShares unmounts the other nodes' volumes no running container of
// this node uses (ReleaseVolumes, when the node stops).
func (d *Driver) releaseShares(ctx context.Context) {
	d.shareMu.Lock()
	defer d.shareMu.Unlock()
	ents, _ := os.ReadDir(filepath.Join(d.cfg.Root, "shares"))
	for _, e := range ents {
		inUse := false
		for _, c := range d.volumeUsers(e.Name(), true) {
			if d.status(ctx, c, filepath.Join(d.cfg.Root, "containers", c)).State == driver.StateRunning {
				inUse = true
				break
			}
		}
		if !inUse {
			d.unmountShare(e.Name())
		}
	}
}

var _ driver.ShareUpdater = (*Driver)(nil)

// UpdateShares implements driver.ShareUpdater: the container's spec takes
// the other nodes' volumes' current Remote from vols, so its next start
// mounts them from where they are now.
func (d *Driver) UpdateShares(ctx context.Context, id string, vols []driver.VolumeMount) error {
	bundle, spec, err := d.loadSpec(id)
	if err != nil {
		return err
	}
	changed := false
	for i, v := range spec.Options.Volumes {
		if v.Remote == nil {
			continue
		}
		for _, w := range vols {
			if w.Volume == v.Volume && w.Remote != nil && *w.Remote != *v.Remote {
				spec.Options.Volumes[i].Remote = w.Remote
				changed = true
			}
		}
	}
	if !changed {
		return nil
	}
	if err := writeJSONAtomic(filepath.Join(bundle, fileSpec), spec); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "update the volumes of %s", id)
	}
	return nil
}

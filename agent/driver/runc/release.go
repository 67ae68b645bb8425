package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/agent/network"
	"flotilla/api/errdefs"
)

var _ driver.Releaser = (*Driver)(nil)

// Release implements driver.Releaser: for a stopped container it removes
// the runc state, unmounts the rootfs, deletes the network namespace and
// veth and removes the cgroups, keeping the bundle. Start mounts and
// plumbs it again.
func (d *Driver) Release(ctx context.Context, id string) error {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return err
	}
	if _, alive := shimAlive(bundle); alive {
		return errdefs.Conflictf("container %s is running; stop it before releasing it", id)
	}
	if errs := d.releaseHost(ctx, id, bundle); len(errs) > 0 {
		return errdefs.Wrap(errdefs.Internal, errors.Join(errs...), "release container %s", id)
	}
	return nil
}

// releaseHost removes what container id holds on the host outside its
// bundle directory, returning what could not be removed.
func (d *Driver) releaseHost(ctx context.Context, id, bundle string) []error {
	var errs []error
	d.rc.Delete(ctx, id, &gorunc.DeleteOpts{Force: true})
	rootfs := filepath.Join(bundle, dirRootfs)
	for isMountPoint(rootfs) {
		if err := unix.Unmount(rootfs, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount rootfs: %w", err))
			break
		}
	}
	var spec driver.Spec
	readJSON(filepath.Join(bundle, fileSpec), &spec)
	if len(spec.NICs) > 1 {
		// Extra NICs' host ends go now, not when the kernel gets round to
		// the namespace, so that their fabric can be released below.
		for n := 1; n < 10; n++ {
			network.DeleteLink(network.VethName(id, n))
		}
	}
	if err := network.TeardownInstanceNetNS(network.NetNSName(id), network.VethName(id, 0)); err != nil {
		errs = append(errs, err)
	}
	for _, nic := range spec.NICs {
		if nic.VNI != 0 {
			if _, err := network.ReleaseFabric(nic.VNI); err != nil {
				errs = append(errs, err)
			}
		}
	}
	ctrls, _ := os.ReadDir("/sys/fs/cgroup")
	for _, c := range ctrls {
		p := filepath.Join("/sys/fs/cgroup", c.Name(), CgroupParent, id)
		if err := unix.Rmdir(p); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", p, err))
		}
		// The shared parent goes when its last container does (EBUSY otherwise).
		unix.Rmdir(filepath.Dir(p))
	}
	return errs
}

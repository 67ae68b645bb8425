package qemu

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/api/errdefs"
	"flotilla/internal/atomicfile"
)

// Lines the tiny image prints on its serial console.
const (
	TinyMarkerInit  = "FLOTILLA-TINY: init reached"
	TinyMarkerReady = "FLOTILLA-TINY: ready"
	TinyMetaPrefix  = "FLOTILLA-META: " // followed by key=value
	TinyNetPrefix   = "FLOTILLA-NET: "  // followed by "<iface> <ip>/<prefix> gw=<gateway>"
	TinyPowerButton = "FLOTILLA-TINY: power button"
	TinyDiskPrefix  = "FLOTILLA-DISK: " // followed by "<dev> sectors=<512-byte sectors> serial=<serial>"
)

// tinyModules are loaded by the tiny image's init, with their dependencies:
// virtio disks and NIC, FAT for the config drive, and the ACPI button with
// evdev so that system_powerdown reaches userspace.
var tinyModules = []string{"virtio_pci", "virtio_net", "virtio_blk", "vfat", "nls_cp437", "nls_ascii", "button", "evdev"}

// tinyInit is the tiny image's /init. It prints markers and the metadata it
// read from the config drive, configures each NIC from flotilla/net<N>.env,
// runs the user-script, prints each virtio disk's size and serial, and
// powers off when the ACPI power button is pressed.
const tinyInit = `#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
echo "FLOTILLA-TINY: init reached uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m || echo "FLOTILLA-TINY: insmod $m failed"; done
mkdir -p /run/cidata
found=
i=0
while [ -z "$found" ] && [ $i -lt 100 ]; do
  for d in /dev/vd*; do
    [ -b "$d" ] || continue
    mount -t vfat -o ro "$d" /run/cidata 2>/dev/null || continue
    if [ -d /run/cidata/flotilla ]; then found=$d; break; fi
    umount /run/cidata
  done
  [ -n "$found" ] || { sleep 0.1; i=$((i+1)); }
done
if [ -n "$found" ]; then
  echo "FLOTILLA-TINY: config drive $found"
  for f in /run/cidata/flotilla/meta/*; do
    [ -f "$f" ] && echo "FLOTILLA-META: ${f##*/}=$(cat "$f")"
  done
  for f in /run/cidata/flotilla/net*.env; do
    [ -f "$f" ] || continue
    (
      . "$f"
      iface=
      for n in /sys/class/net/*; do
        [ "$(cat $n/address)" = "$MAC" ] && iface=${n##*/}
      done
      if [ -z "$iface" ]; then echo "FLOTILLA-TINY: no interface with MAC $MAC"; exit 0; fi
      hostname "$HOSTNAME" 2>/dev/null
      ip link set "$iface" up
      ip addr add "$IP/$PREFIX" dev "$iface"
      [ -n "$GATEWAY" ] && ip route add default via "$GATEWAY"
      echo "FLOTILLA-NET: $iface $IP/$PREFIX gw=$GATEWAY"
    )
  done
  if [ -f /run/cidata/flotilla/meta/user-script ]; then
    (sh /run/cidata/flotilla/meta/user-script 2>&1 | sed 's/^/FLOTILLA-USER: /') &
  fi
else
  echo "FLOTILLA-TINY: no config drive"
fi
for e in /sys/class/input/event*; do
  case "$(cat $e/device/name 2>/dev/null)" in
  *"Power Button"*)
    # devtmpfs may create the node a little after sysfs shows the device:
    # wait for it before saying ready. evdev refuses reads shorter than one
    # event (24 bytes); power off only after a real event was read.
    n=/dev/input/${e##*/}; i=0; while [ ! -c $n ] && [ $i -lt 50 ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i+1)); done
    (dd if=$n bs=64 count=1 >/dev/null 2>&1 && { echo "FLOTILLA-TINY: power button"; poweroff -f; }) &
    ;;
  esac
done
for b in /sys/block/vd*; do
  [ -f "$b/size" ] && echo "FLOTILLA-DISK: ${b##*/} sectors=$(cat $b/size) serial=$(cat $b/serial 2>/dev/null)"
done
echo "FLOTILLA-TINY: ready"
while :; do sleep 3600; done
`

// TinyImage is a small bootable VM for tests and `flotilla dev`: the cloud
// kernel plus a busybox initramfs whose init is described at tinyInit.
type TinyImage struct {
	Kernel Kernel
	Initrd string // path of the gzip'd newc initramfs
	// Image is the kernel-format VM image (see the package doc).
	Image v1.Image
}

// BuildTinyImage fetches the kernel (FetchKernel) and builds the tiny
// initramfs into cacheDir/tiny, reusing a previous build with the same
// content. It needs busybox-static's /bin/busybox; it returns Unavailable,
// saying what to install, when busybox or the kernel cannot be had.
func BuildTinyImage(ctx context.Context, cacheDir string) (TinyImage, error) {
	k, err := FetchKernel(ctx, cacheDir)
	if err != nil {
		return TinyImage{}, err
	}
	initrd, err := buildTinyInitrd(k, filepath.Join(cacheDir, "tiny"))
	if err != nil {
		return TinyImage{}, err
	}
	img, err := NewVMImage(VMFiles{Kernel: k.Vmlinuz, Initrd: initrd, Cmdline: "quiet"})
	if err != nil {
		return TinyImage{}, err
	}
	return TinyImage{Kernel: k, Initrd: initrd, Image: img}, nil
}

// busyboxPath is where Debian's busybox-static installs a static busybox.
var busyboxPath = "/bin/busybox"

func buildTinyInitrd(k Kernel, dir string) (string, error) {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return "", errdefs.Wrap(errdefs.Unavailable, err, "the tiny VM image needs a static busybox at %s: apt-get install -y busybox-static", busyboxPath)
	}
	mods, err := moduleLoadOrder(k.ModulesDir, tinyModules)
	if err != nil {
		return "", err
	}
	var raw bytes.Buffer
	cw := newCPIOWriter(&raw)
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "etc", "lib", "lib/modules"} {
		if err := cw.Dir(d, 0o755); err != nil {
			return "", err
		}
	}
	cw.File("bin/busybox", 0o755, bb)
	cw.Symlink("bin/sh", "busybox")
	cw.File("init", 0o755, []byte(tinyInit))
	var order []string
	for _, m := range mods {
		b, err := os.ReadFile(m)
		if err != nil {
			return "", errdefs.Wrap(errdefs.Internal, err, "read kernel module %s", m)
		}
		cw.File("lib/modules/"+filepath.Base(m), 0o644, b)
		order = append(order, filepath.Base(m))
	}
	cw.File("etc/modules.order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	if err := cw.Close(); err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "write initramfs")
	}
	sum := sha256.Sum256(raw.Bytes())
	path := filepath.Join(dir, "initrd-"+hex.EncodeToString(sum[:6])+".img")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	zw.Write(raw.Bytes())
	if err := zw.Close(); err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "compress initramfs")
	}
	if err := writeFileAtomic(path, gz.Bytes(), 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// writeFileAtomic writes a file through a rename, never leaving it torn.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := atomicfile.WriteFile(path, data, perm, atomicfile.Options{DirPerm: 0o755}); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "write %s", path)
	}
	return nil
}

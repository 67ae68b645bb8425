// Package qemu runs Flotilla's virtual machines (brands bhyve and kvm) with
// qemu-system-x86_64: one daemonized QEMU per instance, driven over QMP.
//
// Imports: standard library, api/errdefs, agent/driver, agent/network (taps
// on the network's bridge) and go-containerregistry. It never imports store,
// api or the agent loop.
//
// # On the node
//
// Every instance owns a directory Config.Root/instances/<id>/ holding
// state.json (the Spec and what Create derived from it), the disk
// (disk.qcow2, a qcow2 overlay backed by the image's disk in
// Config.Root/images/<digest>/) or the kernel pair (vmlinuz, initrd.img),
// the config drive directory cidata/, and while QEMU runs qemu.pid and
// qmp.sock. console.log (ConsoleLogPath) keeps the serial console across
// boots. Nothing else is kept in memory that a restarted agent would need:
// List reads these directories and reaches running VMs through their QMP
// sockets, so an agent restart never reboots a VM.
//
// # VM image format
//
// A VM image is an OCI image (built by NewVMImage) whose config carries the
// label "io.flotilla.vm.format" (also set as a manifest annotation):
//
//   - "disk": a layer holds disk.qcow2, a bootable qcow2 disk.
//   - "kernel": a layer holds vmlinuz and initrd.img; the optional label
//     "io.flotilla.vm.cmdline" is appended to the kernel command line.
//
// Layers are tar archives; only those file names at the archive root are
// used, everything else is ignored.
//
// # Metadata channel
//
// Each VM gets a NoCloud-style config drive: a read-only FAT disk labelled
// "cidata" (QEMU's vvfat view of the cidata/ directory, on virtio-blk), so
// cloud-init in stock cloud images finds it. It holds
//
//   - meta-data: instance-id, local-hostname and public-keys (YAML);
//   - user-data: the "user-data" metadata key, else "user-script";
//   - network-config: network config version 2 with each NIC's static address;
//   - flotilla/metadata.json: all customer metadata as one JSON object;
//   - flotilla/meta/<key>: one file per metadata key whose name is a safe
//     file name (root_authorized_keys, user-script, ...);
//   - flotilla/net<N>.env: MAC, IP, PREFIX, GATEWAY and RESOLVERS of NIC N as
//     shell assignments, for images without cloud-init (the tiny image).
//
// # Acceleration
//
// /dev/kvm existing does not mean it can boot a stock kernel (nested PVM
// hosts cannot), so ProbeKVM boots a kernel under KVM once and falls back to
// TCG unless the kernel prints its banner in time.
//
// # Fixtures
//
// FetchKernel takes the Debian cloud kernel package (apt-get download, then
// dpkg-deb -x into a cache dir; never installed on the host) and
// BuildTinyImage wraps it with a busybox initramfs into a kernel-format VM
// image that boots under TCG in about 3 s. Tests keep that cache in
// $FLOTILLA_VM_CACHE (default: <tmp>/flotilla-vm-cache); VM tests need root
// and qemu-system-x86, and skip with the reason otherwise.
package qemu

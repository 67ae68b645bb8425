package qemu

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// kvmProbeTimeout bounds the KVM boot probe. A working KVM prints the kernel
// banner within a fraction of a second; the failure mode seen on nested PVM
// hosts is a silent hang, so waiting longer gains nothing.
const kvmProbeTimeout = 6 * time.Second

// kernelBanner is the first line a Linux kernel prints on its console once
// it runs in long mode.
var kernelBanner = []byte("Linux version ")

var (
	probeMu    sync.Mutex
	probeCache = map[string]string{} // kernel path -> accel
)

// ProbeKVM reports the accelerator VMs should use on this host: "kvm" if
// /dev/kvm opens and a real boot of kernel (with initrd, which may be empty)
// under -accel kvm prints the kernel banner within a few seconds, else
// "tcg". The device existing is not enough: a nested paravirtual KVM (PVM)
// accepts KVM_CREATE_VM but hangs stock kernels. The answer is cached per
// kernel for the life of the process; a cancelled ctx yields "tcg" without
// caching.
func ProbeKVM(ctx context.Context, kernel, initrd string) string {
	probeMu.Lock()
	defer probeMu.Unlock()
	if a, ok := probeCache[kernel]; ok {
		return a
	}
	a, definitive := probeKVM(ctx, kernel, initrd)
	if definitive {
		probeCache[kernel] = a
	}
	return a
}

func probeKVM(ctx context.Context, kernel, initrd string) (accel string, definitive bool) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return AccelTCG, true
	}
	f.Close()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return AccelTCG, true
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, kvmProbeTimeout)
	defer cancel()
	args := []string{"-nodefaults", "-display", "none", "-no-reboot", "-accel", "kvm", "-cpu", "host",
		"-m", "128", "-serial", "stdio", "-kernel", kernel, "-append", "console=ttyS0 panic=-1 rdinit=/bin/false"}
	if initrd != "" {
		args = append(args, "-initrd", initrd)
	}
	cmd := exec.CommandContext(ctx, qemu, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return AccelTCG, false
	}
	if err := cmd.Start(); err != nil {
		return AccelTCG, true
	}
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if bytes.Contains(sc.Bytes(), kernelBanner) {
				found <- true
				return
			}
		}
		found <- false
	}()
	var ok bool
	select {
	case ok = <-found:
	case <-ctx.Done():
	}
	cmd.Process.Kill()
	cmd.Wait()
	if ok {
		return AccelKVM, true
	}
	// A probe cut short by the caller says nothing about the host.
	return AccelTCG, parent.Err() == nil
}

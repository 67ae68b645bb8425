package qemu

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"flotilla/api/errdefs"
)

// KernelMetaPackage is the Debian meta-package whose dependency names the
// current cloud kernel; FetchKernel downloads that kernel's package.
const KernelMetaPackage = "linux-image-cloud-amd64"

// Kernel is a distribution kernel unpacked from its .deb, never installed
// as the host's kernel.
type Kernel struct {
	Package string // e.g. linux-image-6.1.0-56-cloud-amd64
	Release string // e.g. 6.1.0-56-cloud-amd64
	Vmlinuz string // path of the bootable image
	// ModulesDir is lib/modules/<release> of the package.
	ModulesDir string
}

// FetchKernel returns the cloud kernel cached under cacheDir/kernel,
// downloading it first with `apt-get download` and unpacking it with
// `dpkg-deb -x` if it is not there yet. A kernel already in the cache is
// used without asking apt, so tests and `flotilla dev` work offline once it
// has been fetched. It returns Unavailable, saying what to install or run,
// when apt cannot provide the package.
func FetchKernel(ctx context.Context, cacheDir string) (Kernel, error) {
	root := filepath.Join(cacheDir, "kernel")
	if k, err := cachedKernel(root); err == nil {
		return k, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return Kernel{}, errdefs.Wrap(errdefs.Internal, err, "create kernel cache %s", root)
	}
	for _, tool := range []string{"apt-cache", "apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return Kernel{}, errdefs.Wrap(errdefs.Unavailable, err,
				"%s not found: the VM kernel comes from the Debian package %s; on a non-Debian host unpack a cloud kernel .deb into %s/<package>/ (boot/vmlinuz-* and lib/modules/) and create %s/<package>/.done",
				tool, KernelMetaPackage, root, root)
		}
	}
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", KernelMetaPackage).CombinedOutput()
	if err != nil {
		return Kernel{}, errdefs.Wrap(errdefs.Unavailable, fmt.Errorf("%v: %s", err, bytes.TrimSpace(out)),
			"apt-cache does not know %s: run `apt-get update` (Debian 12 main) and retry", KernelMetaPackage)
	}
	pkg, err := parseAptDepends(out, "linux-image-")
	if err != nil {
		return Kernel{}, err
	}
	tmp, err := os.MkdirTemp(root, ".fetch-")
	if err != nil {
		return Kernel{}, errdefs.Wrap(errdefs.Internal, err, "create temporary dir in %s", root)
	}
	defer os.RemoveAll(tmp)
	dl := exec.CommandContext(ctx, "apt-get", "download", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return Kernel{}, errdefs.Wrap(errdefs.Unavailable, fmt.Errorf("%v: %s", err, bytes.TrimSpace(out)),
			"apt-get download %s failed: check the package mirror (apt-get update) or copy the .deb into %s and unpack it there with dpkg-deb -x", pkg, root)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return Kernel{}, errdefs.New(errdefs.Internal, "apt-get download %s left %d .deb files", pkg, len(debs))
	}
	unpacked := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], unpacked).CombinedOutput(); err != nil {
		return Kernel{}, errdefs.Wrap(errdefs.Internal, fmt.Errorf("%v: %s", err, bytes.TrimSpace(out)), "unpack %s", debs[0])
	}
	if err := os.WriteFile(filepath.Join(unpacked, ".done"), []byte(pkg+"\n"), 0o644); err != nil {
		return Kernel{}, errdefs.Wrap(errdefs.Internal, err, "mark kernel cache")
	}
	dst := filepath.Join(root, pkg)
	if err := os.Rename(unpacked, dst); err != nil && !os.IsExist(err) {
		// A concurrent fetch may have won the race; its copy is as good.
		if _, statErr := os.Stat(filepath.Join(dst, ".done")); statErr != nil {
			return Kernel{}, errdefs.Wrap(errdefs.Internal, err, "move kernel into %s", dst)
		}
	}
	return kernelIn(dst, pkg)
}

// cachedKernel returns the newest complete kernel under root.
func cachedKernel(root string) (Kernel, error) {
	dones, _ := filepath.Glob(filepath.Join(root, "linux-image-*", ".done"))
	if len(dones) == 0 {
		return Kernel{}, errdefs.NotFoundf("no kernel cached in %s", root)
	}
	sort.Strings(dones)
	dir := filepath.Dir(dones[len(dones)-1])
	return kernelIn(dir, filepath.Base(dir))
}

func kernelIn(dir, pkg string) (Kernel, error) {
	vmlinuz, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return Kernel{}, errdefs.New(errdefs.NotFound, "kernel cache %s has %d boot/vmlinuz-* files, want 1: remove it and fetch again", dir, len(vmlinuz))
	}
	release := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	return Kernel{
		Package:    pkg,
		Release:    release,
		Vmlinuz:    vmlinuz[0],
		ModulesDir: filepath.Join(dir, "lib", "modules", release),
	}, nil
}

// parseAptDepends returns the first dependency starting with prefix in the
// output of `apt-cache depends`. It returns Unavailable when there is none.
func parseAptDepends(out []byte, prefix string) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		line = strings.TrimPrefix(line, "|") // alternatives
		dep, ok := strings.CutPrefix(line, "Depends:")
		if !ok {
			continue
		}
		dep = strings.TrimSpace(dep)
		if strings.HasPrefix(dep, prefix) && validPackageName(dep) {
			return dep, nil
		}
	}
	return "", errdefs.New(errdefs.Unavailable, "apt-cache lists no %s* dependency of %s: run `apt-get update` and check that Debian main is a source", prefix, KernelMetaPackage)
}

// validPackageName reports whether s is a Debian package name (policy 5.6.1),
// so that nothing else is ever passed to apt-get.
func validPackageName(s string) bool {
	if len(s) < 2 || len(s) > 128 {
		return false
	}
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// moduleDepends reads the depends= entry of a kernel module's .modinfo
// section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "%s is not a kernel module", path)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errdefs.New(errdefs.Invalid, "%s has no .modinfo section", path)
	}
	data, err := io.ReadAll(io.LimitReader(sec.Open(), 1<<20))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "read .modinfo of %s", path)
	}
	return parseModinfoDepends(data), nil
}

// parseModinfoDepends extracts the module names of the NUL-separated
// key=value list in a .modinfo section.
func parseModinfoDepends(data []byte) []string {
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" && !strings.ContainsAny(d, "/\x00") && d != "." && d != ".." {
				deps = append(deps, d)
			}
		}
	}
	return deps
}

// findModules indexes modulesDir: module name -> path of its .ko file.
func findModules(modulesDir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(modulesDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			name := strings.TrimSuffix(d.Name(), ".ko")
			idx[name] = p
			idx[strings.ReplaceAll(name, "-", "_")] = p
		}
		return nil
	})
	if err != nil {
		return nil, errdefs.Wrap(errdefs.NotFound, err, "kernel modules %s", modulesDir)
	}
	return idx, nil
}

// moduleLoadOrder returns the .ko paths of wanted and everything they
// depend on, dependencies first, in a stable order.
func moduleLoadOrder(modulesDir string, wanted []string) ([]string, error) {
	idx, err := findModules(modulesDir)
	if err != nil {
		return nil, err
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string) error
	visit = func(name string) error {
		switch state[name] {
		case 1:
			return errdefs.New(errdefs.Invalid, "kernel module dependency cycle at %s", name)
		case 2:
			return nil
		}
		path, ok := idx[name]
		if !ok {
			return errdefs.New(errdefs.NotFound, "kernel module %s is not in %s (is it built in or missing from this kernel?)", name, modulesDir)
		}
		state[name] = 1
		deps, err := moduleDepends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, path)
		return nil
	}
	for _, w := range wanted {
		if err := visit(w); err != nil {
			return nil, err
		}
	}
	return order, nil
}

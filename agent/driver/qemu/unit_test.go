package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// readCPIO is a minimal newc reader for checking what cpioWriter wrote.
func readCPIO(t *testing.T, b []byte) map[string][2]string { // name -> {mode, data}
	t.Helper()
	out := map[string][2]string{}
	off := 0
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad cpio header at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, namesize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+namesize-1])
		off += 110 + namesize
		off = (off + 3) &^ 3
		data := string(b[off : off+size])
		off = (off + size + 3) &^ 3
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after trailer", len(b)-off)
			}
			return out
		}
		out[name] = [2]string{fmt.Sprintf("%o", mode), data}
	}
}

func TestCPIOWriter(t *testing.T) {
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	w.Dir("bin", 0o755)
	w.File("bin/busybox", 0o755, []byte("12345"))
	w.Symlink("bin/sh", "busybox")
	w.File("empty", 0o644, nil)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got := readCPIO(t, buf.Bytes())
	want := map[string][2]string{
		"bin":         {"40755", ""},
		"bin/busybox": {"100755", "12345"},
		"bin/sh":      {"120777", "busybox"},
		"empty":       {"100644", ""},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("archive = %v, want %v", got, want)
	}
	if err := newCPIOWriter(&buf).File("/abs", 0o644, nil); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("absolute name: %v, want invalid", err)
	}
	// busybox cpio, when present, agrees.
	if _, err := exec.LookPath("busybox"); err == nil {
		cmd := exec.Command("busybox", "cpio", "-t")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), "bin/busybox") {
			t.Errorf("busybox cpio -t: %v: %s", err, out)
		}
	}
}

func TestParseAptDepends(t *testing.T) {
	tests := []struct {
		name, out, want string
		wantErr         bool
	}{
		{"OK", "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n", "linux-image-6.1.0-56-cloud-amd64", false},
		{"Alternative", "x\n |Depends: linux-image-6.1.0-9-cloud-amd64\n  Depends: other\n", "linux-image-6.1.0-9-cloud-amd64", false},
		{"ErrNone", "x\n  Depends: libc6\n", "", true},
		{"ErrBadName", "x\n  Depends: linux-image-$(reboot)\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseAptDepends([]byte(tt.out), "linux-image-")
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func FuzzParseAptDepends(f *testing.F) {
	f.Add([]byte("linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"))
	f.Add([]byte(" |Depends: linux-image-a\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, out []byte) {
		pkg, err := parseAptDepends(out, "linux-image-")
		if err == nil && (!strings.HasPrefix(pkg, "linux-image-") || !validPackageName(pkg)) {
			t.Fatalf("returned unsafe package name %q", pkg)
		}
	})
}

func FuzzParseModinfoDepends(f *testing.F) {
	f.Add([]byte("license=GPL\x00depends=virtio,virtio_ring\x00vermagic=6.1\x00"))
	f.Add([]byte("depends=\x00"))
	f.Add([]byte("depends=../x,a/b,,c"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, d := range parseModinfoDepends(data) {
			if d == "" || d == "." || d == ".." || strings.ContainsAny(d, "/\x00") {
				t.Fatalf("unsafe module name %q", d)
			}
		}
	})
}

func TestParseModinfoDepends(t *testing.T) {
	got := parseModinfoDepends([]byte("license=GPL\x00depends=virtio, virtio_ring\x00name=x\x00"))
	if fmt.Sprint(got) != "[virtio virtio_ring]" {
		t.Errorf("got %v", got)
	}
}

func FuzzParsePid(f *testing.F) {
	for _, s := range []string{"1234\n", "0", "-1", "+5", "abc", "99999999999", " 42 "} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pid, err := parsePid(b)
		if err == nil && pid <= 0 {
			t.Fatalf("accepted pid %d from %q", pid, b)
		}
		if err != nil && errdefs.CodeOf(err) != errdefs.Invalid {
			t.Fatalf("code %s", errdefs.CodeOf(err))
		}
	})
}

func TestModuleLoadOrder(t *testing.T) {
	ti := needTiny(t)
	order, err := moduleLoadOrder(ti.Kernel.ModulesDir, []string{"virtio_net", "virtio_pci"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		pos[strings.TrimSuffix(filepath.Base(p), ".ko")] = i
	}
	for _, pair := range [][2]string{{"virtio_ring", "virtio"}, {"virtio", "virtio_net"}, {"failover", "net_failover"}, {"net_failover", "virtio_net"}, {"virtio_pci_modern_dev", "virtio_pci"}} {
		a, okA := pos[pair[0]]
		b, okB := pos[pair[1]]
		if !okA || !okB || a > b {
			t.Errorf("%s must load before %s: order %v", pair[0], pair[1], order)
		}
	}
	if _, err := moduleLoadOrder(ti.Kernel.ModulesDir, []string{"no_such_module"}); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("missing module: %v, want not_found", err)
	}
}

func TestConfigDriveFiles(t *testing.T) {
	spec := driver.Spec{
		ID: "abc", Hostname: "web-1",
		Metadata: map[string]string{
			"root_authorized_keys": "ssh-ed25519 AAAA one\n# comment\nssh-rsa BBBB two\n",
			"user-script":          "#!/bin/sh\necho hi",
			"bad/key":              "x",
		},
		NICs: []driver.NIC{{MAC: "90:B8:D0:AA:BB:CC", IP: "10.214.1.5", PrefixLen: 24, Gateway: "10.214.1.1", Resolvers: []string{"10.214.1.2"}, Primary: true}},
	}
	f := configDriveFiles(spec)
	md := string(f["meta-data"])
	for _, want := range []string{`instance-id: "abc"`, `local-hostname: "web-1"`, `  - "ssh-ed25519 AAAA one"`, `  - "ssh-rsa BBBB two"`} {
		if !strings.Contains(md, want) {
			t.Errorf("meta-data lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "comment") {
		t.Errorf("meta-data keeps a comment line:\n%s", md)
	}
	if string(f["user-data"]) != "#!/bin/sh\necho hi" {
		t.Errorf("user-data = %q", f["user-data"])
	}
	nc := string(f["network-config"])
	for _, want := range []string{`macaddress: "90:b8:d0:aa:bb:cc"`, `addresses: ["10.214.1.5/24"]`, `gateway4: "10.214.1.1"`, `addresses: ["10.214.1.2"]`} {
		if !strings.Contains(nc, want) {
			t.Errorf("network-config lacks %q:\n%s", want, nc)
		}
	}
	env := string(f["flotilla/net0.env"])
	if !strings.Contains(env, "IP='10.214.1.5'\nPREFIX=24\nGATEWAY='10.214.1.1'") || !strings.Contains(env, "MAC='90:b8:d0:aa:bb:cc'") {
		t.Errorf("net0.env:\n%s", env)
	}
	if _, ok := f["flotilla/meta/bad/key"]; ok {
		t.Error("a key with a slash became a file")
	}
	if string(f["flotilla/meta/user-script"]) != spec.Metadata["user-script"] {
		t.Error("user-script file missing")
	}
	var all map[string]string
	if err := json.Unmarshal(f["flotilla/metadata.json"], &all); err != nil || all["bad/key"] != "x" {
		t.Errorf("metadata.json = %s, %v", f["flotilla/metadata.json"], err)
	}
	if got := shq("it's"); got != `'it'\''s'` {
		t.Errorf("shq = %s", got)
	}
}

func TestQEMUArgs(t *testing.T) {
	needQEMU(t)
	d, err := New(Config{Root: t.TempDir(), Accel: AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	st := instanceState{Spec: driver.Spec{ID: "x1", MemoryMiB: 512, VCPUs: 1.5,
		NICs: []driver.NIC{{MAC: "90:b8:d0:00:00:01", Bridge: "br"}}}, Format: FormatKernel, Cmdline: "quiet"}
	args := strings.Join(d.qemuArgs(st, AccelTCG), " ")
	for _, want := range []string{"-m 512", "-smp 2", "accel=tcg", "-daemonize", "-append console=ttyS0 quiet",
		"virtio-net-pci,netdev=net0,mac=90:b8:d0:00:00:01", "readonly=on,file=" + filepath.Join(d.dir("x1"), cidataImage), "append=on"} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q: %s", want, args)
		}
	}
	if strings.Contains(args, "-cpu host") {
		t.Error("TCG with -cpu host")
	}
	if !strings.Contains(args, "-sandbox on,") || !strings.Contains(args, "resourcecontrol=deny") {
		t.Errorf("args lack a seccomp sandbox: %s", args)
	}
	if os.Geteuid() == 0 && !strings.Contains(args, fmt.Sprintf("-runas %d:%d", GuestUID("x1"), GuestUID("x1"))) {
		t.Errorf("args lack -runas: %s", args)
	}
	if u := GuestUID("x1"); u < 1<<28 || u == GuestUID("x2") {
		t.Errorf("GuestUID(x1) = %d, GuestUID(x2) = %d: want distinct ids from 1<<28", u, GuestUID("x2"))
	}
	if _, err := New(Config{Root: "/tmp/a,b"}); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("root with comma: %v", err)
	}
	if _, err := New(Config{Root: t.TempDir(), Accel: "xen"}); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("accel xen: %v", err)
	}
}

// TestDiskImage: a disk-format image gets a qcow2 overlay on the cached
// base; Update grows it and refuses to shrink it. Nothing boots.
func TestDiskImage(t *testing.T) {
	needQEMU(t)
	base := filepath.Join(t.TempDir(), "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	img, err := NewVMImage(VMFiles{Disk: base})
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if f, _, err := imageFormat(cf); err != nil || f != FormatDisk {
		t.Fatalf("format = %q, %v", f, err)
	}
	m, _ := img.Manifest()
	if m.Annotations[LabelVMFormat] != FormatDisk {
		t.Errorf("manifest annotations = %v", m.Annotations)
	}
	d := newTestDriver(t, memImages{"disk": img})
	ctx := context.Background()
	spec := driver.Spec{ID: "disk1", Brand: driver.BrandBhyve, Image: driver.Image{ID: "disk"}, DiskMiB: 128}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(d.dir("disk1"), FileDisk)
	out, err := exec.Command("qemu-img", "info", "--output=json", overlay).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Backing     string `json:"backing-filename"`
	}
	json.Unmarshal(out, &info)
	if info.VirtualSize != 128*mib || !strings.HasPrefix(info.Backing, filepath.Join(d.cfg.Root, "images")) {
		t.Errorf("overlay info = %+v", info)
	}
	spec.DiskMiB = 256
	if err := d.Update(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if i, err := d.diskInfo(ctx, overlay); err != nil || i.VirtualSize != 256*mib {
		t.Errorf("after grow: %+v, %v", i, err)
	}
	spec.DiskMiB = 100
	if err := d.Update(ctx, spec); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("shrink: %v, want invalid", err)
	}
	if err := d.Delete(ctx, "disk1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(overlay); !os.IsNotExist(err) {
		t.Errorf("overlay left: %v", err)
	}
}

func TestCreateErrors(t *testing.T) {
	needQEMU(t)
	base := filepath.Join(t.TempDir(), "f")
	os.WriteFile(base, []byte("x"), 0o644)
	kimg, err := NewVMImage(VMFiles{Kernel: base, Initrd: base})
	if err != nil {
		t.Fatal(err)
	}
	d := newTestDriver(t, memImages{"k": kimg, "plain": empty.Image})
	ctx := context.Background()
	tests := []struct {
		name string
		spec driver.Spec
		code errdefs.Code
	}{
		{"ErrBrand", driver.Spec{ID: "a", Brand: driver.BrandContainer, Image: driver.Image{ID: "k"}}, errdefs.Invalid},
		{"ErrID", driver.Spec{ID: "../x", Brand: driver.BrandKVM, Image: driver.Image{ID: "k"}}, errdefs.Invalid},
		{"ErrImageNotFound", driver.Spec{ID: "b", Brand: driver.BrandKVM, Image: driver.Image{ID: "nope"}}, errdefs.NotFound},
		{"ErrDigest", driver.Spec{ID: "c", Brand: driver.BrandKVM, Image: driver.Image{ID: "k", Digest: "sha256:00"}}, errdefs.Invalid},
		{"ErrNotVMImage", driver.Spec{ID: "d", Brand: driver.BrandKVM, Image: driver.Image{ID: "plain"}}, errdefs.Invalid},
		{"ErrNoBridge", driver.Spec{ID: "e", Brand: driver.BrandKVM, Image: driver.Image{ID: "k"}, NICs: []driver.NIC{{IP: "10.214.0.2"}}}, errdefs.Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := d.Create(ctx, tt.spec); errdefs.CodeOf(err) != tt.code {
				t.Fatalf("err = %v, want %s", err, tt.code)
			}
			if _, err := os.Stat(d.dir(tt.spec.ID)); tt.spec.ID != "../x" && !os.IsNotExist(err) {
				t.Errorf("failed create left %s", d.dir(tt.spec.ID))
			}
		})
	}
	if _, err := NewVMImage(VMFiles{Disk: base, Kernel: base}); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("disk+kernel: %v", err)
	}
	if _, err := NewVMImage(VMFiles{Disk: "/nonexistent.qcow2"}); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("missing disk: %v", err)
	}
	for _, op := range []func() error{
		func() error { return d.Start(ctx, "ghost") },
		func() error { return d.Stop(ctx, "ghost", 0) },
		func() error { _, err := d.Inspect(ctx, "ghost"); return err },
		func() error { return d.Update(ctx, driver.Spec{ID: "ghost"}) },
	} {
		if err := op(); errdefs.CodeOf(err) != errdefs.NotFound {
			t.Errorf("op on unknown id: %v, want not_found", err)
		}
	}
	if err := d.Delete(ctx, "ghost"); err != nil {
		t.Errorf("Delete unknown: %v", err)
	}
}

// TestConfigDriveDNS checks that the primary NIC gets the instance's DNS
// choice (the node's resolver on the gateway) and other NICs their
// network's resolvers.
func TestConfigDriveDNS(t *testing.T) {
	spec := driver.Spec{ID: "abc", Name: "vm",
		NICs: []driver.NIC{
			{MAC: "90:b8:d0:00:00:01", IP: "10.214.1.5", PrefixLen: 24, Gateway: "10.214.1.1", Resolvers: []string{"10.214.1.2"}, Primary: true},
			{MAC: "90:b8:d0:00:00:02", IP: "10.215.1.5", PrefixLen: 24, Gateway: "10.215.1.1", Resolvers: []string{"10.215.1.2"}},
		},
		DNS: driver.DNSConfig{Nameservers: []string{"10.214.1.1"}, Search: []string{"example.com"}, Options: []string{"ndots:0"}},
	}
	f := configDriveFiles(spec)
	nc := string(f["network-config"])
	for _, want := range []string{"addresses: [\"10.214.1.1\"]\n      search: [\"example.com\"]", `addresses: ["10.215.1.2"]`} {
		if !strings.Contains(nc, want) {
			t.Errorf("network-config lacks %q:\n%s", want, nc)
		}
	}
	if strings.Contains(nc, `"10.214.1.2"`) {
		t.Errorf("the primary NIC kept its network's resolver:\n%s", nc)
	}
	if env := string(f["flotilla/net0.env"]); !strings.Contains(env, "RESOLVERS='10.214.1.1'") {
		t.Errorf("net0.env:\n%s", env)
	}
}

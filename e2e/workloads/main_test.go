package workloads

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla/agent/network"
	"flotilla/api/auth"
	"flotilla/e2e"
	"flotilla/internal/testenv"
	"flotilla/store/pglocal"
)

var (
	bin     string // the flotilla binary built for this run
	tmp     string // the run's scratch directory (short: QMP socket paths must fit 108 bytes)
	vmCache string // FLOTILLA_VM_CACHE: the kernel package survives between runs
	lacking string // the capability this machine lacks, if any (tests skip with it)
	// lackingSetup says `make setup` installs what is lacking.
	lackingSetup bool
	buildErr     string
)

var (
	figMu   sync.Mutex
	figures = map[string]string{}
)

// figure records a measured figure, printed at the end of the run.
func figure(name, format string, args ...any) {
	figMu.Lock()
	figures[name] = fmt.Sprintf(format, args...)
	figMu.Unlock()
}

func TestMain(m *testing.M) {
	var err error
	if tmp, err = os.MkdirTemp("", "fwl"); err != nil {
		fmt.Println("workloads:", err)
		os.Exit(1)
	}
	vmCache = os.Getenv("FLOTILLA_VM_CACHE")
	if vmCache == "" {
		vmCache = filepath.Join(os.TempDir(), "flotilla-vm-cache")
	}
	lacking, lackingSetup = missingCapability()
	if lacking == "" {
		bin = filepath.Join(tmp, "flotilla")
		// flotilla-shim next to it, as make build puts it (the runc
		// driver runs it for every container).
		build := exec.Command("go", "build", "-o", tmp+"/", "./cmd/flotilla", "./cmd/flotilla-shim")
		build.Dir = "../.."
		if out, err := build.CombinedOutput(); err != nil {
			buildErr = fmt.Sprintf("go build ./cmd/flotilla ./cmd/flotilla-shim: %v\n%s", err, out)
		}
	}
	code := m.Run()
	figMu.Lock()
	names := make([]string, 0, len(figures))
	for n := range figures {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("workloads figure: %-44s %s\n", n, figures[n])
	}
	figMu.Unlock()
	if code == 0 {
		os.RemoveAll(tmp)
	} else {
		fmt.Println("workloads: scratch directory kept for inspection:", tmp)
	}
	os.Exit(code)
}

// missingCapability names what this machine lacks for real workloads, and
// whether `make setup` would have installed it (then CI fails rather than skips).
func missingCapability() (reason string, setup bool) {
	if os.Geteuid() != 0 {
		return "not root: containers and VMs need namespaces, cgroups and taps", false
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err != nil {
		return "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory", false
	}
	for _, tool := range []string{"runc", "qemu-system-x86_64", "qemu-img", "busybox", "ip", "iptables", "ssh-keygen", "triton"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " is not installed (run `make setup`)", true
		}
	}
	if _, err := pglocal.BinDir(); err != nil {
		return "PostgreSQL binaries not found: " + err.Error(), true
	}
	return "", false
}

// need stops the test when the machine lacks a capability (a skip, with the
// reason; a failure under CI when `make setup` should have provided it) or
// the binary did not build (a failure).
func need(t *testing.T) {
	t.Helper()
	if lacking != "" {
		testenv.Need(t, !lackingSetup, lacking)
		t.Skip("skipping: " + lacking)
	}
	if buildErr != "" {
		t.Fatal(buildErr)
	}
}

// account is a CloudAPI account whose private key triton finds in home.
type account struct {
	Login string
	Pub   string // public key file
	MD5   string
}

// cloud is one Flotilla control plane under test with its triton settings.
type cloud struct {
	Dir   string // scratch directory of this cloud
	Data  string // the control plane's --data
	Home  string // HOME for triton (~/.ssh holds every account's key)
	URL   string // CloudAPI URL
	DB    string // database URL
	Owner account
	proc  *e2e.Proc
}

// newAccountKey makes a key pair for login in c.Home/.ssh.
func (c *cloud) newAccountKey(t *testing.T, login string) account {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(c.Home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	priv := filepath.Join(c.Home, ".ssh", "id_"+login)
	pubFile, err := e2e.SSHKeygen(priv, login+"@workloads")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	k, err := auth.ParsePublicKey(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return account{Login: login, Pub: priv + ".pub", MD5: k.MD5}
}

// startDev starts `flotilla dev` with one node of driver drv in tmp/name and
// stops it (which stops its containers and VMs) when the test ends.
func startDev(t *testing.T, name, drv string) *cloud {
	t.Helper()
	return startDevNodes(t, name, drv, 1)
}

// startDevNodes is startDev with n nodes (node-1 ... node-n under Data/nodes).
func startDevNodes(t *testing.T, name, drv string, n int) *cloud {
	t.Helper()
	need(t)
	c := &cloud{Dir: filepath.Join(tmp, name)}
	c.Data = filepath.Join(c.Dir, "d")
	c.Home = filepath.Join(c.Dir, "home")
	c.Owner = c.newAccountKey(t, "wl")
	start := time.Now()
	p, err := e2e.StartProc("flotilla dev", c.Dir, append(os.Environ(), "FLOTILLA_VM_CACHE="+vmCache), filepath.Join(c.Dir, "dev.log"),
		bin, "dev", "--data", c.Data, "--driver", drv, "--nodes", fmt.Sprint(n), "--cloudapi-addr", "127.0.0.1:0",
		"--login", c.Owner.Login, "--key", c.Owner.Pub)
	if err != nil {
		t.Fatal(err)
	}
	c.proc = p
	t.Cleanup(func() {
		if err := p.Stop(30 * time.Second); err != nil {
			t.Errorf("stopping flotilla dev: %v", err)
		}
	})
	// The first run on a machine fetches the kernel package with apt.
	if _, err := p.WaitLine("flotilla dev ready", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	figure("dev "+drv+" start to ready", "%.2fs", time.Since(start).Seconds())
	env, err := e2e.ReadEnvFile(filepath.Join(c.Data, "env.sh"))
	if err != nil {
		t.Fatal(err)
	}
	c.URL, c.DB = env["TRITON_URL"], env["FLOTILLA_DB"]
	if c.URL == "" || c.DB == "" || env["TRITON_KEY_ID"] != c.Owner.MD5 {
		t.Fatalf("env.sh lacks TRITON_URL or FLOTILLA_DB or names another key: %v", env)
	}
	return c
}

// env is the environment for triton as a.
func (c *cloud) env(a account) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "TRITON_") || strings.HasPrefix(k, "SDC_") || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+c.Home, "TRITON_URL="+c.URL, "TRITON_ACCOUNT="+a.Login,
		"TRITON_KEY_ID="+a.MD5, "TRITON_TLS_INSECURE=1")
}

// tritonAs runs triton as a and returns stdout, stderr and the error.
func (c *cloud) tritonAs(a account, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "triton", args...)
	cmd.Env = c.env(a)
	cmd.Dir = c.Home
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// tri runs triton as the cloud's owner and fails the test unless it succeeds.
func (c *cloud) tri(t *testing.T, args ...string) string {
	t.Helper()
	return c.triAs(t, c.Owner, args...)
}

func (c *cloud) triAs(t *testing.T, a account, args ...string) string {
	t.Helper()
	out, errOut, err := c.tritonAs(a, args...)
	if err != nil {
		t.Fatalf("triton %s (as %s): %v\n--- stdout:\n%s--- stderr:\n%s", strings.Join(args, " "), a.Login, err, out, errOut)
	}
	return out
}

// admin runs `flotilla admin ARGS --db DB` and returns its output.
func (c *cloud) admin(t *testing.T, args ...string) string {
	t.Helper()
	args = append(append([]string{"admin"}, args...), "--db", c.DB)
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("flotilla %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// addAccount creates a non-operator account with its own key.
func (c *cloud) addAccount(t *testing.T, login string) account {
	t.Helper()
	a := c.newAccountKey(t, login)
	c.admin(t, "account", "create", login, "--key", a.Pub)
	return a
}

// netw is a network a test made on a subnet free on this host.
type netw struct {
	Name, Subnet, Bridge string
}

// addNetwork creates a network on a free subnet: public when owner is "",
// else private to owner. Its bridge is removed when the test ends.
func (c *cloud) addNetwork(t *testing.T, name, owner string) netw {
	t.Helper()
	subnet, err := FreeSubnet()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"network", "create", "--name", name, "--subnet", subnet}
	if owner == "" {
		args = append(args, "--public")
	} else {
		args = append(args, "--owner", owner)
	}
	out := c.admin(t, args...)
	_, bridge, ok := strings.Cut(strings.TrimSpace(out), ", bridge ")
	bridge = strings.TrimSuffix(bridge, ")")
	if !ok || !strings.HasPrefix(bridge, network.Prefix) {
		t.Fatalf("network create printed no bridge name: %s", out)
	}
	t.Cleanup(func() {
		if err := network.DeleteBridge(bridge); err != nil {
			t.Errorf("removing bridge %s: %v", bridge, err)
		}
	})
	return netw{Name: name, Subnet: subnet, Bridge: bridge}
}

// inst is what the tests read of `triton inst get -j`.
type inst struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	State       string   `json:"state"`
	Brand       string   `json:"brand"`
	IPs         []string `json:"ips"`
	PrimaryIP   string   `json:"primaryIp"`
	ComputeNode string   `json:"compute_node"`
	Memory      int      `json:"memory"`
}

func (c *cloud) getAs(t *testing.T, a account, name string) inst {
	t.Helper()
	var in inst
	out := c.triAs(t, a, "inst", "get", "-j", name)
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		t.Fatalf("triton inst get -j %s: %v\n%s", name, err, out)
	}
	return in
}

// create runs `triton inst create -w` as a and returns the instance with the
// time from the request to running as triton saw it.
func (c *cloud) createAs(t *testing.T, a account, name, image, pkg string, extra ...string) (inst, time.Duration) {
	t.Helper()
	args := append([]string{"inst", "create", "-w", "-n", name}, extra...)
	args = append(args, image, pkg)
	t0 := time.Now()
	c.triAs(t, a, args...)
	took := time.Since(t0)
	in := c.getAs(t, a, name)
	if in.State != "running" {
		t.Fatalf("%s is %s after create -w, want running", name, in.State)
	}
	if in.PrimaryIP == "" || len(in.IPs) == 0 {
		t.Fatalf("%s has no IP: %+v", name, in)
	}
	return in, took
}

// waitState polls `triton inst get` until name is in state.
func (c *cloud) waitState(t *testing.T, a account, name, state string, within time.Duration) {
	t.Helper()
	var last inst
	if !WaitFor(within, func() bool { last = c.getAs(t, a, name); return last.State == state }) {
		t.Fatalf("%s is %s after %s, want %s", name, last.State, within, state)
	}
}

// subnetContains reports whether ip is in cidr.
func subnetContains(t *testing.T, cidr, ip string) bool {
	t.Helper()
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		t.Fatal(err)
	}
	return n.Contains(net.ParseIP(ip))
}

// gatewayOf is the default gateway Flotilla gives a subnet: its first address.
func gatewayOf(t *testing.T, cidr string) string {
	t.Helper()
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		t.Fatal(err)
	}
	ip := n.IP.To4()
	return net.IPv4(ip[0], ip[1], ip[2], ip[3]+1).String()
}

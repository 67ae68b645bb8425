package e2e

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"flotilla/agent/network"
	"flotilla/internal/testenv"
)

// TestDevFreshMachine is the README's quick start as a new user runs it: HOME
// is an empty directory (no SSH key), `flotilla dev` gets no --key and no
// --driver, and the README's triton and docker examples must work with what
// env.sh sets. Stopping dev must then leave nothing of this cloud on the
// host (mounts, network namespaces, veths), a restart must bring the
// instance back running, and the data directory must be removable.
func TestDevFreshMachine(t *testing.T) {
	requireTriton(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: the default driver picks runc as root, and the README's docker example needs containers that exit")
	}
	testenv.NeedCommand(t, "runc", "runc")
	testenv.NeedFile(t, "/bin/busybox", "busybox-static")
	dockerBin := testenv.NeedCommand(t, "docker", "docker-ce-cli")

	// A short directory: a container's attach socket path must fit in
	// a Unix socket address (108 bytes), which t.TempDir's names exceed.
	dir, err := os.MkdirTemp("", "fdev-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	freshHome := filepath.Join(dir, "home")
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(freshHome, 0o755); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range devProcEnv() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "HOME" || k == "SSH_AUTH_SOCK" || strings.HasPrefix(k, "DOCKER_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+freshHome)
	var p *Proc
	startDev := func(name string) *Proc {
		p, err := StartProc(name, dir, env, filepath.Join(dir, "dev.log"), bin, "dev", "--data", data,
			"--cloudapi-addr", "127.0.0.1:0", "--docker-addr", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop(30 * time.Second) })
		line, err := p.WaitLine("flotilla dev ready", 120*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %s", name, line)
		return p
	}
	p = startDev("flotilla dev (fresh HOME)")
	line, _ := p.WaitLine("flotilla dev ready", time.Second)
	for _, want := range []string{"runc node(s) (auto: root, runc and busybox found)", "key generated in " + filepath.Join(data, "ssh", "id_ed25519")} {
		if !strings.Contains(line, want) {
			t.Errorf("ready line %q does not say %q", line, want)
		}
	}
	sh, err := os.ReadFile(filepath.Join(data, "env.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sh), "generated in "+filepath.Join(data, "ssh", "id_ed25519")) {
		t.Errorf("env.sh does not say where the generated key is:\n%s", sh)
	}
	// userEnv is the user's shell after `. DATA/env.sh`.
	var userEnv []string
	sourceEnv := func() {
		userEnv = append([]string{}, env...)
		for k, v := range devVars(t, data) {
			userEnv = append(userEnv, k+"="+v)
		}
	}
	sourceEnv()
	run := func(timeout time.Duration, name string, args ...string) (string, error) {
		t.Helper()
		ctx := ctxTimeout(t, timeout)
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env, cmd.Dir = userEnv, dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(timeout time.Duration, name string, args ...string) string {
		t.Helper()
		out, err := run(timeout, name, args...)
		if err != nil {
			t.Fatalf("%s %s: %v\n%s\nflotilla dev's output:\n%s", filepath.Base(name), strings.Join(args, " "), err, out, p.Output())
		}
		return out
	}

	// The README's quick start, verbatim.
	if out := must(60*time.Second, tritonBin, "info"); !strings.Contains(out, "login:") {
		t.Errorf("triton info printed no login:\n%s", out)
	}
	must(120*time.Second, tritonBin, "create", "busybox", "g1-nano-256M", "-n", "web1", "-w")
	if out := must(60*time.Second, tritonBin, "ls"); !strings.Contains(out, "web1") || !strings.Contains(out, "running") {
		t.Errorf("triton ls does not show web1 running:\n%s", out)
	}
	var inst struct{ ID, State string }
	if err := json.Unmarshal([]byte(must(60*time.Second, tritonBin, "inst", "get", "web1")), &inst); err != nil || inst.ID == "" {
		t.Fatalf("triton inst get web1: %v %+v", err, inst)
	}
	start := time.Now()
	if out := must(120*time.Second, dockerBin, "run", "--rm", "busybox", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Errorf("docker run --rm busybox echo hi printed %q, want hi", out)
	}
	figure("fresh machine: docker run --rm busybox echo hi", "%s", time.Since(start).Round(time.Millisecond))
	out, err := run(120*time.Second, dockerBin, "run", "--name", "exit3", "busybox", "sh", "-c", "exit 3")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Errorf("docker run busybox sh -c 'exit 3': %v, want exit status 3\n%s", err, out)
	}
	checkDevMetrics(t, devVars(t, data)["TRITON_URL"]+"/metrics")
	ids := []string{inst.ID, strings.TrimSpace(must(30*time.Second, dockerBin, "inspect", "-f", "{{.Id}}", "exit3"))}
	var uuids []string
	for _, l := range strings.Split(must(30*time.Second, tritonBin, "ls", "-H", "-o", "id"), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			uuids = append(uuids, l)
		}
	}
	if len(uuids) < 2 {
		t.Fatalf("triton ls lists %v, want web1 and the exit3 container (docker id %s)", uuids, ids[1])
	}

	// Stop: nothing of this cloud stays on the host.
	if err := p.Stop(60 * time.Second); err != nil {
		t.Fatalf("stopping dev: %v\n%s", err, p.Output())
	}
	checkNothingLeft(t, data, uuids)

	// Restart: web1 is desired running and comes back.
	p = startDev("flotilla dev (restart)")
	sourceEnv()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := json.Unmarshal([]byte(must(60*time.Second, tritonBin, "inst", "get", "web1")), &inst); err == nil && inst.State == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("web1 is %s 60 s after dev restarted, want running", inst.State)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := p.Stop(60 * time.Second); err != nil {
		t.Fatalf("stopping dev: %v\n%s", err, p.Output())
	}
	checkNothingLeft(t, data, uuids)
	if out, err := exec.Command("rm", "-rf", data).CombinedOutput(); err != nil {
		t.Fatalf("rm -rf %s after dev stopped: %v\n%s", data, err, out)
	}
}

// checkNothingLeft fails the test if a mount under data, or a network
// namespace or veth of one of the instances, is left on the host. It looks
// only at this cloud's objects: other tests create their own concurrently.
func checkNothingLeft(t *testing.T, data string, instances []string) {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == data || strings.HasPrefix(fields[4], data+"/")) {
			t.Errorf("mount left after dev stopped: %s", sc.Text())
		}
	}
	for _, id := range instances {
		if ns := network.NetNSName(id); network.NetNSExists(ns) {
			t.Errorf("network namespace %s of instance %s left after dev stopped", ns, id)
		}
		if veth := network.VethName(id, 0); network.LinkExists(veth) {
			t.Errorf("veth %s of instance %s left after dev stopped", veth, id)
		}
	}
}

// devVars reads DATA/env.sh.
func devVars(t *testing.T, data string) map[string]string {
	t.Helper()
	vars, err := ReadEnvFile(filepath.Join(data, "env.sh"))
	if err != nil {
		t.Fatal(err)
	}
	return vars
}

// checkDevMetrics scrapes a dev cloud's /metrics after an instance was
// created with triton and containers with docker, and checks the families
// operators rely on are there with plausible values.
func checkDevMetrics(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET %s: %s, Content-Type %q", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	// sum adds the values of family name's samples whose labels contain want
	// (a label value ending in "*" matches by prefix, one starting with "*"
	// by substring).
	sum := func(name string, want map[string]string) (float64, int) {
		f := fams[name]
		if f == nil {
			return 0, 0
		}
		var total float64
		n := 0
	next:
		for _, m := range f.Metric {
			have := map[string]string{}
			for _, l := range m.Label {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if sub, ok := strings.CutPrefix(v, "*"); ok {
					if !strings.Contains(have[k], sub) {
						continue next
					}
				} else if have[k] != v {
					continue next
				}
			}
			n++
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			case m.Histogram != nil:
				total += float64(m.Histogram.GetSampleCount())
			}
		}
		return total, n
	}
	for _, c := range []struct {
		name string
		want map[string]string
		min  float64
	}{
		{"flotilla_http_requests_total", map[string]string{"api": "cloudapi", "method": "POST", "route": "*machines", "code": "201"}, 1},
		{"flotilla_http_requests_total", map[string]string{"api": "docker", "method": "POST", "route": "*/containers/create"}, 2},
		{"flotilla_http_request_duration_seconds", map[string]string{"api": "cloudapi"}, 3},
		{"flotilla_http_requests_total", map[string]string{"api": "agentapi"}, 1},
		{"flotilla_placements_total", map[string]string{"outcome": "placed"}, 2},
		{"flotilla_placement_duration_seconds", nil, 2},
		{"flotilla_instances", map[string]string{"state": "running"}, 1},
		{"flotilla_node_capacity", map[string]string{"resource": "memory_mib"}, 1},
		{"flotilla_node_used", map[string]string{"resource": "instances"}, 1},
		{"flotilla_nodes", map[string]string{"state": "running"}, 1},
		{"flotilla_queue_depth", map[string]string{"queue": "agent"}, 0},
		{"flotilla_queue_depth", map[string]string{"queue": "placer"}, 0},
	} {
		v, n := sum(c.name, c.want)
		if n == 0 || v < c.min {
			t.Errorf("%s%v: %d series summing to %v, want at least %v", c.name, c.want, n, v, c.min)
		}
	}
	for _, m := range fams["flotilla_http_requests_total"].GetMetric() {
		for _, l := range m.Label {
			if l.GetName() == "route" && strings.Count(l.GetValue(), "-") >= 4 {
				t.Errorf("a raw path with an id became a route label: %q", l.GetValue())
			}
		}
	}
}

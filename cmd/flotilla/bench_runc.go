package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"flotilla/agent"
	"flotilla/agent/dns"
	"flotilla/agent/driver/qemu"
	"flotilla/agent/network"
	"flotilla/api/agentapi"
	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/oci"
	"flotilla/store"
)

func init() { benchE2ERunc = benchE2EReal }

// realResult is what `flotilla bench e2e --driver runc|qemu --json` prints:
// one instance at a time, from the create request to running (and, for the
// tiny VM, to the guest's ready marker), beside a bare `runc run` of the same
// image measured in the same run.
type realResult struct {
	Driver        string  `json:"driver"`
	Instances     int     `json:"instances"`
	Failed        int     `json:"failed"`
	Accel         string  `json:"accel,omitempty"`
	RunningP50Ms  float64 `json:"create_to_running_p50_ms"`
	RunningP99Ms  float64 `json:"create_to_running_p99_ms"`
	RunningMaxMs  float64 `json:"create_to_running_max_ms"`
	ReadyP50Ms    float64 `json:"create_to_ready_marker_p50_ms,omitempty"`
	ReadyP99Ms    float64 `json:"create_to_ready_marker_p99_ms,omitempty"`
	DeleteP50Ms   float64 `json:"delete_to_gone_p50_ms"`
	BareRuncP50Ms float64 `json:"bare_runc_run_p50_ms,omitempty"`
	BareRuncP99Ms float64 `json:"bare_runc_run_p99_ms,omitempty"`
	OverheadP50   float64 `json:"overhead_over_bare_runc_p50,omitempty"` // flotilla p50 / bare p50 - 1
	OverheadP99   float64 `json:"overhead_over_bare_runc_p99,omitempty"`
	GoalMet       *bool   `json:"goal_at_most_50pct_over_bare_runc,omitempty"`
	FirstError    string  `json:"first_error,omitempty"`
}

// benchE2EReal creates n instances of the dev busybox image (runc) or the
// tiny VM (qemu) one at a time through CloudAPI on one in-process node with
// the real driver, and deletes each before the next.
func benchE2EReal(ctx context.Context, drv string, n int, asJSON bool) error {
	if drv != "runc" && drv != "qemu" {
		return usagef("bench e2e --driver: want sim, runc or qemu, not %q", drv)
	}
	if n <= 0 {
		return usagef("--instances must be positive")
	}
	if os.Getenv("FLOTILLA_VM_CACHE") == "" {
		os.Setenv("FLOTILLA_VM_CACHE", filepath.Join(os.TempDir(), "flotilla-vm-cache"))
	}
	// Short: QMP socket paths under it must fit in 108 bytes.
	tmp, dbURL, stopDB, err := benchDatabase(ctx, "fbe", nil)
	if err != nil {
		return err
	}
	defer stopDB()
	cp, err := startControlPlane(ctx, serveConfig{DB: dbURL, CloudAPIAddr: "127.0.0.1:0", AgentAPIAddr: "127.0.0.1:0",
		DataDir: tmp, Quiet: true, Policy: "pack", OfflineGrace: time.Minute})
	if err != nil {
		return err
	}
	defer cp.Close()
	st := cp.Store
	_, signer, err := newBenchAccount(ctx, st)
	if err != nil {
		return err
	}
	subnet, err := freeHostSubnet()
	if err != nil {
		return err
	}
	nw, err := st.CreateNetwork(ctx, store.Network{Name: "bench", Public: true, Subnet: subnet})
	if err != nil {
		return err
	}
	defer network.DeleteBridge(nw.Bridge)
	imageID := devBusyboxID
	if drv == "qemu" {
		imageID = devTinyVMID
	}
	if err := seedDevImage(ctx, st, tmp, imageID); err != nil {
		return err
	}
	tok := agentapi.NewToken()
	if err := st.CreateJoinToken(ctx, agentapi.HashToken(tok), time.Now().Add(time.Hour)); err != nil {
		return err
	}
	log := newLogger(false, slog.LevelWarn+4)
	nodeDir := filepath.Join(tmp, "n")
	d, err := newDriver(drv, nodeDir, log)
	if err != nil {
		return err
	}
	resolver := dns.New(dns.Config{Logger: log})
	defer resolver.Close()
	fw, err := nodeFirewall("bench-" + drv + "-" + agentapi.NewToken()[:8])
	if err != nil {
		return err
	}
	defer fw.Close()
	actx, stopAgent := context.WithCancel(context.Background())
	var awg sync.WaitGroup
	defer func() { stopAgent(); awg.Wait() }()
	awg.Add(1)
	go func() {
		defer awg.Done()
		agent.Run(actx, agent.Config{Name: "bench-" + drv, DataDir: nodeDir, APIURL: cp.AgentAPIURL, JoinToken: tok,
			Driver: d, Address: "127.0.0.1:0", Logger: log, Resolver: resolver.Feed("bench-" + drv),
			RouterNetNS: network.RouterNetNSPath, Firewall: fw})
	}()
	if err := waitReady(ctx, cp, 1); err != nil {
		return err
	}
	api := &benchClient{url: cp.CloudAPIURL, signer: signer, http: &http.Client{Timeout: 30 * time.Second}}

	res := realResult{Driver: drv, Instances: n}
	var toRunning, toReady, toGone []time.Duration
	fail := func(err error) {
		res.Failed++
		if res.FirstError == "" {
			res.FirstError = err.Error()
		}
	}
	// One warm-up instance pulls and unpacks the image into the node's cache,
	// as any node does once; the figures are for the creates after it.
	for i := -1; i < n; i++ {
		t0 := time.Now()
		id, err := api.create(ctx, fmt.Sprintf("b%03d", i+1), imageID, nw.ID)
		if err != nil {
			fail(err)
			continue
		}
		if err := api.waitState(ctx, id, "running", 3*time.Minute); err != nil {
			fail(err)
			api.remove(ctx, id)
			continue
		}
		running := time.Since(t0)
		var ready time.Duration
		if drv == "qemu" {
			console := filepath.Join(nodeDir, "qemu", "instances", id, "console.log")
			if err := waitFileContains(ctx, console, qemu.TinyMarkerReady, 2*time.Minute); err != nil {
				fail(err)
			}
			ready = time.Since(t0)
			if res.Accel == "" {
				res.Accel = qemuAccel(filepath.Join(nodeDir, "qemu", "instances", id, "qemu.pid"))
			}
		}
		t1 := time.Now()
		if err := api.remove(ctx, id); err != nil {
			fail(err)
			continue
		}
		if err := api.waitState(ctx, id, "deleted", 2*time.Minute); err != nil {
			fail(err)
			continue
		}
		if i < 0 {
			continue
		}
		toRunning = append(toRunning, running)
		toGone = append(toGone, time.Since(t1))
		if ready > 0 {
			toReady = append(toReady, ready)
		}
	}
	res.RunningP50Ms, res.RunningP99Ms, res.RunningMaxMs = pct(toRunning, 0.5), pct(toRunning, 0.99), pct(toRunning, 1)
	res.ReadyP50Ms, res.ReadyP99Ms = pct(toReady, 0.5), pct(toReady, 0.99)
	res.DeleteP50Ms = pct(toGone, 0.5)
	if drv == "runc" {
		bare, err := bareRuncRuns(ctx, filepath.Join(tmp, "bare"), n)
		if err != nil {
			return fmt.Errorf("bare runc: %w", err)
		}
		res.BareRuncP50Ms, res.BareRuncP99Ms = pct(bare, 0.5), pct(bare, 0.99)
		if res.BareRuncP50Ms > 0 && len(toRunning) > 0 {
			res.OverheadP50 = res.RunningP50Ms/res.BareRuncP50Ms - 1
			res.OverheadP99 = res.RunningP99Ms/res.BareRuncP99Ms - 1
			met := res.OverheadP50 <= 0.5
			res.GoalMet = &met
		}
	}
	return printResult(res, asJSON)
}

// seedDevImage records one dev image with its content.
func seedDevImage(ctx context.Context, st *store.Store, data, id string) error {
	svc, err := imageService(st, data, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	for _, im := range devImages {
		if im.ID != id {
			continue
		}
		img, err := devImageContent(ctx, im, data)
		if err != nil {
			return err
		}
		meta := service.ImageMeta{ID: im.ID, Name: im.Name, Version: im.Version, OS: im.OS, Type: im.Type,
			Description: im.Description, Public: im.Public, Tags: im.Tags, Requirements: im.Requirements}
		_, err = svc.ImportImage(ctx, nil, img, meta)
		return err
	}
	return errdefs.NotFoundf("no dev image %s", id)
}

// freeHostSubnet is a /24 in 10.0.0.0/8 that no address of this host is in,
// so the bench network's bridge does not shadow another cloud's.
func freeHostSubnet() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	buf := make([]byte, 2)
	for range 1000 {
		rand.Read(buf)
		_, cand, _ := net.ParseCIDR(fmt.Sprintf("10.%d.%d.0/24", 100+int(buf[0])%150, buf[1]))
		clash := false
		for _, a := range addrs {
			if in, ok := a.(*net.IPNet); ok && (in.Contains(cand.IP) || cand.Contains(in.IP)) {
				clash = true
				break
			}
		}
		if !clash {
			return cand.String(), nil
		}
	}
	return "", fmt.Errorf("no free /24 in 10.100.0.0/16-10.249.0.0/16")
}

// bareRuncRuns times n runs of `runc run` of `true` in a bundle made from
// the same busybox image, with runc's default spec.
func bareRuncRuns(ctx context.Context, dir string, n int) ([]time.Duration, error) {
	img, err := oci.BusyboxImage("/bin/busybox")
	if err != nil {
		return nil, err
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return nil, err
	}
	if err := oci.UnpackImage(ctx, img, rootfs); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("runc spec: %v: %s", err, out)
	}
	cfgPath := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, err
	}
	proc := spec["process"].(map[string]any)
	proc["args"], proc["terminal"] = []string{"true"}, false
	if b, err = json.Marshal(spec); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "state")
	var ds []time.Duration
	for i := 0; i <= n; i++ { // the first run warms the page cache
		id := fmt.Sprintf("flotilla-bench-bare-%d-%d", os.Getpid(), i)
		t0 := time.Now()
		out, err := exec.CommandContext(ctx, "runc", "--root", root, "run", "--bundle", dir, id).CombinedOutput()
		took := time.Since(t0)
		if err != nil {
			exec.Command("runc", "--root", root, "delete", "-f", id).Run()
			return nil, fmt.Errorf("runc run: %v: %s", err, out)
		}
		if i > 0 {
			ds = append(ds, took)
		}
	}
	return ds, nil
}

func waitFileContains(ctx context.Context, path, s string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte(s)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s does not show %q within %s", path, s, within)
}

// qemuAccel reads the accelerator from the command line of the QEMU whose
// pid is in pidFile.
func qemuAccel(pidFile string) string {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return ""
	}
	cmd, _ := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/cmdline")
	for _, arg := range strings.Split(string(cmd), "\x00") {
		if _, a, ok := strings.Cut(arg, "accel="); ok {
			a, _, _ = strings.Cut(a, ",")
			return a
		}
	}
	return ""
}

// benchClient makes signed CloudAPI requests as the bench account.
type benchClient struct {
	url    string
	signer *auth.Signer
	http   *http.Client
}

func (c *benchClient) do(ctx context.Context, method, path string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+"/bench"+path, r)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept-Version", "~9")
	if err := c.signer.Sign(req); err != nil {
		return 0, nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (c *benchClient) create(ctx context.Context, name, image, networkID string) (string, error) {
	code, b, err := c.do(ctx, "POST", "/machines", map[string]any{"name": name, "image": image,
		"package": "g1-nano-256M", "networks": []string{networkID}})
	if err != nil {
		return "", err
	}
	if code != http.StatusCreated {
		return "", fmt.Errorf("create: %d %s", code, b)
	}
	var m struct{ ID string }
	if err := json.Unmarshal(b, &m); err != nil || m.ID == "" {
		return "", fmt.Errorf("create: no id in %s", b)
	}
	return m.ID, nil
}

func (c *benchClient) remove(ctx context.Context, id string) error {
	code, b, err := c.do(ctx, "DELETE", "/machines/"+id, nil)
	if err != nil {
		return err
	}
	if code != http.StatusNoContent && code != http.StatusOK && code != http.StatusAccepted {
		return fmt.Errorf("delete %s: %d %s", id, code, b)
	}
	return nil
}

// waitState polls the instance every 5 ms until it is in state ("deleted"
// also matches 404 and 410), or fails (state failed) or times out.
func (c *benchClient) waitState(ctx context.Context, id, state string, within time.Duration) error {
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) {
		code, b, err := c.do(ctx, "GET", "/machines/"+id, nil)
		if err != nil {
			return err
		}
		var m struct{ State string }
		json.Unmarshal(b, &m)
		last = m.State
		switch {
		case m.State == state, state == "deleted" && (code == http.StatusGone || code == http.StatusNotFound):
			return nil
		case m.State == "failed":
			return fmt.Errorf("instance %s failed: %s", id, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("instance %s is %q after %s, want %s", id, last, within, state)
}

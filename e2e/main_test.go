package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla/store/pglocal"
)

// The one dev cloud the triton tests share, started by TestMain.
var (
	bin       string            // the flotilla binary built for this run
	tmp       string            // the run's scratch directory
	home      string            // HOME for triton: ~/.ssh keys and ~/.triton
	keyFile   string            // the dev account's public key file
	devData   string            // flotilla dev --data
	devEnv    map[string]string // DATA/env.sh
	dev       *Proc
	tritonBin string // empty when the triton CLI is missing
	setupErr  string // why the harness could not start (tests fail or skip with it)
)

// figures are the timings measured during the run, printed at the end.
var (
	figMu   sync.Mutex
	figures = map[string]string{}
)

func figure(name, format string, args ...any) {
	figMu.Lock()
	figures[name] = fmt.Sprintf(format, args...)
	figMu.Unlock()
}

func inCI() bool { return os.Getenv("CI") != "" }

func TestMain(m *testing.M) {
	code, keep := run(m)
	if keep {
		fmt.Printf("e2e: scratch directory kept for inspection: %s\n", tmp)
	} else if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

func run(m *testing.M) (code int, keep bool) {
	var err error
	if tmp, err = os.MkdirTemp("", "flotilla-e2e-"); err != nil {
		fmt.Println("e2e:", err)
		return 1, false
	}
	if err := setup(); err != nil {
		setupErr = err.Error()
	}
	defer func() {
		if dev != nil {
			if err := dev.Stop(20 * time.Second); err != nil {
				fmt.Println("e2e: stopping flotilla dev:", err)
			}
		}
	}()
	code = m.Run()
	figMu.Lock()
	names := make([]string, 0, len(figures))
	for n := range figures {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("e2e figure: %-40s %s\n", n, figures[n])
	}
	figMu.Unlock()
	return code, code != 0
}

// setup builds the binary, makes HOME with a key and starts `flotilla dev`
// twice on the same data directory (the second start is the one the tests use).
func setup() error {
	if _, err := pglocal.BinDir(); err != nil {
		return fmt.Errorf("PostgreSQL is needed for the end-to-end tests (run `make setup`): %v", err)
	}
	if p, err := exec.LookPath("triton"); err == nil {
		tritonBin = p
	}
	bin = filepath.Join(tmp, "flotilla")
	// flotilla-shim next to it, as make build puts it (the runc driver
	// runs it for every container).
	build := exec.Command("go", "build", "-o", tmp+"/", "./cmd/flotilla", "./cmd/flotilla-shim")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/flotilla ./cmd/flotilla-shim: %v\n%s", err, out)
	}
	home = filepath.Join(tmp, "home")
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		return err
	}
	var err error
	if keyFile, err = SSHKeygen(filepath.Join(home, ".ssh", "id_ed25519"), "e2e"); err != nil {
		return err
	}
	devData = filepath.Join(tmp, "data")
	for i, name := range []string{"dev first start", "dev second start"} {
		if i > 0 {
			if err := dev.Stop(20 * time.Second); err != nil {
				return err
			}
		}
		start := time.Now()
		dev, err = StartProc("flotilla dev", tmp, devProcEnv(), filepath.Join(tmp, "dev.log"),
			bin, "dev", "--data", devData, "--driver", "sim", "--key", keyFile, "--login", "e2e", "--nodes", "2", "--cloudapi-addr", "127.0.0.1:0")
		if err != nil {
			return err
		}
		line, err := dev.WaitLine("flotilla dev ready", 90*time.Second)
		if err != nil {
			dev.Kill()
			dev = nil
			return err
		}
		took := time.Since(start)
		figure(name+" (to ready)", "%.2fs (%s)", took.Seconds(), strings.TrimSpace(line))
		if i > 0 && took > 5*time.Second {
			return fmt.Errorf("flotilla dev took %s to be ready on an existing data directory; the target is under 5 s", took)
		}
	}
	devEnv, err = ReadEnvFile(filepath.Join(devData, "env.sh"))
	if err != nil {
		return err
	}
	for _, k := range []string{"TRITON_URL", "TRITON_ACCOUNT", "TRITON_KEY_ID", "FLOTILLA_DB", "FLOTILLA_AGENT_API", "FLOTILLA_JOIN_TOKEN"} {
		if devEnv[k] == "" {
			return fmt.Errorf("env.sh has no %s", k)
		}
	}
	return nil
}

// devProcEnv is the environment for `flotilla dev`: HOME with the key, and
// the tiny VM image's build cache shared across runs (as the other tests
// share it), so that only the first run on a machine builds it.
func devProcEnv() []string {
	env := baseEnv()
	cache := os.Getenv("FLOTILLA_VM_CACHE")
	if cache == "" {
		cache = filepath.Join(os.TempDir(), "flotilla-vm-cache")
	}
	return append(env, "FLOTILLA_VM_CACHE="+cache)
}

// requireCloud stops the test when the harness could not start.
func requireCloud(t *testing.T) {
	t.Helper()
	if setupErr == "" {
		return
	}
	if strings.Contains(setupErr, "PostgreSQL is needed") && !inCI() {
		t.Skip(setupErr)
	}
	t.Fatal(setupErr)
}

// requireTriton stops the test when the triton CLI is missing: a failure in
// CI (where `make setup` installs it), a skip elsewhere.
func requireTriton(t *testing.T) {
	t.Helper()
	requireCloud(t)
	if dev != nil && dev.Exited() {
		t.Fatalf("flotilla dev is not running any more; its output:\n%s", dev.Output())
	}
	if tritonBin != "" {
		return
	}
	if inCI() {
		t.Fatal("the triton CLI is not installed: run `make setup` (it installs triton@7.17.0 with npm)")
	}
	t.Skip("the triton CLI is not installed (run `make setup`); skipping the triton end-to-end tests")
}

// baseEnv is the process environment without anything that would steer
// triton or flotilla away from the cloud under test.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "TRITON_") || strings.HasPrefix(k, "SDC_") || strings.HasPrefix(k, "FLOTILLA_") || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home)
}

// tritonEnv is the environment for triton as the dev account: env.sh's
// TRITON_* settings, HOME with the key, plus extra.
func tritonEnv(extra ...string) []string {
	env := baseEnv()
	for _, k := range []string{"TRITON_URL", "TRITON_ACCOUNT", "TRITON_KEY_ID", "TRITON_TLS_INSECURE"} {
		env = append(env, k+"="+devEnv[k])
	}
	return append(env, extra...)
}

// ctxTimeout is a context for one step of a test.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

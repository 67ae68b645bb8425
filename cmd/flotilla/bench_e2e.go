package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/agent"
	"flotilla/agent/driver/sim"
	"flotilla/api/auth"
	"flotilla/api/service"
	"flotilla/store"
)

// e2eResult is what `flotilla bench e2e --json` prints.
type e2eResult struct {
	Driver        string  `json:"driver"`
	Nodes         int     `json:"nodes"`
	Instances     int     `json:"instances"`
	Concurrency   int     `json:"concurrency"`
	Created       int     `json:"created"`
	Failed        int     `json:"failed"`
	CreatesPerSec float64 `json:"creates_per_sec"`
	CreateWallMs  float64 `json:"create_wall_ms"`
	AllRunningMs  float64 `json:"all_running_ms"`
	CreateP50Ms   float64 `json:"create_p50_ms"`
	CreateP99Ms   float64 `json:"create_p99_ms"`
	CreateMaxMs   float64 `json:"create_max_ms"`
	RunningP50Ms  float64 `json:"create_to_running_p50_ms"`
	RunningP99Ms  float64 `json:"create_to_running_p99_ms"`
	FirstError    string  `json:"first_error,omitempty"`
}

func benchE2E(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench e2e", flag.ContinueOnError)
	nodes := fs.Int("nodes", 100, "simulated nodes")
	instances := fs.Int("instances", 1000, "instances to create")
	conc := fs.Int("concurrency", 32, "concurrent create requests")
	asJSON := fs.Bool("json", false, "print JSON")
	drv := fs.String("driver", "sim", "driver (sim)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	pgStats := fs.Bool("pg-stats", false, "print the statements that took most database time (to stderr)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if *drv != "sim" {
		return benchE2ERunc(ctx, *drv, *instances, *asJSON)
	}
	var settings map[string]string
	if *pgStats {
		settings = map[string]string{"shared_preload_libraries": "pg_stat_statements"}
	}
	tmp, dbURL, stopDB, err := benchDatabase(ctx, "flotilla-bench-", settings)
	if err != nil {
		return err
	}
	defer stopDB()
	cp, err := startControlPlane(ctx, serveConfig{DB: dbURL, CloudAPIAddr: "127.0.0.1:0", AgentAPIAddr: "127.0.0.1:0", Quiet: true, Policy: "spread", OfflineGrace: time.Minute})
	if err != nil {
		return err
	}
	defer cp.Close()
	st := cp.Store
	acct, signer, err := newBenchAccount(ctx, st)
	if err != nil {
		return err
	}
	if _, err := st.CreateNetwork(ctx, store.Network{Name: "bench", Public: true, Subnet: "10.200.0.0/16"}); err != nil {
		return err
	}
	img, err := st.CreateImage(ctx, store.Image{Name: "bench", Version: "1", OS: "linux", Type: "zone-dataset", Public: true})
	if err != nil {
		return err
	}
	tokens, err := mintJoinTokens(ctx, st, *nodes, time.Hour)
	if err != nil {
		return err
	}
	actx, stopAgents := context.WithCancel(context.Background())
	var awg sync.WaitGroup
	defer func() { stopAgents(); awg.Wait() }()
	for i := 0; i < *nodes; i++ {
		d, _ := sim.New(sim.Config{})
		cfg := agent.Config{Name: fmt.Sprintf("bench-%d", i), DataDir: filepath.Join(tmp, "nodes", fmt.Sprint(i)),
			APIURL: cp.AgentAPIURL, JoinToken: tokens[i], Driver: d, MemoryMiB: 65536, DiskMiB: 4 << 20, VCPUs: 32,
			Logger: newLogger(false, 12)}
		awg.Add(1)
		go func() { defer awg.Done(); agent.Run(actx, cfg) }()
	}
	if err := waitReady(ctx, cp, *nodes); err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *conc * 2}}
	res := e2eResult{Driver: "sim", Nodes: *nodes, Instances: *instances, Concurrency: *conc}
	lat := make([]time.Duration, *instances)
	created := make([]time.Time, *instances)
	ids := make([]string, *instances)
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	// Note when each instance is first seen running, while creates go on.
	runningAt := map[string]time.Time{}
	var createsDone atomic.Bool
	pollDone := make(chan error, 1)
	go func() {
		// Follow the change feed: cheap, and it carries the database's own
		// timestamp of each transition to running.
		cur := store.NewChangeCursor(0, acct.ID, "instance")
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			changes, err := cur.Next(ctx, st)
			if err != nil {
				pollDone <- err
				return
			}
			for _, c := range changes {
				if c.Action == "state" && c.State == "running" {
					if _, ok := runningAt[c.ObjectID]; !ok {
						runningAt[c.ObjectID] = c.At
					}
				}
			}
			if createsDone.Load() && len(runningAt) >= *instances-int(failed.Load()) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		pollDone <- nil
	}()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *instances {
					return
				}
				body, _ := json.Marshal(map[string]any{"name": fmt.Sprintf("b%05d", i), "image": img.ID, "package": "g1-nano-256M"})
				req, _ := http.NewRequest("POST", cp.CloudAPIURL+"/bench/machines", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept-Version", "~9")
				signer.Sign(req)
				t0 := time.Now()
				resp, err := client.Do(req)
				lat[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %s", resp.StatusCode, b))
					continue
				}
				var m struct{ ID string }
				json.Unmarshal(b, &m)
				ids[i], created[i] = m.ID, t0
			}
		}()
	}
	wg.Wait()
	createWall := time.Since(start)
	res.Failed = int(failed.Load())
	res.Created = *instances - res.Failed
	if v := firstErr.Load(); v != nil {
		res.FirstError = v.(string)
	}
	createsDone.Store(true)
	if err := <-pollDone; err != nil {
		return err
	}
	var last time.Time
	for _, t := range runningAt {
		if t.After(last) {
			last = t
		}
	}
	allRunning := last.Sub(start)
	var toRunning []time.Duration
	for i, id := range ids {
		if t, ok := runningAt[id]; ok {
			toRunning = append(toRunning, t.Sub(created[i]))
		}
	}
	res.CreateWallMs = ms(createWall)
	res.CreatesPerSec = float64(res.Created) / createWall.Seconds()
	res.AllRunningMs = ms(allRunning)
	if len(runningAt) < res.Created {
		res.AllRunningMs = -1
	}
	res.CreateP50Ms, res.CreateP99Ms, res.CreateMaxMs = pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1)
	res.RunningP50Ms, res.RunningP99Ms = pct(toRunning, 0.5), pct(toRunning, 0.99)
	if *pgStats {
		printPGStats(ctx, st)
	}
	return printResult(res, *asJSON)
}

// printPGStats writes the statements with the most total execution time.
func printPGStats(ctx context.Context, st *store.Store) {
	if _, err := st.Pool().Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		fmt.Fprintln(os.Stderr, "pg_stat_statements:", err)
		return
	}
	rows, err := st.Pool().Query(ctx, `SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3),
	regexp_replace(left(query, 90), '\s+', ' ', 'g') FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25`)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pg_stat_statements:", err)
		return
	}
	defer rows.Close()
	fmt.Fprintf(os.Stderr, "%8s %10s %8s  %s\n", "calls", "total ms", "mean ms", "query")
	for rows.Next() {
		var calls int64
		var total, mean float64
		var q string
		if rows.Scan(&calls, &total, &mean, &q) == nil {
			fmt.Fprintf(os.Stderr, "%8d %10.1f %8.3f  %s\n", calls, total, mean, q)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct returns the q-th quantile of ds in milliseconds.
func pct(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s)-1) + 0.5)
	return ms(s[i])
}

func printResult(v any, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Println(string(b))
	return nil
}

// benchE2ERunc is provided by bench_runc.go when the runc driver is wired.
var benchE2ERunc = func(ctx context.Context, driver string, n int, asJSON bool) error {
	return usagef("bench e2e --driver %s is not available in this build", driver)
}

// newBenchAccount creates the account "bench" with a fresh Ed25519 key, and
// the default packages, and returns a request signer for it.
func newBenchAccount(ctx context.Context, st *store.Store) (store.Account, *auth.Signer, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return store.Account{}, nil, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return store.Account{}, nil, err
	}
	pk, err := auth.ParsePublicKey(string(ssh.MarshalAuthorizedKey(sshPub)))
	if err != nil {
		return store.Account{}, nil, err
	}
	acct, err := st.CreateAccount(ctx, store.Account{Login: "bench", Email: "bench@localhost"})
	if err != nil {
		return store.Account{}, nil, err
	}
	if _, err := st.CreateKey(ctx, store.Key{OwnerID: acct.ID, Name: "bench", FingerprintMD5: pk.MD5,
		FingerprintSHA256: pk.SHA256, Text: pk.OpenSSH}); err != nil {
		return store.Account{}, nil, err
	}
	if err := service.EnsurePackages(ctx, st); err != nil {
		return store.Account{}, nil, err
	}
	signer, err := auth.NewSigner("bench", "", priv)
	return acct, signer, err
}

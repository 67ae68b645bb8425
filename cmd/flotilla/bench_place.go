package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/scheduler"
	"flotilla/store"
)

func init() { benchPlace = runBenchPlace }

// placeResult is what `flotilla bench place --json` prints.
type placeResult struct {
	Nodes       int     `json:"nodes"`
	Instances   int     `json:"instances"`
	Replicas    int     `json:"replicas"`
	Concurrency int     `json:"concurrency_per_replica"`
	GroupCommit int     `json:"group_commit"`
	Policy      string  `json:"policy"`
	Fill        float64 `json:"fill"`
	Owners      int     `json:"owners"`

	// The pure scheduler: scheduler.Place and a reservation per request on
	// one snapshot, no database.
	DecisionsPerSec float64 `json:"decisions_per_sec"`
	DecisionP50Us   float64 `json:"decision_p50_us"`
	DecisionP99Us   float64 `json:"decision_p99_us"`
	DecisionPlaced  int     `json:"decision_placed"`

	// Through PostgreSQL with the create commit path.
	CommittedPerSec float64 `json:"committed_per_sec"`
	WallMs          float64 `json:"wall_ms"`
	P50Ms           float64 `json:"p50_ms"`
	P99Ms           float64 `json:"p99_ms"`
	MaxMs           float64 `json:"max_ms"`
	PlacedP99Ms     float64 `json:"placed_p99_ms"`
	Conflicts       int64   `json:"conflicts"`
	ConflictFrac    float64 `json:"conflict_fraction"`
	Placed          int     `json:"placed"`
	Failed          int     `json:"failed"`
	FailedOther     int     `json:"failed_other"`
	FirstError      string  `json:"first_error,omitempty"`

	CapacityMemoryMiB int64   `json:"capacity_memory_mib"`
	PlacedMemoryMiB   int64   `json:"placed_memory_mib"`
	FFDMemoryMiB      int64   `json:"ffd_memory_mib"`
	PackingEff        float64 `json:"packing_efficiency"`
	PureScheduleEff   float64 `json:"pure_scheduler_packing_efficiency"`

	OvercommittedNodes int   `json:"overcommitted_nodes"`
	MismatchedNodes    int   `json:"mismatched_nodes"`
	LiveInstances      int64 `json:"live_instances"`

	GOMAXPROCS int    `json:"gomaxprocs"`
	LoadAvg    string `json:"loadavg"`
}

// benchWorkload is the generated cluster and request stream.
type benchWorkload struct {
	nodes []store.BulkNode
	reqs  []benchReq
}

type benchReq struct {
	memMiB, diskMiB, vcpusMilli int64
}

const benchBrand = "joyent-minimal"

// newBenchWorkload draws a package mix like scheduler.md §5.5's W1: 70%
// small (1-4 GiB), 25% medium (8-32 GiB), 5% large (64-256 GiB); disk is 16
// times memory and one vCPU per 4 GiB. Nodes come in three shapes (half,
// one and two times a base size, 40/40/20) whose base is chosen so that
// the requests ask for fill times the cluster's memory.
func newBenchWorkload(nodes, instances int, fill float64, seed uint64) benchWorkload {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	var w benchWorkload
	var total int64
	for range instances {
		var gib int64
		switch x := rng.Float64(); {
		case x < 0.70:
			gib = []int64{1, 2, 4}[rng.IntN(3)]
		case x < 0.95:
			gib = []int64{8, 16, 32}[rng.IntN(3)]
		default:
			gib = []int64{64, 128, 256}[rng.IntN(3)]
		}
		r := benchReq{memMiB: gib << 10, diskMiB: gib << 14, vcpusMilli: max(gib/4, 1) * 1000}
		total += r.memMiB
		w.reqs = append(w.reqs, r)
	}
	baseGiB := max(int64(float64(total)/fill/float64(max(nodes, 1)))>>10, 4)
	for i := range nodes {
		mult := []float64{0.5, 0.5, 1, 1, 2}[i%5]
		gib := int64(float64(baseGiB) * mult)
		w.nodes = append(w.nodes, store.BulkNode{
			Name: fmt.Sprintf("bench-%05d", i), Brands: []string{benchBrand, "lx"},
			MemoryMiB: gib << 10, DiskMiB: gib << 15, VCPUsMilli: max(gib/4, 1) * 1000,
			MaxInstances: 1000,
		})
	}
	return w
}

func (r benchReq) request(id, owner string) scheduler.Request {
	return scheduler.Request{InstanceID: id, OwnerID: owner, Brand: benchBrand, MemoryMiB: r.memMiB,
		DiskMiB: r.diskMiB, VCPUs: float64(r.vcpusMilli) / 1000}
}

func runBenchPlace(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench place", flag.ContinueOnError)
	nodes := fs.Int("nodes", 1000, "compute nodes")
	instances := fs.Int("instances", 10000, "instances to place")
	replicas := fs.Int("replicas", 1, "concurrent placers, each with its own snapshot (API replicas)")
	conc := fs.Int("concurrency", 8, "concurrent creates per replica")
	policy := fs.String("policy", "pack", "pack or spread")
	fill := fs.Float64("fill", 1.0, "requested memory over cluster memory")
	group := fs.Int("group-commit", 0, "most creates per transaction (0: the placer's default; -1: off)")
	commitConc := fs.Int("commit-concurrency", 0, "group transactions in flight per replica (0: the placer's default)")
	refresh := fs.Duration("refresh", 2*time.Second, "snapshot reload interval")
	owners := fs.Int("owners", 1000, "accounts the instances belong to, round robin")
	seed := fs.Uint64("seed", 1, "workload seed")
	db := fs.String("db", "", "use this PostgreSQL database (must be empty and migrated) instead of a private server")
	asJSON := fs.Bool("json", false, "print JSON")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the database phase to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *policy != string(scheduler.PolicyPack) && *policy != string(scheduler.PolicySpread) {
		return usagef("--policy must be pack or spread")
	}
	if *nodes < 1 || *instances < 1 || *replicas < 1 || *conc < 1 || *owners < 1 || !(*fill > 0) {
		return usagef("--nodes, --instances, --replicas, --concurrency, --owners and --fill must be positive")
	}
	w := newBenchWorkload(*nodes, *instances, *fill, *seed)
	res := placeResult{Nodes: *nodes, Instances: *instances, Replicas: *replicas, Concurrency: *conc,
		GroupCommit: *group, Policy: *policy, Fill: *fill, Owners: *owners, GOMAXPROCS: runtime.GOMAXPROCS(0)}

	// Offline bound and the pure scheduler, on scheduler nodes equal to the
	// rows the database will hold.
	snodes := make([]scheduler.Node, len(w.nodes))
	for i, n := range w.nodes {
		snodes[i] = scheduler.Node{ID: fmt.Sprintf("00000000-0000-0000-0000-%012d", i), Hostname: n.Name,
			State: scheduler.NodeRunning, Brands: n.Brands,
			Capacity: scheduler.Resources{MemoryMiB: n.MemoryMiB, DiskMiB: n.DiskMiB, VCPUs: float64(n.VCPUsMilli) / 1000, Instances: n.MaxInstances},
			Ratios:   scheduler.Ratios{Memory: 1, Disk: 1, VCPU: 4}}
		res.CapacityMemoryMiB += n.MemoryMiB
	}
	ownerIDs := make([]string, *owners)
	for i := range ownerIDs {
		ownerIDs[i] = uuid.NewString()
	}
	sreqs := make([]scheduler.Request, len(w.reqs))
	for i, r := range w.reqs {
		sreqs[i] = r.request(fmt.Sprintf("00000000-0000-0000-0001-%012d", i), ownerIDs[i%len(ownerIDs)])
	}
	res.FFDMemoryMiB = scheduler.FirstFitDecreasing(snodes, sreqs)
	pureMem, err := benchPureDecisions(snodes, sreqs, scheduler.Policy(*policy), &res)
	if err != nil {
		return err
	}
	res.PureScheduleEff = ratioOf(pureMem, res.FFDMemoryMiB)

	// The database.
	url := *db
	if url == "" {
		_, dbURL, stopDB, err := benchDatabase(ctx, "flotilla-bench-place-", nil)
		if err != nil {
			return err
		}
		defer stopDB()
		url = dbURL
		if err := store.Migrate(ctx, url); err != nil {
			return err
		}
	}
	st, err := store.Open(ctx, url)
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.BulkInsertNodes(ctx, w.nodes); err != nil {
		return err
	}
	run := uuid.NewString()[:8]
	for i := range ownerIDs {
		a, err := st.CreateAccount(ctx, store.Account{Login: fmt.Sprintf("bench-%s-%d", run, i), Email: "bench@localhost"})
		if err != nil {
			return err
		}
		ownerIDs[i] = a.ID
	}
	img, err := st.CreateImage(ctx, store.Image{Name: "bench", Version: "1", OS: "linux", Type: "zone-dataset", Public: true})
	if err != nil {
		return err
	}
	log := slog.New(slog.DiscardHandler)
	placers := make([]*service.Placer, *replicas)
	rctx, stopReload := context.WithCancel(ctx)
	var reloads sync.WaitGroup
	defer func() { stopReload(); reloads.Wait() }()
	for i := range placers {
		placers[i], err = service.NewPlacer(ctx, st, log, service.PlacerOptions{Policy: scheduler.Policy(*policy),
			Refresh: *refresh, GroupCommit: *group, CommitConcurrency: *commitConc})
		if err != nil {
			return err
		}
		reloads.Go(func() { placers[i].Run(rctx) })
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
	lat := make([]time.Duration, len(w.reqs))
	ok := make([]bool, len(w.reqs))
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for r := range placers {
		p := placers[r]
		for range *conc {
			wg.Go(func() {
				for {
					i := int(next.Add(1) - 1)
					if i >= len(w.reqs) {
						return
					}
					q := w.reqs[i]
					id := uuid.NewString()
					owner := ownerIDs[i%len(ownerIDs)]
					in := store.NewInstance{Instance: store.Instance{ID: id, OwnerID: owner, Name: fmt.Sprintf("b%d", i),
						Brand: benchBrand, ImageID: img.ID, PackageName: "bench", MemoryMiB: q.memMiB, DiskMiB: q.diskMiB,
						VCPUsMilli: q.vcpusMilli}}
					t0 := time.Now()
					_, _, err := p.Place(ctx, q.request(id, owner), in)
					lat[i] = time.Since(t0)
					ok[i] = err == nil
					if err != nil {
						mu.Lock()
						res.Failed++
						if !errdefs.Is(err, errdefs.InsufficientCapacity) {
							res.FailedOther++
						}
						if res.FirstError == "" {
							res.FirstError = err.Error()
						}
						mu.Unlock()
					}
				}
			})
		}
	}
	wg.Wait()
	wall := time.Since(start)
	if *cpuprofile != "" {
		pprof.StopCPUProfile()
	}

	var placedLat []time.Duration
	for i, r := range w.reqs {
		if ok[i] {
			res.Placed++
			res.PlacedMemoryMiB += r.memMiB
			placedLat = append(placedLat, lat[i])
		}
	}
	for _, p := range placers {
		res.Conflicts += p.Conflicts()
	}
	res.ConflictFrac = float64(res.Conflicts) / float64(max(res.Placed, 1))
	res.WallMs = ms(wall)
	res.CommittedPerSec = float64(res.Placed) / wall.Seconds()
	res.P50Ms, res.P99Ms, res.MaxMs = pct(lat, 0.50), pct(lat, 0.99), pct(lat, 1)
	res.PlacedP99Ms = pct(placedLat, 0.99)
	res.PackingEff = ratioOf(res.PlacedMemoryMiB, res.FFDMemoryMiB)

	audit, err := st.CheckPlacements(ctx)
	if err != nil {
		return err
	}
	res.OvercommittedNodes, res.MismatchedNodes, res.LiveInstances = audit.Overcommitted, audit.Mismatched, audit.LiveInstances
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}

	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		fmt.Printf("pure scheduler: %.0f decisions/s (p99 %.0f µs), packing %.4f of FFD\n",
			res.DecisionsPerSec, res.DecisionP99Us, res.PureScheduleEff)
		fmt.Printf("committed: %.0f placements/s, p50 %.2f ms, p99 %.2f ms, %d placed, %d failed, %d conflicts, packing %.4f of FFD\n",
			res.CommittedPerSec, res.P50Ms, res.P99Ms, res.Placed, res.Failed, res.Conflicts, res.PackingEff)
		fmt.Printf("invariants: %s\n", audit)
	}
	if audit.Overcommitted != 0 || audit.Mismatched != 0 || int64(res.Placed) != audit.LiveInstances {
		return fmt.Errorf("placement invariants broken: %s; %d placements reported", audit, res.Placed)
	}
	return nil
}

// benchPureDecisions places every request on one snapshot, reserving each
// winner's resources and recording the instance as a resident as the placer
// does, and returns the memory placed.
func benchPureDecisions(nodes []scheduler.Node, reqs []scheduler.Request, policy scheduler.Policy, res *placeResult) (int64, error) {
	snap := scheduler.NewSnapshot()
	for _, n := range nodes {
		if err := snap.Upsert(n); err != nil {
			return 0, err
		}
	}
	opts := scheduler.Options{Policy: policy, Candidates: 8}
	lat := make([]time.Duration, len(reqs))
	var placed int64
	start := time.Now()
	for i, r := range reqs {
		t0 := time.Now()
		d, err := scheduler.Place(snap, r, opts)
		if err == nil {
			snap.UpdateUsage(d.NodeID, scheduler.Resources{MemoryMiB: r.MemoryMiB, DiskMiB: r.DiskMiB, VCPUs: r.VCPUs, Instances: 1})
			snap.AddResident(scheduler.Resident{ID: r.InstanceID, OwnerID: r.OwnerID, NodeID: d.NodeID})
			placed += r.MemoryMiB
			res.DecisionPlaced++
		} else if !errdefs.Is(err, errdefs.InsufficientCapacity) {
			return 0, err
		}
		lat[i] = time.Since(t0)
	}
	res.DecisionsPerSec = float64(len(reqs)) / time.Since(start).Seconds()
	res.DecisionP50Us = pct(lat, 0.50) * 1e3
	res.DecisionP99Us = pct(lat, 0.99) * 1e3
	return placed, nil
}

func ratioOf(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

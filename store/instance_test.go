package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"flotilla/api/errdefs"
	"flotilla/store"
	"flotilla/store/storetest"
)

type fixture struct {
	st      *store.Store
	owner   store.Account
	other   store.Account
	image   store.Image
	network store.Network
	node    store.Node
}

func newFixture(t *testing.T, nodeMemMiB int64, subnet string) fixture {
	t.Helper()
	ctx := context.Background()
	st := storetest.New(t)
	f := fixture{st: st}
	var err error
	if f.owner, err = st.CreateAccount(ctx, store.Account{Login: "alice", Email: "a@x"}); err != nil {
		t.Fatal(err)
	}
	if f.other, err = st.CreateAccount(ctx, store.Account{Login: "bob", Email: "b@x"}); err != nil {
		t.Fatal(err)
	}
	if f.image, err = st.CreateImage(ctx, store.Image{Name: "base", Version: "1", OS: "linux", Type: "zone-dataset", Public: true}); err != nil {
		t.Fatal(err)
	}
	if f.network, err = st.CreateNetwork(ctx, store.Network{Name: "net", Subnet: subnet}); err != nil {
		t.Fatal(err)
	}
	if f.node, err = st.RegisterNode(ctx, store.NodeRegistration{Name: "n1", Brands: []string{"joyent-minimal"},
		MemoryMiB: nodeMemMiB, DiskMiB: 1 << 20, VCPUsMilli: 64000}, []byte("cred")); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f fixture) create(ctx context.Context, owner, name string, mem int64) (store.Instance, error) {
	inst, _, err := f.st.CreateInstance(ctx, store.NewInstance{
		Instance: store.Instance{ID: uuid.NewString(), OwnerID: owner, Name: name, Brand: "joyent-minimal",
			ImageID: f.image.ID, MemoryMiB: mem, DiskMiB: 1024, VCPUsMilli: 1000},
		Networks: []string{f.network.ID}, Candidates: []string{f.node.ID},
	})
	return inst, err
}

func TestCreateInstance(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 4096, "10.50.0.0/24")
	t.Run("OK", func(t *testing.T) {
		in, err := f.create(ctx, f.owner.ID, "web1", 1024)
		if err != nil {
			t.Fatal(err)
		}
		if in.NodeID == nil || *in.NodeID != f.node.ID || in.State != "provisioning" || len(in.NICs) != 1 {
			t.Fatalf("unexpected instance %+v", in)
		}
		n, _ := f.st.GetNode(ctx, f.node.ID)
		if n.UsedMemoryMiB != 1024 || n.Instances != 1 {
			t.Fatalf("node usage %d MiB, %d instances; want 1024, 1", n.UsedMemoryMiB, n.Instances)
		}
	})
	t.Run("ErrNameTaken", func(t *testing.T) {
		_, err := f.create(ctx, f.owner.ID, "web1", 256)
		if errdefs.CodeOf(err) != errdefs.Conflict {
			t.Fatalf("got %v, want a conflict", err)
		}
	})
	t.Run("SameNameOtherTenant", func(t *testing.T) {
		if _, err := f.create(ctx, f.other.ID, "web1", 256); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrNoCapacity", func(t *testing.T) {
		_, err := f.create(ctx, f.owner.ID, "big", 8192)
		if err != store.ErrNoCandidate {
			t.Fatalf("got %v, want ErrNoCandidate", err)
		}
		var n int
		f.st.Pool().QueryRow(ctx, `SELECT count(*) FROM instances WHERE name = 'big'`).Scan(&n)
		if n != 0 {
			t.Fatalf("a failed create left %d rows", n)
		}
	})
	t.Run("TenantIsolation", func(t *testing.T) {
		list, err := f.st.ListInstances(ctx, f.other.ID, store.InstanceFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range list {
			if in.OwnerID != f.other.ID {
				t.Fatalf("bob sees alice's instance %s", in.ID)
			}
			if _, err := f.st.GetInstance(ctx, f.owner.ID, in.ID); errdefs.CodeOf(err) != errdefs.NotFound {
				t.Fatalf("alice can read bob's instance: %v", err)
			}
		}
	})
}

func TestConcurrentCreatesNeverOverbook(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 4096, "10.51.0.0/24")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, full := 0, 0
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.create(ctx, f.owner.ID, fmt.Sprintf("c%d", i), 256)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case err == store.ErrNoCandidate:
				full++
			default:
				t.Errorf("create %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if ok != 16 || full != 24 {
		t.Fatalf("%d placed, %d refused; want 16 and 24 on a 4096 MiB node", ok, full)
	}
	var used, sum int64
	f.st.Pool().QueryRow(ctx, `SELECT used_memory_mib, (SELECT sum(memory_mib) FROM instances WHERE node_id = $1) FROM nodes WHERE id = $1`, f.node.ID).Scan(&used, &sum)
	if used != 4096 || sum != 4096 {
		t.Fatalf("node used %d, instances sum %d; want 4096 both", used, sum)
	}
}

func TestIPAMExhaustion(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1<<20, "10.52.0.0/29") // 8 addresses: .1 gateway, .2-.6 usable, .7 broadcast
	seen := map[string]bool{}
	for i := 0; i < 5; i++ {
		in, err := f.create(ctx, f.owner.ID, fmt.Sprintf("ip%d", i), 128)
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		ip := in.NICs[0].IP
		if seen[ip] || ip == "10.52.0.1" || ip == "10.52.0.7" {
			t.Fatalf("bad or duplicate address %s", ip)
		}
		seen[ip] = true
	}
	_, err := f.create(ctx, f.owner.ID, "ip-full", 128)
	if errdefs.CodeOf(err) != errdefs.InsufficientCapacity {
		t.Fatalf("sixth create: %v, want insufficient capacity", err)
	}
}

func TestDeleteReleasesCapacityAndAddresses(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 2048, "10.53.0.0/24")
	in, err := f.create(ctx, f.owner.ID, "gone", 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.DeleteInstance(ctx, f.owner.ID, in.ID, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.st.ReportStatus(ctx, f.node.ID, in.ID, store.StatusReport{State: "deleted", ObservedGeneration: 2}); err != nil {
		t.Fatal(err)
	}
	got, err := f.st.GetInstance(ctx, f.owner.ID, in.ID)
	if err != nil || got.State != "deleted" || len(got.NICs) != 0 {
		t.Fatalf("after delete: %+v, %v", got, err)
	}
	if _, err := f.st.UpdateInstance(ctx, f.owner.ID, in.ID, store.Mutation{Action: "start"}); errdefs.CodeOf(err) != errdefs.Gone {
		t.Fatalf("acting on a deleted instance: %v, want gone", err)
	}
	n, _ := f.st.GetNode(ctx, f.node.ID)
	if n.UsedMemoryMiB != 0 || n.Instances != 0 {
		t.Fatalf("capacity not released: %+v", n)
	}
	if _, err := f.create(ctx, f.owner.ID, "gone", 2048); err != nil {
		t.Fatalf("name and capacity should be free again: %v", err)
	}
}

func TestAssignmentsRevisions(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 8192, "10.54.0.0/24")
	list, rev, err := f.st.Assignments(ctx, f.node.ID, 0, 0)
	if err != nil || len(list) != 0 || rev == 0 {
		t.Fatalf("empty node: %d assignments, rev %d, %v; want none and a non-zero revision", len(list), rev, err)
	}
	in, err := f.create(ctx, f.owner.ID, "a1", 512)
	if err != nil {
		t.Fatal(err)
	}
	list, rev2, err := f.st.Assignments(ctx, f.node.ID, rev, 0)
	if err != nil || len(list) != 1 || list[0].ID != in.ID || rev2 <= rev {
		t.Fatalf("after create: %d assignments, rev %d -> %d, %v", len(list), rev, rev2, err)
	}
	if list, _, _ := f.st.Assignments(ctx, f.node.ID, rev2, 0); len(list) != 0 {
		t.Fatalf("nothing changed, got %d assignments", len(list))
	}
	if _, err := f.st.UpdateInstance(ctx, f.owner.ID, in.ID, store.Mutation{Action: "stop",
		Apply: func(i *store.Instance) error { i.DesiredState = "stopped"; return nil }}); err != nil {
		t.Fatal(err)
	}
	list, _, _ = f.st.Assignments(ctx, f.node.ID, rev2, 0)
	if len(list) != 1 || list[0].DesiredState != "stopped" || list[0].Generation != 2 {
		t.Fatalf("after stop: %+v", list)
	}
}

func TestAuditJobsFinishOnReport(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 8192, "10.55.0.0/24")
	in, err := f.create(ctx, f.owner.ID, "j1", 512)
	if err != nil {
		t.Fatal(err)
	}
	if entries, _ := f.st.ListInstanceAudit(ctx, f.owner.ID, in.ID); len(entries) != 0 {
		t.Fatalf("provision listed before the node reported: %+v", entries)
	}
	if err := f.st.ReportStatus(ctx, f.node.ID, in.ID, store.StatusReport{State: "running", ObservedGeneration: 1}); err != nil {
		t.Fatal(err)
	}
	entries, _ := f.st.ListInstanceAudit(ctx, f.owner.ID, in.ID)
	if len(entries) != 1 || entries[0].Action != "provision" {
		t.Fatalf("after report: %+v", entries)
	}
	start := time.Now()
	if _, err := f.st.UpdateInstance(ctx, f.owner.ID, in.ID, store.Mutation{Action: "set_metadata"}); err != nil {
		t.Fatal(err)
	}
	if err := f.st.ReportStatus(ctx, f.node.ID, in.ID, store.StatusReport{State: "running", ObservedGeneration: 2}); err != nil {
		t.Fatal(err)
	}
	var last []store.AuditEntry
	for time.Since(start) < 3*time.Second {
		last, _ = f.st.ListInstanceAudit(ctx, f.owner.ID, in.ID)
		if len(last) == 2 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(last) != 2 || last[0].Action != "set_metadata" || !last[0].At.After(start) {
		t.Fatalf("set_metadata job: %+v", last)
	}
}

func TestReportHealth(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 8192, "10.56.0.0/24")
	in, err := f.create(ctx, f.owner.ID, "h1", 512)
	if err != nil {
		t.Fatal(err)
	}
	seq, err := f.st.LastChangeSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC().Truncate(time.Microsecond)
	probe := store.HealthResult{Start: at, End: at.Add(time.Millisecond), ExitCode: 0, Output: "ok\n"}
	reports := []store.StatusReport{
		{State: "running", ObservedGeneration: 1, Health: &store.Health{Status: "starting"}},
		{State: "running", ObservedGeneration: 1, Health: &store.Health{Status: "healthy", Log: []store.HealthResult{probe}}},
		{State: "running", ObservedGeneration: 1, Health: &store.Health{Status: "healthy", FailingStreak: 1, Log: []store.HealthResult{probe}}},
		{State: "running", ObservedGeneration: 1, Health: &store.Health{Status: "unhealthy", FailingStreak: 3, Log: []store.HealthResult{probe}}},
		// A stopped container is shown unhealthy: no event.
		{State: "stopped", ObservedGeneration: 1, Health: &store.Health{Status: "healthy"}},
	}
	for i, r := range reports {
		if err := f.st.ReportStatus(ctx, f.node.ID, in.ID, r); err != nil {
			t.Fatalf("report %d: %v", i, err)
		}
		if i == 2 {
			got, err := f.st.GetInstance(ctx, f.owner.ID, in.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Health == nil || got.Health.Status != "healthy" || got.Health.FailingStreak != 1 || len(got.Health.Log) != 1 ||
				!got.Health.Log[0].Start.Equal(at) || got.Health.Log[0].Output != "ok\n" {
				t.Fatalf("health stored: %+v", got.Health)
			}
		}
	}
	changes, err := f.st.ChangesSince(ctx, seq, f.owner.ID, "event", 100)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, c := range changes {
		actions = append(actions, c.Action)
	}
	if fmt.Sprint(actions) != "[health_status: healthy health_status: unhealthy]" {
		t.Fatalf("health events: %q", actions)
	}
	// A container without a health check reports none: the column clears.
	if err := f.st.ReportStatus(ctx, f.node.ID, in.ID, store.StatusReport{State: "running", ObservedGeneration: 1}); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.st.GetInstance(ctx, f.owner.ID, in.ID); got.Health != nil {
		t.Fatalf("health after a report without one: %+v", got.Health)
	}
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// createOutcome is what one create request got.
type createOutcome struct {
	Status int
	ID     string
	Body   string
	Err    error
	Took   time.Duration
}

// createMachine posts one create with an Idempotency-Key.
func (c *apiClient) createMachine(ctx context.Context, body map[string]any, key string) createOutcome {
	var hdr http.Header
	if key != "" {
		hdr = http.Header{"Idempotency-Key": {key}}
	}
	start := time.Now()
	status, b, err := c.do(ctx, "POST", "/machines", body, hdr)
	o := createOutcome{Status: status, Body: string(b), Err: err, Took: time.Since(start)}
	if err == nil && status == 201 {
		var m machine
		if jerr := json.Unmarshal(b, &m); jerr != nil || m.ID == "" {
			o.Err = fmt.Errorf("201 without an id: %s", b)
		}
		o.ID = m.ID
	}
	return o
}

// TestServeKilledDuringCreates: SIGKILL `flotilla serve` in the middle of 200
// concurrent creates, each with an Idempotency-Key; after a restart every
// create that did not get a 201 is retried with its key. Every instance
// converges to running and none exists twice; a key answers with the same id
// before and after the crash.
func TestServeKilledDuringCreates(t *testing.T) {
	const n = 200
	c := newServeCluster(t, "e2e_crash")
	c.startAgent("c1", 65536, 4<<20, 64)
	c.startAgent("c2", 65536, 4<<20, 64)

	body := func(i int) map[string]any {
		return map[string]any{"name": fmt.Sprintf("crash-%03d", i), "image": busyboxID, "package": "g1-nano-256M"}
	}
	key := func(i int) string { return fmt.Sprintf("e2e-crash-key-%03d", i) }

	ctx := ctxTimeout(t, 3*time.Minute)
	// One create first, so that the burst meets a scheduler snapshot that
	// has the nodes (a burst right after nodes join is another matter: see
	// the report on Placer.Place's stale check).
	if o := c.api.createMachine(ctx, map[string]any{"name": "warmup", "image": busyboxID, "package": "g1-nano-256M"}, ""); o.Status != 201 {
		t.Fatalf("warm-up create: %d %s %v", o.Status, o.Body, o.Err)
	}
	first := make([]createOutcome, n)
	var finished atomic.Int32
	killAt := int32(n / 10)
	killed := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		for finished.Load() < killAt {
			time.Sleep(time.Millisecond)
		}
		c.serve.Kill()
		killed <- time.Since(start)
	}()
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			first[i] = c.api.createMachine(ctx, body(i), key(i))
			finished.Add(1)
		}()
	}
	close(gate)
	wg.Wait()
	killedAfter := <-killed

	var got201, refused, transport int
	for _, o := range first {
		switch {
		case o.Err != nil:
			transport++
		case o.Status == 201:
			got201++
		default:
			refused++
		}
	}
	t.Logf("before the kill at %s: %d got 201, %d got another status, %d got no answer", killedAfter.Round(time.Millisecond), got201, refused, transport)
	figure("crash: 201s before SIGKILL of serve", "%d of %d (kill after %s)", got201, n, killedAfter.Round(time.Millisecond))
	if got201 == n {
		t.Fatal("every create finished before serve was killed: the test did not test a crash")
	}
	for i, o := range first {
		if o.Err == nil && o.Status != 201 && o.Status < 500 {
			t.Errorf("create %d before the crash: %d %s, want 201 or no answer", i, o.Status, o.Body)
		}
	}

	// Creates the database committed but whose 201 never left: the retries
	// of these are the ones idempotency keys exist for.
	var committed int
	queryRow(t, c.db, `SELECT count(*) FROM instances WHERE owner_id = $1 AND name LIKE 'crash-%'`, []any{c.ownerID}, &committed)
	figure("crash: committed without a 201 reaching the client", "%d", committed-got201)

	restart := time.Now()
	c.startServe()
	figure("crash: serve restart to ready", "%s", time.Since(restart).Round(time.Millisecond))

	// Retry the creates without a 201, then replay every key once more: a
	// key must give the same id every time it gives a 201.
	final := make([]string, n)
	retry := func(i int) (createOutcome, error) {
		deadline := time.Now().Add(60 * time.Second)
		for {
			o := c.api.createMachine(ctx, body(i), key(i))
			if o.Err == nil && o.Status == 201 {
				return o, nil
			}
			if o.Err == nil && o.Status < 500 && o.Status != 429 {
				return o, fmt.Errorf("retry of create %d: %d %s", i, o.Status, o.Body)
			}
			if time.Now().After(deadline) {
				return o, fmt.Errorf("retry of create %d: no 201 within 60 s: %d %s %v", i, o.Status, o.Body, o.Err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var mu sync.Mutex
	sem := make(chan struct{}, 16)
	retried := 0
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			o, err := retry(i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Error(err)
				return
			}
			if first[i].Status == 201 && first[i].ID != o.ID {
				t.Errorf("key %s: id %s before the crash, %s after", key(i), first[i].ID, o.ID)
			}
			if first[i].Status != 201 {
				retried++
			}
			final[i] = o.ID
		}()
	}
	wg.Wait()
	t.Logf("retried %d creates after the restart", retried)
	if t.Failed() {
		return
	}

	t.Run("NothingCreatedTwice", func(t *testing.T) {
		var rows, names, dupNames int
		queryRow(t, c.db, `SELECT count(*), count(DISTINCT name) FROM instances WHERE owner_id = $1 AND name LIKE 'crash-%'`,
			[]any{c.ownerID}, &rows, &names)
		queryRow(t, c.db, `SELECT count(*) FROM (SELECT name FROM instances WHERE owner_id = $1 GROUP BY name HAVING count(*) > 1) d`,
			[]any{c.ownerID}, &dupNames)
		if rows != n || names != n || dupNames != 0 {
			t.Errorf("instances: %d rows, %d distinct names, %d names more than once; want %d, %d, 0", rows, names, dupNames, n, n)
		}
		var keys int
		queryRow(t, c.db, `SELECT count(*) FROM idempotency_keys WHERE owner_id = $1 AND key LIKE 'e2e-crash-key-%'`, []any{c.ownerID}, &keys)
		if keys != n {
			t.Errorf("%d idempotency keys recorded, want %d", keys, n)
		}
		seen := map[string]int{}
		for i, id := range final {
			if j, dup := seen[id]; dup {
				t.Errorf("creates %d and %d got the same id %s", j, i, id)
			}
			seen[id] = i
			var name string
			queryRow(t, c.db, `SELECT name FROM instances WHERE id = $1`, []any{id}, &name)
			if want := fmt.Sprintf("crash-%03d", i); name != want {
				t.Errorf("id %s from key %s is instance %q, want %q", id, key(i), name, want)
			}
		}
	})

	t.Run("AllConvergeToRunning", func(t *testing.T) {
		start := time.Now()
		for {
			var running, total int
			queryRow(t, c.db, `SELECT count(*) FILTER (WHERE state = 'running'), count(*) FROM instances WHERE owner_id = $1 AND name LIKE 'crash-%'`,
				[]any{c.ownerID}, &running, &total)
			if running == n {
				figure("crash: restart to all 200 running", "%s", time.Since(restart).Round(time.Millisecond))
				break
			}
			if time.Since(start) > 60*time.Second {
				t.Fatalf("%d of %d instances running 60 s after the restart", running, total)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// And the capacity the nodes account for is exactly what they run.
		var bad int
		queryRow(t, c.db, `SELECT count(*) FROM nodes n WHERE n.used_memory_mib <> COALESCE((SELECT sum(memory_mib) FROM instances i
			WHERE i.node_id = n.id AND i.desired_state <> 'deleted'), 0)`, nil, &bad)
		if bad != 0 {
			t.Errorf("%d nodes whose used memory differs from the sum of their instances", bad)
		}
	})
}

package agent

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestQueueDedup(t *testing.T) {
	q := newQueue(time.Millisecond, time.Second)
	q.Add("a")
	q.Add("b")
	q.Add("a")
	if q.Len() != 2 {
		t.Fatalf("Len = %d, want 2", q.Len())
	}
	k, _ := q.Get()
	if k != "a" {
		t.Fatalf("Get = %q, want a (FIFO)", k)
	}
	// Added while processing: not handed out until Done.
	q.Add("a")
	k2, _ := q.Get()
	if k2 != "b" || q.Len() != 0 {
		t.Fatalf("Get = %q with %d waiting; a must wait for Done", k2, q.Len())
	}
	q.Done("a")
	if q.Len() != 1 {
		t.Fatalf("after Done, Len = %d, want 1", q.Len())
	}
	q.Done("b")
	q.ShutDown()
	if _, ok := q.Get(); ok {
		t.Fatal("Get after ShutDown returned a key")
	}
}

func TestQueueNoConcurrentProcessing(t *testing.T) {
	q := newQueue(time.Millisecond, time.Second)
	var busy sync.Map
	var overlaps, processed atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				k, ok := q.Get()
				if !ok {
					return
				}
				if _, loaded := busy.LoadOrStore(k, true); loaded {
					overlaps.Add(1)
				}
				time.Sleep(50 * time.Microsecond)
				busy.Delete(k)
				processed.Add(1)
				q.Done(k)
			}
		})
	}
	for i := range 2000 {
		q.Add([]string{"a", "b", "c"}[i%3])
	}
	waitFor(t, 2*time.Second, "queue drained", func() bool { return q.Len() == 0 })
	time.Sleep(10 * time.Millisecond)
	q.ShutDown()
	wg.Wait()
	if overlaps.Load() != 0 {
		t.Fatalf("%d times a key was processed by two workers at once", overlaps.Load())
	}
	if p := processed.Load(); p >= 2000 {
		t.Fatalf("processed %d times; duplicates were not collapsed", p)
	}
}

func TestQueueBackoff(t *testing.T) {
	q := newQueue(20*time.Millisecond, 100*time.Millisecond)
	want := []time.Duration{20, 40, 80, 100, 100}
	for i, w := range want {
		if got := q.backoff(i); got != w*time.Millisecond {
			t.Fatalf("backoff(%d) = %v, want %v", i, got, w*time.Millisecond)
		}
	}
	t0 := time.Now()
	q.AddRateLimited("a")
	q.Add("a") // held off by the backoff
	if q.Len() != 0 {
		t.Fatal("Add bypassed the backoff")
	}
	k, _ := q.Get()
	if el := time.Since(t0); k != "a" || el < 20*time.Millisecond {
		t.Fatalf("Get = %q after %v, want a after >= 20ms", k, el)
	}
	q.Done("a")
	if q.NumRequeues("a") != 1 {
		t.Fatalf("NumRequeues = %d", q.NumRequeues("a"))
	}
	q.AddRateLimited("a")
	q.AddNow("a") // news: no waiting, fresh count
	if q.Len() != 1 || q.NumRequeues("a") != 0 {
		t.Fatalf("AddNow: Len %d, NumRequeues %d", q.Len(), q.NumRequeues("a"))
	}
	q.ShutDown()
}

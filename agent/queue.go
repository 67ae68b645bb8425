package agent

import (
	"sync"
	"time"
)

// queue is a deduplicating work queue of instance ids with per-key
// exponential backoff, after kubernetes' workqueue as sample-controller uses
// it:
//
//   - a key added while it waits is queued once;
//   - a key added while a worker processes it is queued again only after
//     that worker calls Done, so no key is ever processed by two workers;
//   - AddRateLimited requeues after base*2^failures (capped), Forget resets;
//     while a key waits out its backoff, Add leaves it alone (AddNow does not).
type queue struct {
	base, max time.Duration

	mu         sync.Mutex
	cond       *sync.Cond
	fifo       []string
	waiting    map[string]bool // in fifo, or to be re-added on Done
	processing map[string]bool
	failures   map[string]int
	timers     map[string]*delayed
	shutdown   bool
}

// delayed is a pending AddAfter.
type delayed struct {
	at time.Time
	t  *time.Timer
}

func newQueue(base, max time.Duration) *queue {
	q := &queue{
		base:       base,
		max:        max,
		waiting:    map[string]bool{},
		processing: map[string]bool{},
		failures:   map[string]int{},
		timers:     map[string]*delayed{},
	}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Add queues key unless it is already waiting or waits out a delay (a
// key in backoff is not retried early by periodic resyncs).
func (q *queue) Add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.timers[key] != nil {
		return
	}
	q.addLocked(key)
}

// AddNow queues key at once, dropping its pending delay and failure count:
// for news (a new generation) that deserve fresh tries.
func (q *queue) AddNow(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if p := q.timers[key]; p != nil {
		p.t.Stop()
		delete(q.timers, key)
	}
	delete(q.failures, key)
	q.addLocked(key)
}

func (q *queue) addLocked(key string) {
	if q.shutdown || q.waiting[key] {
		return
	}
	q.waiting[key] = true
	if q.processing[key] {
		return // Done queues it
	}
	q.fifo = append(q.fifo, key)
	q.cond.Signal()
}

// AddAfter queues key after d. Of several pending delays for a key, the
// earliest wins.
func (q *queue) AddAfter(key string, d time.Duration) {
	if d <= 0 {
		q.Add(key)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shutdown {
		return
	}
	at := time.Now().Add(d)
	if p := q.timers[key]; p != nil {
		if !p.at.After(at) {
			return
		}
		p.t.Stop()
	}
	p := &delayed{at: at}
	p.t = time.AfterFunc(d, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.timers[key] == p {
			delete(q.timers, key)
		}
		q.addLocked(key)
	})
	q.timers[key] = p
}

// AddRateLimited requeues key after its backoff and counts a failure.
func (q *queue) AddRateLimited(key string) {
	q.mu.Lock()
	n := q.failures[key]
	q.failures[key] = n + 1
	q.mu.Unlock()
	q.AddAfter(key, q.backoff(n))
}

func (q *queue) backoff(failures int) time.Duration {
	d := q.base << min(failures, 30)
	if d <= 0 || d > q.max {
		return q.max
	}
	return d
}

// Forget clears key's failure count.
func (q *queue) Forget(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.failures, key)
}

// NumRequeues returns how many times key failed since it was last forgotten.
func (q *queue) NumRequeues(key string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.failures[key]
}

// Get blocks until a key is available and marks it processing. It returns
// false once the queue is shut down.
func (q *queue) Get() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.fifo) == 0 && !q.shutdown {
		q.cond.Wait()
	}
	if q.shutdown {
		return "", false
	}
	key := q.fifo[0]
	q.fifo[0] = ""
	q.fifo = q.fifo[1:]
	delete(q.waiting, key)
	q.processing[key] = true
	return key, true
}

// Done ends the processing of key, queueing it again if it was added meanwhile.
func (q *queue) Done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.processing, key)
	if q.waiting[key] && !q.shutdown {
		q.fifo = append(q.fifo, key)
		q.cond.Signal()
	}
}

// Len returns the number of keys waiting.
func (q *queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.fifo)
}

// ShutDown wakes all Get calls, which return false, and drops pending delays.
func (q *queue) ShutDown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.shutdown = true
	for k, p := range q.timers {
		p.t.Stop()
		delete(q.timers, k)
	}
	q.cond.Broadcast()
}

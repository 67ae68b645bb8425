package auth

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestLimiterTokenBucket(t *testing.T) {
	clock := &fakeClock{t: testNow}
	l := NewLimiter(2, 3, WithLimiterClock(clock.Now))
	for i := 0; i < 3; i++ {
		if ok, _ := l.Allow("alice"); !ok {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	ok, retry := l.Allow("alice")
	if ok || retry != 500*time.Millisecond {
		t.Fatalf("after the burst: ok=%v retry=%v, want false 500ms", ok, retry)
	}
	if ok, _ := l.Allow("bob"); !ok {
		t.Fatal("another key was limited by alice's requests")
	}
	clock.Advance(200 * time.Millisecond)
	if ok, retry := l.Allow("alice"); ok || retry != 300*time.Millisecond {
		t.Fatalf("after 200ms: ok=%v retry=%v, want false 300ms", ok, retry)
	}
	clock.Advance(300 * time.Millisecond)
	if ok, _ := l.Allow("alice"); !ok {
		t.Fatal("refused after a token refilled")
	}
	if ok, _ := l.Allow("alice"); ok {
		t.Fatal("allowed two requests on one refilled token")
	}
	// A long pause refills only up to the burst.
	clock.Advance(time.Hour)
	allowed := 0
	for i := 0; i < 10; i++ {
		if ok, _ := l.Allow("alice"); ok {
			allowed++
		}
	}
	if allowed != 3 {
		t.Errorf("after an hour %d requests allowed, want the burst of 3", allowed)
	}
	// A clock stepping backwards neither refills nor panics.
	clock.Advance(-time.Minute)
	if ok, _ := l.Allow("alice"); ok {
		t.Error("a clock step backwards refilled the bucket")
	}
}

func TestLimiterUnlimitedAndMinimumBurst(t *testing.T) {
	l := NewLimiter(0, 0)
	for i := 0; i < 1000; i++ {
		if ok, _ := l.Allow("k"); !ok {
			t.Fatal("rate 0 limited a request")
		}
	}
	if l.Len() != 0 {
		t.Errorf("an unlimited limiter tracked %d keys", l.Len())
	}
	clock := &fakeClock{t: testNow}
	l = NewLimiter(1, 0, WithLimiterClock(clock.Now))
	if ok, _ := l.Allow("k"); !ok {
		t.Fatal("burst 0 refused the first request")
	}
	if ok, retry := l.Allow("k"); ok || retry != time.Second {
		t.Fatalf("second request: %v %v", ok, retry)
	}
}

func TestLimiterForgetsIdleKeys(t *testing.T) {
	clock := &fakeClock{t: testNow}
	l := NewLimiter(10, 5, WithLimiterClock(clock.Now))
	for i := 0; i < 500; i++ {
		l.Allow(fmt.Sprint("key", i))
	}
	if l.Len() != 500 {
		t.Fatalf("tracking %d keys, want 500", l.Len())
	}
	clock.Advance(2 * time.Second) // every bucket has refilled
	l.Allow("late")
	if l.Len() != 1 {
		t.Errorf("after the keys went idle %d are tracked, want 1", l.Len())
	}
}

func TestLimiterBoundsMemory(t *testing.T) {
	clock := &fakeClock{t: testNow}
	l := NewLimiter(0.001, 1, WithLimiterClock(clock.Now), WithMaxKeys(100))
	for i := 0; i < 10_000; i++ {
		l.Allow(fmt.Sprint("key", i))
		if n := l.Len(); n > 100 {
			t.Fatalf("tracking %d keys, over the bound of 100", n)
		}
	}
	// The key just used is tracked and still limited.
	if ok, _ := l.Allow("key9999"); ok {
		t.Error("the most recent key was forgotten")
	}
}

func TestLimiterConcurrent(t *testing.T) {
	clock := &fakeClock{t: testNow}
	l := NewLimiter(1, 50, WithLimiterClock(clock.Now))
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				if ok, _ := l.Allow("shared"); ok {
					allowed.Add(1)
				}
				l.Allow(fmt.Sprint("own", i))
			}
		}()
	}
	wg.Wait()
	if allowed.Load() != 50 {
		t.Errorf("%d requests allowed on a frozen clock, want the burst of 50", allowed.Load())
	}
}

func BenchmarkLimiterAllow(b *testing.B) {
	l := NewLimiter(1e9, 1e9)
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprint("account-", i)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.Allow(keys[i&1023])
			i++
		}
	})
}

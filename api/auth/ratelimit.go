package auth

import (
	"math"
	"sync"
	"time"
)

// DefaultMaxKeys bounds how many keys a Limiter tracks unless told otherwise.
const DefaultMaxKeys = 100_000

// Limiter is a token-bucket rate limiter per key (an account, a sub-user, a
// client address): each key may make burst requests at once and rate requests
// per second after that. It is safe for concurrent use. Memory is bounded: a
// key whose bucket has refilled is forgotten (it would behave the same as a
// new one), and past MaxKeys keys arbitrary ones are forgotten too, which can
// only ever let a request through, never refuse one wrongly.
type Limiter struct {
	rate    float64 // tokens per second; <= 0 means no limit
	burst   float64
	maxKeys int
	now     func() time.Time

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// LimiterOption configures a Limiter.
type LimiterOption func(*Limiter)

// WithMaxKeys bounds the number of keys tracked (DefaultMaxKeys by default).
func WithMaxKeys(n int) LimiterOption {
	return func(l *Limiter) {
		if n > 0 {
			l.maxKeys = n
		}
	}
}

// WithLimiterClock sets the clock Allow reads (time.Now by default).
func WithLimiterClock(now func() time.Time) LimiterOption {
	return func(l *Limiter) { l.now = now }
}

// NewLimiter returns a limiter allowing rate requests per second per key with
// bursts of up to burst requests. A rate of zero or less allows everything, as
// restify's throttle does; a burst under 1 is taken as 1.
func NewLimiter(rate float64, burst int, opts ...LimiterOption) *Limiter {
	l := &Limiter{
		rate:    rate,
		burst:   math.Max(float64(burst), 1),
		maxKeys: DefaultMaxKeys,
		now:     time.Now,
		buckets: make(map[string]*bucket),
	}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Rate returns the limiter's rate in requests per second.
func (l *Limiter) Rate() float64 { return l.rate }

// Allow takes a token from key's bucket. When none is left it returns false
// and how long until one will be (for a Retry-After header, rounded up to
// whole seconds).
func (l *Limiter) Allow(key string) (ok bool, retryAfter time.Duration) {
	if l.rate <= 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()

	if now.Sub(l.lastSweep) >= l.fillTime() {
		l.sweep(now)
	}
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.maxKeys {
			l.sweep(now)
			l.shed()
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	} else {
		b.tokens = l.refill(b, now)
		if now.After(b.last) {
			b.last = now
		}
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration(math.Ceil((1 - b.tokens) / l.rate * float64(time.Second)))
	return false, wait
}

// Len returns the number of keys currently tracked.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

func (l *Limiter) refill(b *bucket, now time.Time) float64 {
	elapsed := now.Sub(b.last).Seconds()
	if elapsed <= 0 {
		return b.tokens
	}
	return math.Min(l.burst, b.tokens+elapsed*l.rate)
}

// fillTime is how long an empty bucket takes to fill, and how often idle
// buckets are swept (at least once a second, to keep sweeps rare).
func (l *Limiter) fillTime() time.Duration {
	return max(time.Duration(l.burst/l.rate*float64(time.Second)), time.Second)
}

// sweep forgets full buckets. Its cost, linear in the keys, is spread over at
// least fillTime of requests.
func (l *Limiter) sweep(now time.Time) {
	l.lastSweep = now
	for k, b := range l.buckets {
		if l.refill(b, now) >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// shed forgets arbitrary keys down to 90% of maxKeys when every key is busy.
func (l *Limiter) shed() {
	target := l.maxKeys * 9 / 10
	for k := range l.buckets {
		if len(l.buckets) <= target {
			return
		}
		delete(l.buckets, k)
	}
}

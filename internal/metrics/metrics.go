// Package metrics is Flotilla's Prometheus instrumentation: one Registry per
// process (control plane, agent, or dev with both), HTTP metrics labelled by
// chi route pattern (never the raw path, so the number of series stays
// bounded), placements by outcome and latency, work-queue depths, and
// gauges computed at scrape time from callbacks (instances by state, node
// capacity and usage).
//
// Other packages do not import this one: cmd wires it to them through small
// interfaces and function values (service.PlacementObserver,
// agent.Config.QueueDepth).
//
// Imports: standard library, chi and the Prometheus client libraries only.
package metrics

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry holds one process's metrics.
type Registry struct {
	reg *prometheus.Registry
	log *slog.Logger

	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	placed    *prometheus.CounterVec
	placeTime prometheus.Histogram

	mu     sync.Mutex
	queues map[string]func() int // "kind\x00name" -> depth
}

// New returns a registry with the Go runtime and process collectors and
// Flotilla's own metrics. log receives scrape-time errors (nil: discarded).
func New(log *slog.Logger) *Registry {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Registry{reg: prometheus.NewRegistry(), log: log, queues: map[string]func() int{}}
	r.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_http_requests_total",
		Help: "HTTP requests served, by API, route pattern, method and status code.",
	}, []string{"api", "route", "method", "code"})
	r.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "flotilla_http_request_duration_seconds",
		Help:    "Time to serve HTTP requests (to the end of the handler; streams last as long as they stream), by API and route pattern.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"api", "route", "method"})
	r.placed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_placements_total",
		Help: "Placement attempts (decide and commit), by outcome: placed or the error code (insufficient_capacity, invalid, ...).",
	}, []string{"outcome"})
	r.placeTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "flotilla_placement_duration_seconds",
		Help:    "Time from asking the scheduler to the committed placement (or its failure).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		r.requests, r.latency, r.placed, r.placeTime, queueCollector{r})
	return r
}

// Handler serves the registry in the Prometheus text format.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorLog: slogErrorLog{r.log}, Registry: r.reg})
}

type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) { l.log.Warn("metrics", "error", v) }

// Instrument counts and times the requests next serves under api. next must
// route with chi (its pattern labels the request); requests no route
// matched are labelled "unmatched".
func (r *Registry) Instrument(api string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := time.Now()
		// chi uses a route context it finds in the request instead of
		// making its own, so the pattern it matched is visible here.
		rctx := chi.NewRouteContext()
		req = req.WithContext(context.WithValue(req.Context(), chi.RouteCtxKey, rctx))
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			route := rctx.RoutePattern()
			if route == "" {
				route = "unmatched"
			}
			code := sw.status
			if code == 0 {
				code = http.StatusOK
			}
			method := methodLabel(req.Method)
			r.requests.WithLabelValues(api, route, method, strconv.Itoa(code)).Inc()
			r.latency.WithLabelValues(api, route, method).Observe(time.Since(start).Seconds())
		}()
		next.ServeHTTP(sw, req)
	})
}

// methodLabel keeps the method label to the standard methods.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// ObservePlacement records one placement's outcome ("placed" or an error
// code) and duration. It implements service.PlacementObserver.
func (r *Registry) ObservePlacement(outcome string, d time.Duration) {
	r.placed.WithLabelValues(outcome).Inc()
	r.placeTime.Observe(d.Seconds())
}

// Queue reports the depth of a work queue at every scrape as
// flotilla_queue_depth{queue=kind,name=name}. A later call for the same
// kind and name replaces the function.
func (r *Registry) Queue(kind, name string, depth func() int) {
	r.mu.Lock()
	r.queues[kind+"\x00"+name] = depth
	r.mu.Unlock()
}

var queueDesc = prometheus.NewDesc("flotilla_queue_depth",
	"Items waiting in a work queue: queue=agent is a node agent's reconcile queue (name: the node), queue=placer the placements in flight on this control plane.",
	[]string{"queue", "name"}, nil)

type queueCollector struct{ r *Registry }

func (c queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- queueDesc }

func (c queueCollector) Collect(ch chan<- prometheus.Metric) {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	for key, depth := range c.r.queues {
		kind, name, _ := cut(key)
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(depth()), kind, name)
	}
}

func cut(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// Sample is one value of a gauge computed at scrape time, with its label
// values in the order the gauge declared them.
type Sample struct {
	Labels []string
	Value  float64
}

// GaugeFunc registers a gauge family whose samples fn computes at every
// scrape (bounded by a 5 s timeout). An error from fn is logged and the
// family is left out of that scrape.
func (r *Registry) GaugeFunc(name, help string, labels []string, fn func(ctx context.Context) ([]Sample, error)) {
	r.reg.MustRegister(&funcCollector{desc: prometheus.NewDesc(name, help, labels, nil), fn: fn, log: r.log})
}

type funcCollector struct {
	desc *prometheus.Desc
	fn   func(ctx context.Context) ([]Sample, error)
	log  *slog.Logger
}

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *funcCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	samples, err := c.fn(ctx)
	if err != nil {
		c.log.Warn("computing a metric", "metric", c.desc.String(), "error", err)
		return
	}
	for _, s := range samples {
		m, err := prometheus.NewConstMetric(c.desc, prometheus.GaugeValue, s.Value, s.Labels...)
		if err != nil {
			c.log.Warn("computing a metric", "metric", c.desc.String(), "error", err)
			continue
		}
		ch <- m
	}
}

// statusWriter records the response status; it passes Flush, Hijack and
// the rest through Unwrap (http.ResponseController).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush passes through to the underlying writer (streaming responses).
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack passes through to the underlying writer (attach, exec, WebSocket).
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	if w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return h.Hijack()
}

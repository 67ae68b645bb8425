package metrics

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape serves r's /metrics and parses it.
func scrape(t *testing.T, r *Registry) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(rec.Body.String()))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, rec.Body)
	}
	return fams
}

// find returns the samples of family name whose labels include want.
func find(fams map[string]*dto.MetricFamily, name string, want map[string]string) []*dto.Metric {
	var out []*dto.Metric
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

func TestInstrument(t *testing.T) {
	reg := New(nil)
	r := chi.NewRouter()
	r.Get("/widgets/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	r.Route("/my", func(r chi.Router) {
		r.Get("/things/{name}", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	})
	h := reg.Instrument("test", r)
	for _, p := range []string{"/widgets/1", "/widgets/2", "/widgets/3", "/my/things/a", "/nothing/here", "/nothing/else"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", p, nil))
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("BREW", "/widgets/1", nil))
	fams := scrape(t, reg)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"OK_PatternNotPath", map[string]string{"api": "test", "route": "/widgets/{id}", "method": "GET", "code": "418"}, 3},
		{"OK_SubrouterPattern", map[string]string{"route": "/my/things/{name}", "code": "200"}, 1},
		{"OK_Unmatched", map[string]string{"route": "unmatched", "code": "404"}, 2},
		{"OK_OddMethod", map[string]string{"method": "other"}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			ms := find(fams, "flotilla_http_requests_total", c.labels)
			if len(ms) != 1 || ms[0].GetCounter().GetValue() != c.want {
				t.Fatalf("flotilla_http_requests_total%v = %v, want one series of %v", c.labels, ms, c.want)
			}
		})
	}
	for _, m := range find(fams, "flotilla_http_requests_total", nil) {
		for _, l := range m.Label {
			if l.GetName() == "route" && strings.Contains(l.GetValue(), "/widgets/1") {
				t.Errorf("a raw path became a label: %v", m)
			}
		}
	}
	if ms := find(fams, "flotilla_http_request_duration_seconds", map[string]string{"route": "/widgets/{id}", "method": "GET"}); len(ms) != 1 || ms[0].GetHistogram().GetSampleCount() != 3 {
		t.Errorf("duration histogram for /widgets/{id} = %v, want 3 samples", ms)
	}
}

func TestPlacementsQueuesAndGauges(t *testing.T) {
	reg := New(nil)
	reg.ObservePlacement("placed", 3*time.Millisecond)
	reg.ObservePlacement("placed", 5*time.Millisecond)
	reg.ObservePlacement("insufficient_capacity", time.Millisecond)
	depth := 7
	reg.Queue("agent", "node-1", func() int { return depth })
	reg.GaugeFunc("flotilla_test_things", "Things by kind.", []string{"kind"}, func(ctx context.Context) ([]Sample, error) {
		return []Sample{{Labels: []string{"a"}, Value: 2}, {Labels: []string{"b"}, Value: 5}}, nil
	})
	reg.GaugeFunc("flotilla_test_broken", "Always fails.", []string{"kind"}, func(ctx context.Context) ([]Sample, error) {
		return nil, errors.New("database down")
	})
	fams := scrape(t, reg)
	if ms := find(fams, "flotilla_placements_total", map[string]string{"outcome": "placed"}); len(ms) != 1 || ms[0].GetCounter().GetValue() != 2 {
		t.Errorf("placed = %v, want 2", ms)
	}
	if ms := find(fams, "flotilla_placements_total", map[string]string{"outcome": "insufficient_capacity"}); len(ms) != 1 || ms[0].GetCounter().GetValue() != 1 {
		t.Errorf("insufficient_capacity = %v, want 1", ms)
	}
	if f := fams["flotilla_placement_duration_seconds"]; f == nil || f.Metric[0].GetHistogram().GetSampleCount() != 3 {
		t.Errorf("placement duration = %v, want 3 samples", f)
	}
	if ms := find(fams, "flotilla_queue_depth", map[string]string{"queue": "agent", "name": "node-1"}); len(ms) != 1 || ms[0].GetGauge().GetValue() != 7 {
		t.Errorf("queue depth = %v, want 7", ms)
	}
	depth = 0
	fams = scrape(t, reg)
	if ms := find(fams, "flotilla_queue_depth", map[string]string{"name": "node-1"}); len(ms) != 1 || ms[0].GetGauge().GetValue() != 0 {
		t.Errorf("queue depth after it drained = %v, want 0 (read at scrape time)", ms)
	}
	if ms := find(fams, "flotilla_test_things", map[string]string{"kind": "b"}); len(ms) != 1 || ms[0].GetGauge().GetValue() != 5 {
		t.Errorf("gauge func = %v, want 5", ms)
	}
	if fams["flotilla_test_broken"] != nil {
		t.Errorf("a failing gauge func produced samples: %v", fams["flotilla_test_broken"])
	}
	if fams["go_goroutines"] == nil || fams["process_cpu_seconds_total"] == nil {
		t.Error("the Go runtime and process collectors are missing")
	}
}

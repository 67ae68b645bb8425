package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

// fakeCP is an in-memory control plane with the agent API's semantics.
type fakeCP struct {
	mu       sync.Mutex
	wake     chan struct{} // closed and replaced on every change
	rev      int64
	items    map[string]wire.Assignment
	itemRev  map[string]int64
	statuses map[string]wire.InstanceStatus
	reports  map[string]int
	polls    int
	hbs      []wire.Heartbeat
	regs     int
	// reportErr, when set, may fail a report.
	reportErr func(id string) error
	// hbErr, when set, fails heartbeats.
	hbErr error
}

func newFakeCP() *fakeCP {
	return &fakeCP{
		wake:     make(chan struct{}),
		items:    map[string]wire.Assignment{},
		itemRev:  map[string]int64{},
		statuses: map[string]wire.InstanceStatus{},
		reports:  map[string]int{},
	}
}

// Set stores assignments, bumping each one's generation.
func (f *fakeCP) Set(as ...wire.Assignment) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	for _, a := range as {
		if old, ok := f.items[a.ID]; ok {
			a.Generation = old.Generation + 1
		} else if a.Generation == 0 {
			a.Generation = 1
		}
		f.items[a.ID] = a
		f.itemRev[a.ID] = f.rev
	}
	close(f.wake)
	f.wake = make(chan struct{})
}

// Update changes one assignment with fn.
func (f *fakeCP) Update(id string, fn func(*wire.Assignment)) {
	f.mu.Lock()
	a := f.items[id]
	f.mu.Unlock()
	fn(&a)
	f.Set(a)
}

func (f *fakeCP) Status(id string) (wire.InstanceStatus, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.statuses[id]
	return st, ok
}

func (f *fakeCP) Reports(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reports[id]
}

func (f *fakeCP) Register(ctx context.Context, req wire.RegisterRequest) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.regs++
	return "node-" + req.Name, nil
}

func (f *fakeCP) Heartbeat(ctx context.Context, hb wire.Heartbeat) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hbErr != nil {
		return f.hbErr
	}
	f.hbs = append(f.hbs, hb)
	return nil
}

func (f *fakeCP) Assignments(ctx context.Context, since int64, wait time.Duration) (wire.Assignments, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		f.polls++
		out := wire.Assignments{Revision: f.rev, Full: since == 0, Assignments: []wire.Assignment{}}
		for id, a := range f.items {
			if since == 0 || f.itemRev[id] > since {
				out.Assignments = append(out.Assignments, a)
			}
		}
		wake := f.wake
		f.mu.Unlock()
		if since == 0 || len(out.Assignments) > 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return wire.Assignments{}, errdefs.Wrap(errdefs.Unavailable, ctx.Err(), "poll cancelled")
		case <-timer.C:
			return out, nil
		case <-wake:
		}
	}
}

func (f *fakeCP) ReportStatus(ctx context.Context, id string, st wire.InstanceStatus) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reportErr != nil {
		if err := f.reportErr(id); err != nil {
			return err
		}
	}
	if _, ok := f.items[id]; !ok {
		return errdefs.NotFoundf("instance %s is not assigned to this node", id)
	}
	f.statuses[id] = st
	f.reports[id]++
	return nil
}

// serveHTTP serves the agent API routes over the fake, checking bearer
// tokens: joinToken for register, the issued credential for the rest.
type fakeServer struct {
	cp        *fakeCP
	joinToken string

	mu    sync.Mutex
	creds map[string]string // credential -> node id
	n     int
}

func (s *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, code, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"code": code, "message": msg})
	}
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 4 || parts[0] != "agent" || parts[1] != "v1" {
		fail(404, "not_found", "no route")
		return
	}
	if parts[2] == "nodes" && parts[3] == "register" {
		if tok != s.joinToken {
			fail(401, "unauthorized", "bad join token")
			return
		}
		var req wire.RegisterRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			fail(400, "invalid", err.Error())
			return
		}
		id, _ := s.cp.Register(r.Context(), req)
		s.mu.Lock()
		s.n++
		cred := fmt.Sprintf("cred-%d", s.n)
		for c, n := range s.creds { // rotation
			if n == id {
				delete(s.creds, c)
			}
		}
		s.creds[cred] = id
		s.mu.Unlock()
		json.NewEncoder(w).Encode(wire.RegisterResponse{NodeID: id, Credential: cred})
		return
	}
	s.mu.Lock()
	node, ok := s.creds[tok]
	s.mu.Unlock()
	if !ok {
		fail(401, "unauthorized", "unknown credential")
		return
	}
	switch {
	case parts[2] == "nodes" && len(parts) == 5:
		if parts[3] != node {
			fail(403, "forbidden", "not your node")
			return
		}
		switch parts[4] {
		case "heartbeat":
			var hb wire.Heartbeat
			json.NewDecoder(r.Body).Decode(&hb)
			s.cp.Heartbeat(r.Context(), hb)
			w.WriteHeader(204)
		case "assignments":
			since, _ := strconv.ParseInt(r.URL.Query().Get("since"), 10, 64)
			wait, _ := strconv.Atoi(r.URL.Query().Get("wait"))
			as, err := s.cp.Assignments(r.Context(), since, time.Duration(wait)*time.Second)
			if err != nil {
				fail(503, "unavailable", err.Error())
				return
			}
			json.NewEncoder(w).Encode(as)
		default:
			fail(404, "not_found", "no route")
		}
	case parts[2] == "instances" && len(parts) == 5 && parts[4] == "status" && r.Method == http.MethodPut:
		var st wire.InstanceStatus
		if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
			fail(400, "invalid", err.Error())
			return
		}
		if err := s.cp.ReportStatus(r.Context(), parts[3], st); err != nil {
			fail(404, "not_found", err.Error())
			return
		}
		w.WriteHeader(204)
	default:
		fail(404, "not_found", "no route")
	}
}

func newFakeServer(cp *fakeCP, joinToken string) *fakeServer {
	return &fakeServer{cp: cp, joinToken: joinToken, creds: map[string]string{}}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitState waits until id's reported state is state at generation >= gen.
func waitState(tb testing.TB, cp *fakeCP, id, state string, gen int64) wire.InstanceStatus {
	tb.Helper()
	var st wire.InstanceStatus
	waitFor(tb, 5*time.Second, fmt.Sprintf("%s to report %s at generation %d", id, state, gen), func() bool {
		var ok bool
		st, ok = cp.Status(id)
		return ok && st.State == state && st.ObservedGeneration >= gen
	})
	return st
}

func running(id string, env ...string) wire.Assignment {
	return wire.Assignment{ID: id, DesiredState: wire.DesiredRunning, Spec: driver.Spec{ID: id, Brand: driver.BrandContainer, MemoryMiB: 64, Env: env}}
}

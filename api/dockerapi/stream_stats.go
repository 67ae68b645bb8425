package dockerapi

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/go-chi/chi/v5"

	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
	"flotilla/store"
)

func (s *Server) statsRoutes(r chi.Router) {
	r.Get("/containers/{id}/top", s.handle(s.topContainer))
	r.Get("/containers/{id}/stats", s.handle(s.containerStats))
}

func (s *Server) topContainer(w http.ResponseWriter, r *http.Request) error {
	in, err := s.ResolveContainer(r, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	if !stateOf(in).Running {
		return errdefs.Conflictf("Container %s is not running", ContainerID(in.ID))
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return err
	}
	top, err := nodes.Top(r.Context(), node, in.ID, r.URL.Query().Get("ps_args"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, container.TopResponse{Titles: top.Titles, Processes: top.Processes})
}

// statsOf converts an agent sample (and the one before, for the CPU delta
// the CLI computes) to dockerd's shape.
func statsOf(in store.Instance, cur, prev wire.StatsSample) container.StatsResponse {
	cpu := func(s wire.StatsSample) container.CPUStats {
		return container.CPUStats{CPUUsage: container.CPUUsage{TotalUsage: s.CPUUsageNs},
			SystemUsage: s.SystemCPUNs, OnlineCPUs: uint32(s.OnlineCPUs)}
	}
	out := container.StatsResponse{
		Name: "/" + in.Name, ID: ContainerID(in.ID), Read: cur.Time, PreRead: prev.Time,
		CPUStats: cpu(cur), PreCPUStats: cpu(prev),
		MemoryStats: container.MemoryStats{Usage: cur.MemoryBytes, Limit: cur.MemoryLimit, Stats: map[string]uint64{}},
		PidsStats:   container.PidsStats{Current: cur.PIDs},
		Networks:    map[string]container.NetworkStats{},
	}
	if prev.Time.IsZero() {
		out.PreRead = time.Time{}
	}
	return out
}

// containerStats answers GET /containers/{id}/stats: a stream of samples
// a second apart, or (stream=0) one sample whose previous sample is taken a
// second earlier, as dockerd does, unless one-shot=1 asks for no wait. A
// container that is not running has zero samples.
func (s *Server) containerStats(w http.ResponseWriter, r *http.Request) error {
	in, err := s.ResolveContainer(r, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	stream := q.Get("stream") == "" || boolParam(q.Get("stream"))
	oneShot := boolParam(q.Get("one-shot"))
	w.Header().Set("Content-Type", "application/json")
	if !stateOf(in).Running {
		return writeJSON(w, http.StatusOK, container.StatsResponse{Name: "/" + in.Name, ID: ContainerID(in.ID)})
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return err
	}
	samples, err := nodes.Stats(r.Context(), node, in.ID, stream || !oneShot, time.Second)
	if err != nil {
		return err
	}
	defer samples.Close()
	first, err := samples.Next()
	if err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "read stats from the node")
	}
	if !stream {
		prev := wire.StatsSample{}
		if !oneShot {
			if cur, err := samples.Next(); err == nil {
				prev, first = first, cur
			}
		}
		return writeJSON(w, http.StatusOK, statsOf(in, first, prev))
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	prev := wire.StatsSample{}
	cur := first
	for {
		if enc.Encode(statsOf(in, cur, prev)) != nil || rc.Flush() != nil {
			return nil
		}
		next, err := samples.Next()
		if err != nil {
			return nil
		}
		prev, cur = cur, next
	}
}

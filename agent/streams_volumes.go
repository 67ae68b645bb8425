package agent

// The stream route that reclaims a deleted volume's storage on its node.
//
// The control plane deletes a volume once no live instance mounts it, but
// an instance it has just deleted may still be on its way out of this node
// (`docker rm -v`, compose down -v): while the driver refuses because a
// container still mounts the volume, the request waits for a while.

import (
	"context"
	"net/http"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

// DefaultVolumeRemoveWait is how long a volume removal waits for the
// containers that still mount the volume to be deleted.
const DefaultVolumeRemoveWait = 15 * time.Second

func (s *StreamServer) volumeRoutes(m *http.ServeMux) {
	m.HandleFunc("DELETE "+wire.StreamPathPrefix+"/volumes/{id}", s.handle(s.removeVolume))
}

func (s *StreamServer) removeVolume(w http.ResponseWriter, r *http.Request) error {
	rm, ok := s.drv.(driver.VolumeRemover)
	if !ok {
		return errdefs.New(errdefs.NotImplemented, "the %s driver keeps no volumes on the node", s.drv.Name())
	}
	id := r.PathValue("id")
	if !driver.ValidVolumeID(id) {
		return errdefs.InvalidArgument("invalid volume id %q", id)
	}
	wait := s.VolumeRemoveWait
	if wait == 0 {
		wait = DefaultVolumeRemoveWait
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		err := rm.RemoveVolume(ctx, id)
		if err == nil {
			s.log.Info("volume removed", "volume", id)
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		if !errdefs.Is(err, errdefs.Conflict) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

package nodeclient_test

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"flotilla/agent"
	"flotilla/agent/driver/sim"
	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
)

// volumeDriver is a sim driver that keeps volume storage: RemoveVolume
// answers Conflict while busy is above zero, counting it down.
type volumeDriver struct {
	*sim.Driver
	mu      sync.Mutex
	busy    int
	removed []string
}

func (d *volumeDriver) RemoveVolume(ctx context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy > 0 {
		d.busy--
		return errdefs.Conflictf("volume %s is mounted by container c on this node", id)
	}
	d.removed = append(d.removed, id)
	return nil
}

func (d *volumeDriver) ReleaseVolumes(ctx context.Context) error { return nil }

// TestRemoveVolume: the node removes a deleted volume's storage, waiting a
// while for the containers that still mount it; a driver without volumes
// answers NotImplemented.
func TestRemoveVolume(t *testing.T) {
	ctx := context.Background()
	s, err := sim.New(sim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	d := &volumeDriver{Driver: s}
	ss := agent.NewStreamServer(d, token, nil)
	ss.VolumeRemoveWait = time.Second
	srv := httptest.NewServer(ss)
	t.Cleanup(srv.Close)
	c := nodeclient.New()
	t.Cleanup(c.Close)
	n := nodeclient.Node{Address: srv.Listener.Addr().String(), Token: token}
	const vol = "0b5e8d36-5a8f-4f8b-9a51-2c1a3ee0c0de"

	t.Run("OK", func(t *testing.T) {
		d.busy = 3 // a container on its way out
		if err := c.RemoveVolume(ctx, n, vol); err != nil {
			t.Fatalf("RemoveVolume: %v", err)
		}
		if len(d.removed) != 1 || d.removed[0] != vol || d.busy != 0 {
			t.Errorf("removed %v, busy %d", d.removed, d.busy)
		}
	})
	t.Run("ErrStillMounted", func(t *testing.T) {
		d.busy = 1000
		t0 := time.Now()
		err := c.RemoveVolume(ctx, n, vol)
		if errdefs.CodeOf(err) != errdefs.Conflict {
			t.Fatalf("RemoveVolume of a mounted volume: %v, want Conflict", err)
		}
		if el := time.Since(t0); el < time.Second || el > 5*time.Second {
			t.Errorf("answered after %s, want after the 1 s wait", el)
		}
	})
	t.Run("ErrBadID", func(t *testing.T) {
		if err := c.RemoveVolume(ctx, n, "../../x"); errdefs.CodeOf(err) != errdefs.Invalid && errdefs.CodeOf(err) != errdefs.NotFound {
			t.Errorf("bad id: %v", err)
		}
	})
	t.Run("ErrNoVolumes", func(t *testing.T) {
		_, plain, c := setup(t)
		if err := c.RemoveVolume(ctx, plain, vol); errdefs.CodeOf(err) != errdefs.NotImplemented {
			t.Errorf("sim driver: %v, want NotImplemented", err)
		}
	})
}

package service

import (
	"context"
	"time"

	"flotilla/api/errdefs"
	"flotilla/scheduler"
	"flotilla/store"
)

// PlacementObserver is told the outcome of every placement: "placed", or
// the error's code (insufficient_capacity, invalid, ...), and how long the
// decision and its commit took. cmd wires a metrics registry to it.
type PlacementObserver interface {
	ObservePlacement(outcome string, d time.Duration)
}

// SetObserver makes o see every later placement (nil: none).
func (p *Placer) SetObserver(o PlacementObserver) {
	if o == nil {
		p.observer.Store(nil)
		return
	}
	p.observer.Store(&o)
}

// Placing is the number of placements in flight on this replica: deciding,
// waiting for a group commit, or committing.
func (p *Placer) Placing() int { return int(p.placing.Load()) }

// Place decides and commits: it asks the scheduler for ranked candidates,
// then lets the store claim the first that still fits. A lost race refreshes
// the snapshot and re-plans, a few times. Errors: InsufficientCapacity (with
// the scheduler's reasons) and the store's.
func (p *Placer) Place(ctx context.Context, req scheduler.Request, in store.NewInstance) (store.Instance, bool, error) {
	start := time.Now()
	p.placing.Add(1)
	inst, replay, err := p.place(ctx, req, in)
	p.placing.Add(-1)
	if o := p.observer.Load(); o != nil {
		outcome := "placed"
		if err != nil {
			outcome = string(errdefs.CodeOf(err))
		}
		(*o).ObservePlacement(outcome, time.Since(start))
	}
	return inst, replay, err
}

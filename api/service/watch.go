package service

import (
	"context"
	"sync"
)

// Waiters lets requests wait for a keyed event (an instance changed, a node
// has new assignments) that a LISTEN connection announces.
type Waiters struct {
	mu      sync.Mutex
	waiters map[string][]chan struct{}
}

// Wait returns a channel closed at the next Wake of key (or WakeAll), and a
// cancel func to call when no longer waiting. Register before reading the
// state you wait on, so that a change in between still wakes you.
func (w *Waiters) Wait(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	w.mu.Lock()
	if w.waiters == nil {
		w.waiters = map[string][]chan struct{}{}
	}
	w.waiters[key] = append(w.waiters[key], ch)
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		list := w.waiters[key]
		for i, c := range list {
			if c == ch {
				w.waiters[key] = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(w.waiters[key]) == 0 {
			delete(w.waiters, key)
		}
	}
}

// Wake wakes everyone waiting on key.
func (w *Waiters) Wake(key string) {
	w.mu.Lock()
	list := w.waiters[key]
	delete(w.waiters, key)
	w.mu.Unlock()
	for _, ch := range list {
		close(ch)
	}
}

// WakeAll wakes every waiter (after a reconnect, when events may have been missed).
func (w *Waiters) WakeAll() {
	w.mu.Lock()
	all := w.waiters
	w.waiters = nil
	w.mu.Unlock()
	for _, list := range all {
		for _, ch := range list {
			close(ch)
		}
	}
}

// InstanceChanged returns a channel closed when the instance's node next
// reports on it (state or observed generation) or it is deleted, on any
// replica; cancel stops waiting. RunWatcher must be running.
func (s *Service) InstanceChanged(id string) (<-chan struct{}, func()) { return s.watch.Wait(id) }

// RunWatcher listens for instance changes until ctx ends.
func (s *Service) RunWatcher(ctx context.Context) {
	s.Store.Listen(ctx, "flotilla_object", s.watch.WakeAll, s.watch.Wake)
}

package dockerapi

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
)

func (s *Server) eventRoutes(r chi.Router) {
	r.Get("/events", s.handle(s.events))
}

// eventPoll is how often a live event stream looks at the change feed.
const eventPoll = 200 * time.Millisecond

// parseEventTime reads since/until: Unix seconds with optional fraction.
func parseEventTime(v string) (time.Time, error) {
	sec, frac, _ := strings.Cut(v, ".")
	s, err := strconv.ParseInt(sec, 10, 64)
	if err != nil || s < 0 || s > math.MaxInt32*4 {
		return time.Time{}, errdefs.InvalidArgument("invalid timestamp %q: use Unix seconds", v)
	}
	var ns int64
	if frac != "" {
		if len(frac) > 9 {
			frac = frac[:9]
		}
		frac += strings.Repeat("0", 9-len(frac))
		if ns, err = strconv.ParseInt(frac, 10, 64); err != nil {
			return time.Time{}, errdefs.InvalidArgument("invalid timestamp %q: use Unix seconds", v)
		}
	}
	return time.Unix(s, ns), nil
}

// events streams the caller's container events from the change feed, the
// same feed CloudAPI's changefeed reads: history since..until, then (without
// until) live until the client goes away.
func (s *Server) events(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ctx := r.Context()
	q := r.URL.Query()
	args, err := parseFilters(q.Get("filters"), "type", "container", "event", "label", "image", "network", "scope", "daemon")
	if err != nil {
		return err
	}
	now := s.now()
	var since, until time.Time
	hasSince, hasUntil := q.Get("since") != "", q.Get("until") != ""
	if hasSince {
		if since, err = parseEventTime(q.Get("since")); err != nil {
			return err
		}
	}
	if hasUntil {
		if until, err = parseEventTime(q.Get("until")); err != nil {
			return err
		}
	}
	seq, err := s.store.LastChangeSeq(ctx)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	flush := func() {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	flush()
	enc := json.NewEncoder(w)
	ev := &eventRenderer{s: s, c: c, args: args, cache: map[string]store.Instance{}}
	if hasSince {
		end := now
		if hasUntil && until.Before(end) {
			end = until
		}
		changes, err := s.store.ChangesBetween(ctx, c.AccountID, since, end, 10000)
		if err != nil {
			return nil
		}
		for _, ch := range changes {
			if ch.Seq > seq {
				break
			}
			if m, ok := ev.render(ctx, ch); ok {
				enc.Encode(m)
			}
		}
		flush()
	}
	if hasUntil && !until.After(now) {
		return nil
	}
	var deadline <-chan time.Time
	if hasUntil {
		t := time.NewTimer(until.Sub(now))
		defer t.Stop()
		deadline = t.C
	}
	tick := time.NewTicker(eventPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-deadline:
			return nil
		case <-tick.C:
		}
		changes, err := s.store.ChangesSince(ctx, seq, c.AccountID, "", 500)
		if err != nil {
			return nil
		}
		for _, ch := range changes {
			seq = ch.Seq
			if m, ok := ev.render(ctx, ch); ok {
				if err := enc.Encode(m); err != nil {
					return nil
				}
			}
		}
		if len(changes) > 0 {
			flush()
		}
	}
}

// recordEvent records a container event that changes no row (kill, attach,
// stop) in the owner's change feed, for the event stream. A failure is
// logged, not returned: the action it describes has happened.
func (s *Server) recordEvent(ctx context.Context, c service.Caller, in store.Instance, action string, attrs map[string]string) {
	a := map[string]any{}
	for k, v := range attrs {
		a[k] = v
	}
	detail := map[string]any{"type": string(events.ContainerEventType), "action": action, "attributes": a}
	if err := s.store.RecordEvent(context.WithoutCancel(ctx), c.AccountID, in.ID, action, detail); err != nil {
		s.log.Warn("recording an event failed", "instance", in.ID, "action", action, "err", err)
	}
}

// recordObjectEvent records an image, network or volume event (pull, tag,
// delete, connect ...) of the caller's object objectID, shown with Docker id
// dockerID.
func (s *Server) recordObjectEvent(ctx context.Context, c service.Caller, objectID string, typ events.Type, action events.Action, dockerID string, attrs map[string]string) {
	a := map[string]any{}
	for k, v := range attrs {
		a[k] = v
	}
	detail := map[string]any{"type": string(typ), "action": string(action), "id": dockerID, "attributes": a}
	if err := s.store.RecordEvent(context.WithoutCancel(ctx), c.AccountID, objectID, string(action), detail); err != nil {
		s.log.Warn("recording an event failed", "object", objectID, "action", action, "err", err)
	}
}

type eventRenderer struct {
	s     *Server
	c     service.Caller
	args  filters.Args
	cache map[string]store.Instance
}

// actionOf maps a change to a Docker container action ("" = none): events
// report what happened on the node, not what was asked for.
func actionOf(ch store.Change) events.Action {
	switch ch.Action {
	case "create":
		return events.ActionCreate
	case "delete":
		return events.ActionDestroy
	case "rename":
		return events.ActionRename
	case "state":
		switch ch.State {
		case "running":
			return events.ActionStart
		case "stopped":
			// A created container is "stopped" too: only a run that
			// ended has an exit code.
			if _, ok := ch.Detail["exit_code"]; ok {
				return events.ActionDie
			}
		case "failed":
			return events.ActionDie
		}
	}
	return ""
}

func (e *eventRenderer) render(ctx context.Context, ch store.Change) (events.Message, bool) {
	switch ch.Kind {
	case "instance":
		action := actionOf(ch)
		if action == "" {
			return events.Message{}, false
		}
		return e.container(ctx, ch, action, nil)
	case "event":
		typ, _ := ch.Detail["type"].(string)
		action, _ := ch.Detail["action"].(string)
		attrs := map[string]string{}
		if m, ok := ch.Detail["attributes"].(map[string]any); ok {
			for k, v := range m {
				if s, ok := v.(string); ok {
					attrs[k] = s
				}
			}
		}
		if action == "" {
			return events.Message{}, false
		}
		if typ == string(events.ContainerEventType) {
			return e.container(ctx, ch, events.Action(action), attrs)
		}
		id, _ := ch.Detail["id"].(string)
		return e.object(ch, events.Type(typ), events.Action(action), id, attrs)
	}
	return events.Message{}, false
}

// object renders an image, network or volume event.
func (e *eventRenderer) object(ch store.Change, typ events.Type, action events.Action, id string, attrs map[string]string) (events.Message, bool) {
	a := e.args
	if !matchAny(a, "type", func(v string) bool { return v == string(typ) }) ||
		!matchAny(a, "scope", func(v string) bool { return v == "local" }) ||
		!matchAny(a, "event", func(v string) bool { return v == string(action) }) ||
		a.Contains("container") ||
		!matchAny(a, "image", func(v string) bool { return typ == events.ImageEventType && (v == id || v == attrs["name"]) }) ||
		!matchAny(a, "network", func(v string) bool {
			return typ == events.NetworkEventType && (strings.HasPrefix(id, v) || v == attrs["name"])
		}) ||
		!matchLabels(a, "label", attrs) || a.Contains("daemon") {
		return events.Message{}, false
	}
	return events.Message{
		Status: string(action), ID: id, Type: typ, Action: action,
		Actor: events.Actor{ID: id, Attributes: attrs}, Scope: "local",
		Time: ch.At.Unix(), TimeNano: ch.At.UnixNano(),
	}, true
}

// eventName is an action without its detail: "health_status" for
// "health_status: healthy", which --filter event=health_status matches.
func eventName(action events.Action) string {
	name, _, _ := strings.Cut(string(action), ":")
	return name
}

// container renders a container event; extra attributes (a signal, a
// network) are added to the container's own.
func (e *eventRenderer) container(ctx context.Context, ch store.Change, action events.Action, extra map[string]string) (events.Message, bool) {
	in, ok := e.cache[ch.ObjectID]
	if !ok {
		var err error
		in, err = e.s.store.GetInstance(ctx, e.c.AccountID, ch.ObjectID)
		if err != nil {
			return events.Message{}, false
		}
		e.cache[ch.ObjectID] = in
	}
	if !in.Docker {
		return events.Message{}, false
	}
	p := service.DecodeProcessSpec(in.Spec)
	x := extraOf(p)
	id := ContainerID(in.ID)
	img := x.ImageRef
	if img == "" {
		img = e.s.newImageLookup().get(ctx, in.ImageID).Ref
	}
	name := in.Name
	if n, ok := ch.Detail["name"].(string); ok && n != "" {
		name = n
	}
	attrs := map[string]string{"name": name, "image": img}
	for k, v := range labelsOf(in, p) {
		attrs[k] = v
	}
	for k, v := range extra {
		attrs[k] = v
	}
	if action == events.ActionDie {
		code := 0
		if v, ok := ch.Detail["exit_code"].(float64); ok {
			code = int(v)
		}
		attrs["exitCode"] = strconv.Itoa(code)
	}
	if action == events.ActionRename {
		attrs["oldName"] = "/" + in.Name
		attrs["name"] = name
	}
	a := e.args
	if !matchAny(a, "type", func(v string) bool { return v == string(events.ContainerEventType) }) ||
		!matchAny(a, "scope", func(v string) bool { return v == "local" }) ||
		!matchAny(a, "event", func(v string) bool { return v == string(action) || v == eventName(action) }) ||
		!matchAny(a, "container", func(v string) bool { return v == name || v == in.Name || strings.HasPrefix(id, v) }) ||
		!matchAny(a, "image", func(v string) bool { return v == img || strings.HasPrefix(img, v+":") }) ||
		!matchLabels(a, "label", attrs) || a.Contains("network") || a.Contains("daemon") {
		return events.Message{}, false
	}
	return events.Message{
		Status: string(action), ID: id, From: img, Type: events.ContainerEventType, Action: action,
		Actor: events.Actor{ID: id, Attributes: attrs}, Scope: "local",
		Time: ch.At.Unix(), TimeNano: ch.At.UnixNano(),
	}, true
}

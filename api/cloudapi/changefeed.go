package cloudapi

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/store"
)

// changefeedSub is what a client sends after the upgrade.
type changefeedSub struct {
	Resource     string   `json:"resource"`
	SubResources []string `json:"subResources"`
	VMs          []string `json:"vms"`
}

// changefeed streams the account's instance changes over a WebSocket, as
// CloudAPI's changefeed does, from the same feed the Docker events use.
func (s *Server) changefeed(w http.ResponseWriter, r *http.Request) error {
	if !httpx.IsWebSocket(r) {
		return errdefs.InvalidArgument("the changefeed needs a WebSocket upgrade")
	}
	c := caller(r)
	start, err := s.store.LastChangeSeq(r.Context())
	if err != nil {
		return err
	}
	ws, err := httpx.UpgradeWebSocket(w, r)
	if err != nil {
		return err
	}
	defer ws.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	subs := make(chan changefeedSub, 1)
	go func() {
		defer cancel()
		for {
			msg, err := ws.ReadMessage()
			if err != nil {
				return
			}
			var sub changefeedSub
			if json.Unmarshal(msg, &sub) == nil {
				select {
				case subs <- sub:
				default:
				}
			}
		}
	}()
	var sub changefeedSub
	select {
	case sub = <-subs:
	case <-ctx.Done():
		return nil
	case <-time.After(30 * time.Second):
		return nil
	}
	want := map[string]bool{}
	for _, id := range sub.VMs {
		want[id] = true
	}
	cur := store.NewChangeCursor(start, c.AccountID, "instance")
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		changes, err := cur.Next(ctx, s.store)
		if err != nil {
			return nil
		}
		for _, ch := range changes {
			if len(want) > 0 && !want[ch.ObjectID] {
				continue
			}
			in, err := s.store.GetInstance(ctx, c.AccountID, ch.ObjectID)
			if err != nil {
				continue
			}
			ev := map[string]any{
				"changeKind":        map[string]any{"resource": "vm", "subResources": subResourcesOf(ch.Action)},
				"changedResourceId": ch.ObjectID,
				"published":         ch.At.UnixMilli(),
				"resourceState":     in.State,
				"resourceObject":    machineJSON(in, false),
			}
			b, _ := json.Marshal(ev)
			if err := ws.WriteText(b); err != nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func subResourcesOf(action string) []string {
	switch action {
	case "rename":
		return []string{"alias"}
	case "set_tags", "replace_tags", "remove_tags":
		return []string{"tags"}
	case "set_metadata", "replace_metadata", "remove_metadata":
		return []string{"customer_metadata"}
	case "delete":
		return []string{"destroyed", "state"}
	case "create":
		return []string{"state", "nics", "server_uuid"}
	}
	return []string{"state"}
}

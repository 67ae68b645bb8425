package agentapi_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"flotilla/api/agentapi"
	"flotilla/api/agentapi/wire"
	"flotilla/store"
	"flotilla/store/storetest"
)

func TestNodeFirewallPoll(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := storetest.New(t)
	alice, err := st.CreateAccount(ctx, store.Account{Login: "alice", Email: "a@x"})
	must(t, err)
	bob, err := st.CreateAccount(ctx, store.Account{Login: "bob", Email: "b@x"})
	must(t, err)
	im, err := st.CreateImage(ctx, store.Image{Name: "base", Version: "1", OS: "linux", Type: "zone-dataset", Public: true})
	must(t, err)
	nw, err := st.CreateNetwork(ctx, store.Network{Name: "net", Subnet: "10.54.0.0/24"})
	must(t, err)
	cred := agentapi.NewToken()
	node, err := st.RegisterNode(ctx, store.NodeRegistration{Name: "n1", Brands: []string{"joyent-minimal"}, MemoryMiB: 4096,
		DiskMiB: 1 << 20, VCPUsMilli: 8000}, agentapi.HashToken(cred))
	must(t, err)
	s := agentapi.New(st, slog.New(slog.DiscardHandler))
	go s.Listen(ctx)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	e := registryEnv{url: srv.URL, host: strings.TrimPrefix(srv.URL, "http://"), cred: cred}
	create := func(owner, name string, fw bool, tags map[string]any) store.Instance {
		t.Helper()
		in, _, err := st.CreateInstance(ctx, store.NewInstance{Instance: store.Instance{ID: uuid.NewString(), OwnerID: owner,
			Name: name, Brand: "joyent-minimal", ImageID: im.ID, MemoryMiB: 64, DiskMiB: 64, DesiredState: "running",
			State: "provisioning", FirewallEnabled: fw, Tags: tags}, Networks: []string{nw.ID}, Candidates: []string{node.ID}})
		must(t, err)
		return in
	}
	rule := func(owner, text string) {
		t.Helper()
		_, err := st.CreateFirewallRule(ctx, store.FirewallRule{ID: uuid.NewString(), OwnerID: owner, Rule: text, Enabled: true})
		must(t, err)
	}
	poll := func(since string, wait int) wire.Firewall {
		t.Helper()
		q := url.Values{"since": {since}, "wait": {strconv.Itoa(wait)}}
		resp, b := e.do(t, "GET", "/agent/v1/nodes/"+node.ID+"/firewall?"+q.Encode(), cred)
		if resp.StatusCode != 200 {
			t.Fatalf("firewall: %d %s", resp.StatusCode, b)
		}
		var out wire.Firewall
		must(t, json.Unmarshal(b, &out))
		return out
	}
	find := func(f wire.Firewall, id string) wire.FirewallInstance {
		t.Helper()
		for _, x := range f.Instances {
			if x.ID == id {
				return x
			}
		}
		t.Fatalf("instance %s is not in the node's firewall %+v", id, f)
		return wire.FirewallInstance{}
	}

	web := create(alice.ID, "web", false, map[string]any{"role": "web"})
	db := create(alice.ID, "db", true, nil)
	create(bob.ID, "bobweb", false, map[string]any{"role": "web"})
	rule(bob.ID, `FROM any TO all vms ALLOW tcp PORT 22`)

	first := poll("", 0)
	if len(first.Instances) != 3 {
		t.Fatalf("firewall has %d instances, want the node's 3", len(first.Instances))
	}
	w := find(first, web.ID)
	if w.Enabled || len(w.NICs) != 1 || w.NICs[0].IP != web.NICs[0].IP || w.NICs[0].MAC != web.NICs[0].MAC || !w.NICs[0].Primary {
		t.Errorf("web's part %+v: want its NIC and firewall off", w)
	}
	if d := find(first, db.ID); !d.Enabled || len(d.Entries) != 0 {
		t.Errorf("db's part %+v: want enabled, and no entries from bob's rule", d)
	}

	// A rule change wakes the poll; the tag rule admits alice's web, not bob's.
	go func() {
		time.Sleep(300 * time.Millisecond)
		rule(alice.ID, `FROM tag "role" = "web" TO all vms ALLOW tcp PORT 80`)
	}()
	start := time.Now()
	next := poll(first.Revision, 10)
	if next.Revision == first.Revision || time.Since(start) > 5*time.Second {
		t.Fatalf("a rule change did not produce a new revision promptly (%s)", time.Since(start))
	}
	d := find(next, db.ID)
	if len(d.Entries) != 1 || !d.Entries[0].Inbound || d.Entries[0].AnyPeer || len(d.Entries[0].Peers) != 1 ||
		d.Entries[0].Peers[0].Addr().String() != web.NICs[0].IP || d.Entries[0].Ports[0].Lo != 80 {
		t.Errorf("db's entries %+v: want tcp 80 from web's address only", d.Entries)
	}
	if w := find(next, web.ID); len(w.Entries) != 0 {
		t.Errorf("web's firewall is off; entries %+v", w.Entries)
	}
}

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

func TestNodeNamesPoll(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := storetest.New(t)
	acct, err := st.CreateAccount(ctx, store.Account{Login: "alice", Email: "a@x"})
	must(t, err)
	im, err := st.CreateImage(ctx, store.Image{Name: "base", Version: "1", OS: "linux", Type: "zone-dataset", Public: true})
	must(t, err)
	nw, err := st.CreateNetwork(ctx, store.Network{Name: "net", Subnet: "10.53.0.0/24"})
	must(t, err)
	cred := agentapi.NewToken()
	node, err := st.RegisterNode(ctx, store.NodeRegistration{Name: "n1", Brands: []string{"joyent-minimal"}, MemoryMiB: 4096,
		DiskMiB: 1 << 20, VCPUsMilli: 8000}, agentapi.HashToken(cred))
	must(t, err)
	s := agentapi.New(st, slog.New(slog.DiscardHandler))
	s.CNS = wire.CNS{Suffix: "cns.test", Address: "0.0.0.0:5354"}
	go s.Listen(ctx)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	e := registryEnv{url: srv.URL, host: strings.TrimPrefix(srv.URL, "http://"), cred: cred}
	create := func(name string) {
		t.Helper()
		_, _, err := st.CreateInstance(ctx, store.NewInstance{Instance: store.Instance{ID: uuid.NewString(), OwnerID: acct.ID,
			Name: name, Brand: "joyent-minimal", ImageID: im.ID, MemoryMiB: 64, DiskMiB: 64, DesiredState: "running", State: "provisioning"},
			Networks: []string{nw.ID}, Candidates: []string{node.ID}})
		must(t, err)
	}
	poll := func(since string, wait int) wire.Names {
		t.Helper()
		q := url.Values{"since": {since}, "wait": {strconv.Itoa(wait)}}
		resp, b := e.do(t, "GET", "/agent/v1/nodes/"+node.ID+"/names?"+q.Encode(), cred)
		if resp.StatusCode != 200 {
			t.Fatalf("names: %d %s", resp.StatusCode, b)
		}
		var out wire.Names
		must(t, json.Unmarshal(b, &out))
		return out
	}

	create("web1")
	first := poll("", 0)
	if len(first.Records) != 1 || first.Records[0].Names[0] != "web1" || len(first.Networks) != 1 || first.Networks[0].Gateway != "10.53.0.1" {
		t.Fatalf("first table %+v", first)
	}
	if first.CNS == nil || first.CNS.Address != "127.0.0.1:5354" || first.CNS.Suffix != "cns.test" {
		t.Fatalf("CNS %+v, want the unspecified host replaced by the one the agent called", first.CNS)
	}
	// An unchanged table waits; a create anywhere wakes the poll.
	start := time.Now()
	if again := poll(first.Revision, 1); again.Revision != first.Revision || time.Since(start) < 900*time.Millisecond {
		t.Fatalf("an unchanged table answered after %s with revision %s", time.Since(start), again.Revision)
	}
	go func() { time.Sleep(300 * time.Millisecond); create("web2") }()
	start = time.Now()
	next := poll(first.Revision, 10)
	if next.Revision == first.Revision || len(next.Records) != 2 {
		t.Fatalf("after a create: %+v", next)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the create woke the poll after %s", took)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

package store_test

import (
	"context"
	"testing"

	"flotilla/api/errdefs"
	"flotilla/store"
	"flotilla/store/storetest"
)

func TestNodeStream(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	n, err := st.RegisterNode(ctx, store.NodeRegistration{Name: "n1", Address: "127.0.0.1:7070", MemoryMiB: 1024, DiskMiB: 1024, VCPUsMilli: 1000}, []byte("h"))
	if err != nil {
		t.Fatal(err)
	}
	if ns, err := st.NodeStream(ctx, n.ID); err != nil || ns.Token != "" || ns.Address != "127.0.0.1:7070" {
		t.Fatalf("before: %+v %v", ns, err)
	}
	if err := st.SetNodeStreamToken(ctx, n.ID, "tok"); err != nil {
		t.Fatal(err)
	}
	if ns, err := st.NodeStream(ctx, n.ID); err != nil || ns.Token != "tok" || ns.NodeID != n.ID {
		t.Fatalf("after: %+v %v", ns, err)
	}
	if err := st.SetNodeStreamToken(ctx, "nope", "x"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("unknown node: %v", err)
	}
	if _, err := st.NodeStream(ctx, "nope"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("unknown node: %v", err)
	}
}

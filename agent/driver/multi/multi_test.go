package multi_test

import (
	"context"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/driver/multi"
	"flotilla/agent/driver/sim"
	"flotilla/api/errdefs"
)

func TestDispatchByBrand(t *testing.T) {
	ctx := context.Background()
	ctr, _ := sim.New(sim.Config{Brands: []string{driver.BrandContainer}})
	vm, _ := sim.New(sim.Config{Brands: []string{driver.BrandBhyve}})
	d := multi.New(ctr, vm)

	if got := d.Brands(); len(got) != 2 {
		t.Fatalf("brands %v, want the union of both parts", got)
	}
	for _, spec := range []driver.Spec{{ID: "c1", Brand: driver.BrandContainer}, {ID: "v1", Brand: driver.BrandBhyve}} {
		if err := d.Create(ctx, spec); err != nil {
			t.Fatalf("create %s: %v", spec.ID, err)
		}
		if err := d.Start(ctx, spec.ID); err != nil {
			t.Fatalf("start %s: %v", spec.ID, err)
		}
	}
	if _, err := ctr.Inspect(ctx, "c1"); err != nil {
		t.Fatalf("the container went elsewhere: %v", err)
	}
	if _, err := vm.Inspect(ctx, "v1"); err != nil {
		t.Fatalf("the VM went elsewhere: %v", err)
	}
	if _, err := ctr.Inspect(ctx, "v1"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("the container driver has the VM: %v", err)
	}
	if err := d.Create(ctx, driver.Spec{ID: "k1", Brand: driver.BrandKVM}); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Fatalf("a brand no part runs: %v, want invalid", err)
	}

	// A new combination over the same parts finds each instance where it is.
	d2 := multi.New(ctr, vm)
	list, err := d2.List(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %v, %v", list, err)
	}
	if err := d2.Stop(ctx, "v1", time.Second); err != nil {
		t.Fatal(err)
	}
	if st, _ := vm.Inspect(ctx, "v1"); st.State != driver.StateStopped {
		t.Fatalf("v1 is %s after stop", st.State)
	}
	if err := d2.Delete(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := ctr.Inspect(ctx, "c1"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("c1 still there after delete: %v", err)
	}
	if err := d2.Delete(ctx, "nope"); err != nil {
		t.Fatalf("deleting an unknown id must be a no-op: %v", err)
	}
}

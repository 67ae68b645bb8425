package multi

import (
	"context"
	"testing"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/api/errdefs"
)

// volumeKeeper is a part that keeps volumes.
type volumeKeeper struct {
	driver.Driver
	removed []string
}

func (v *volumeKeeper) VolumeDir(ctx context.Context, id string, sizeMiB int64) (string, error) {
	return "/volumes/" + id, nil
}

func (v *volumeKeeper) RemoveVolume(ctx context.Context, id string) error {
	v.removed = append(v.removed, id)
	if id == "busy" {
		return errdefs.Conflictf("volume busy is in use")
	}
	return nil
}

func (v *volumeKeeper) ReleaseVolumes(ctx context.Context) error { return nil }

func TestVolumes(t *testing.T) {
	ctx := context.Background()
	vm, _ := sim.New(sim.Config{Brands: []string{driver.BrandBhyve}})
	noVolumes := New(vm)
	if _, err := noVolumes.VolumeDir(ctx, "v", 0); !errdefs.Is(err, errdefs.NotImplemented) {
		t.Errorf("VolumeDir without a part that keeps volumes: %v", err)
	}
	if err := noVolumes.RemoveVolume(ctx, "v"); !errdefs.Is(err, errdefs.NotImplemented) {
		t.Errorf("RemoveVolume without a part that keeps volumes: %v", err)
	}
	ctr, _ := sim.New(sim.Config{Brands: []string{driver.BrandContainer}})
	keeper := &volumeKeeper{Driver: ctr}
	d := New(vm, keeper)
	if dir, err := d.VolumeDir(ctx, "v", 10); err != nil || dir != "/volumes/v" {
		t.Errorf("VolumeDir = %q, %v", dir, err)
	}
	if err := d.RemoveVolume(ctx, "v"); err != nil || len(keeper.removed) != 1 {
		t.Errorf("RemoveVolume = %v, removed %v", err, keeper.removed)
	}
	if err := d.RemoveVolume(ctx, "busy"); !errdefs.Is(err, errdefs.Conflict) {
		t.Errorf("RemoveVolume of a volume in use: %v, want Conflict", err)
	}
	if err := d.ReleaseVolumes(ctx); err != nil {
		t.Error(err)
	}
}

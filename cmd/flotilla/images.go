package main

import (
	"context"
	"fmt"

	"flotilla/api/errdefs"
	"flotilla/store"
)

// devImages are the images a fresh dev cloud offers: one per kind we run.
var devImages = []store.Image{
	{ID: "b0c1d2e3-0000-4000-8000-000000000001", Name: "busybox", Version: "1.36", OS: "linux", Type: "zone-dataset",
		Public: true, Description: "A small busybox container that runs until stopped", Tags: map[string]any{"role": "os", "default_user": "root"}},
	{ID: "7a1e0f00-0000-4000-8000-000000000002", Name: "tiny-vm", Version: "1.0", OS: "linux", Type: "zvol",
		Public: true, Description: "A tiny Linux VM (distribution kernel and a busybox initramfs)", Tags: map[string]any{"role": "os"},
		Requirements: map[string]any{"brand": "bhyve"}},
}

// ensureDevImages records the dev images that do not exist yet.
func ensureDevImages(ctx context.Context, st *store.Store, data string) error {
	for _, im := range devImages {
		if _, err := st.ImageByID(ctx, im.ID); err == nil {
			continue
		} else if !errdefs.Is(err, errdefs.NotFound) {
			return err
		}
		if _, err := st.CreateImage(ctx, im); err != nil {
			return fmt.Errorf("seeding image %s: %w", im.Name, err)
		}
	}
	return nil
}

func adminImage(ctx context.Context, st *store.Store, action string, args []string) error {
	return usagef("image %s is not available yet", action)
}

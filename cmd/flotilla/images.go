package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/agent"
	"flotilla/agent/driver"
	"flotilla/agent/driver/qemu"
	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/oci"
	"flotilla/store"
)

// Fixed ids of the dev images, so names and references stay stable across
// runs.
const (
	devBusyboxID = "b0c1d2e3-0000-4000-8000-000000000001"
	devTinyVMID  = "7a1e0f00-0000-4000-8000-000000000002"
)

// devImages are the images a fresh dev cloud offers: one per kind we run.
var devImages = []store.Image{
	{ID: devBusyboxID, Name: "busybox", Version: "1.36", OS: "linux", Type: "zone-dataset",
		Public: true, Description: "A small busybox container that runs until stopped", Tags: map[string]any{"role": "os", "default_user": "root"}},
	{ID: devTinyVMID, Name: "tiny-vm", Version: "1.0", OS: "linux", Type: "zvol",
		Public: true, Description: "A tiny Linux VM (distribution kernel and a busybox initramfs)", Tags: map[string]any{"role": "os"},
		Requirements: map[string]any{"brand": "bhyve"}},
}

// imageBlobs opens the control plane's blob store, dataDir/blobs. serve
// passes it to the service (SetBlobs) and the agent API (SetBlobs).
func imageBlobs(dataDir string) (*oci.DirStore, error) {
	return oci.NewDirStore(filepath.Join(dataDir, "blobs"))
}

// newImageSource is the agent's image source for the runc and qemu drivers'
// Config.Images: blobs cached under dataDir/image-cache, the node
// credential read from dataDir/node.json.
func newImageSource(dataDir string) (driver.ImageSource, error) {
	return agent.NewImageSource(agent.ImageSourceConfig{CacheDir: filepath.Join(dataDir, "image-cache"), DataDir: dataDir,
		HTTPClient: agentHTTPClient})
}

// imageService is the image part of the service layer over st with blobs
// under dataDir (admin commands and dev seeding need no placer).
func imageService(st *store.Store, dataDir string, log *slog.Logger) (*service.Service, error) {
	blobs, err := imageBlobs(dataDir)
	if err != nil {
		return nil, err
	}
	svc := &service.Service{Store: st, Log: log}
	svc.SetBlobs(blobs)
	// The operator's own pulls (admin image pull) may reach private
	// registries; tenants' pulls go through serve's policy.
	svc.SetImagePolicy(service.ImagePolicy{RegistryAllowPrivate: true})
	return svc, nil
}

// ensureDevImages records the dev images with their content: busybox from
// the host's /bin/busybox and the tiny VM (kernel from apt, cached). An
// image whose row already has its content in the blob store is skipped, so
// a second run is fast. When content cannot be built the record is kept
// without it and the reason logged.
func ensureDevImages(ctx context.Context, st *store.Store, data string) error {
	log := slog.Default()
	svc, err := imageService(st, data, log)
	if err != nil {
		return err
	}
	blobs, _ := svc.Blobs()
	for _, im := range devImages {
		if old, err := st.ImageByID(ctx, im.ID); err == nil && old.ManifestDigest != "" {
			if h, err := v1.NewHash(old.ManifestDigest); err == nil {
				if _, err := blobs.Stat(ctx, h); err == nil {
					continue
				}
			}
		} else if err != nil && !errdefs.Is(err, errdefs.NotFound) {
			return err
		}
		img, err := devImageContent(ctx, im, data)
		if err != nil {
			log.Warn("dev image recorded without content", "image", im.Name, "reason", errdefs.MessageOf(err))
			if _, err := st.ImageByID(ctx, im.ID); errdefs.Is(err, errdefs.NotFound) {
				if _, err := st.CreateImage(ctx, im); err != nil {
					return fmt.Errorf("seeding image %s: %w", im.Name, err)
				}
			}
			continue
		}
		meta := service.ImageMeta{ID: im.ID, Name: im.Name, Version: im.Version, OS: im.OS, Type: im.Type,
			Description: im.Description, Public: im.Public, Tags: im.Tags, Requirements: im.Requirements}
		if _, err := svc.ImportImage(ctx, nil, img, meta); err != nil {
			return fmt.Errorf("seeding image %s: %w", im.Name, err)
		}
	}
	return nil
}

// devImageContent builds the OCI image of a dev image.
func devImageContent(ctx context.Context, im store.Image, data string) (v1.Image, error) {
	switch im.ID {
	case devBusyboxID:
		return oci.BusyboxImage("/bin/busybox")
	case devTinyVMID:
		cache := os.Getenv("FLOTILLA_VM_CACHE")
		if cache == "" {
			cache = filepath.Join(data, "vm-cache")
		}
		slog.Info("building the tiny VM image (the first run fetches the kernel with apt)", "cache", cache)
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		tiny, err := qemu.BuildTinyImage(ctx, cache)
		if err != nil {
			return nil, err
		}
		return tiny.Image, nil
	}
	return nil, errdefs.NotFoundf("no content builder for image %s", im.Name)
}

const adminImageUsage = `Usage: flotilla admin image ACTION ... [--data DIR]
  import FILE --name N --version V [--os linux] [--type zone-dataset|lx-dataset|zvol|other]
              [--owner LOGIN] [--public] [--description D] [--cmd "PROGRAM ARGS..."]
        a root filesystem tarball (plain or gzip) as a one-layer image
  load FILE|DIR [--owner LOGIN]
        the images of a 'docker save' archive or an OCI layout
  pull REF [--registry URL] [--insecure] [--owner LOGIN] [--username U]
        an image from a registry (password from $FLOTILLA_REGISTRY_PASSWORD)
  list
--data is the control plane's data directory, where blobs live under blobs/
(default $FLOTILLA_DATA, else /var/lib/flotilla; use serve's --data).
`

func adminImage(ctx context.Context, st *store.Store, action string, args []string) error {
	fs := flag.NewFlagSet("image "+action, flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, adminImageUsage) }
	defData := os.Getenv("FLOTILLA_DATA")
	if defData == "" {
		defData = "/var/lib/flotilla"
	}
	data := fs.String("data", defData, "control plane data directory (blobs/ holds image content)")
	owner := fs.String("owner", "", "account login that owns the image (default: operator image, no owner)")
	nm := fs.String("name", "", "image name")
	version := fs.String("version", "", "image version")
	osName := fs.String("os", "linux", "image OS")
	typ := fs.String("type", "zone-dataset", "image type")
	public := fs.Bool("public", false, "visible to every account")
	desc := fs.String("description", "", "description")
	cmd := fs.String("cmd", "", "default command of an imported root filesystem")
	registry := fs.String("registry", "", "registry mirror for Docker Hub references")
	insecure := fs.Bool("insecure", false, "plain HTTP to the registry")
	username := fs.String("username", "", "registry user name")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	svc, err := imageService(st, *data, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	var ownerID *string
	if *owner != "" {
		a, err := st.AccountByLogin(ctx, *owner)
		if err != nil {
			return errorText(err)
		}
		ownerID = &a.ID
	}
	one := func() (string, error) {
		if len(pos) != 1 {
			return "", usagef("image %s needs exactly one argument; see 'flotilla admin image -h'", action)
		}
		return pos[0], nil
	}
	switch action {
	case "import":
		file, err := one()
		if err != nil {
			return err
		}
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("image import: %w", err)
		}
		defer f.Close()
		meta := service.ImageMeta{Name: *nm, Version: *version, OS: *osName, Type: *typ, Public: *public, Description: *desc,
			Config: v1.Config{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, Cmd: strings.Fields(*cmd)}}
		im, err := svc.ImportRootfs(ctx, ownerID, f, meta)
		if err != nil {
			return errorText(err)
		}
		fmt.Printf("imported %s@%s as %s (%s, %s)\n", im.Name, im.Version, im.ID, im.ManifestDigest, humanBytes(im.SizeBytes))
	case "load":
		file, err := one()
		if err != nil {
			return err
		}
		loaded, err := svc.LoadArchive(ctx, ownerID, file)
		if err != nil {
			return errorText(err)
		}
		for _, li := range loaded {
			fmt.Printf("loaded %s %s %s\n", li.Image.ID, li.Image.ManifestDigest, strings.Join(li.RepoTags, " "))
		}
	case "pull":
		ref, err := one()
		if err != nil {
			return err
		}
		opts := service.PullOptions{Registry: *registry, Insecure: *insecure, Username: *username,
			Password: os.Getenv("FLOTILLA_REGISTRY_PASSWORD"),
			Progress: func(p service.PullProgress) {
				if p.Status != "Downloading" {
					fmt.Printf("%s: %s\n", p.ID, p.Status)
				}
			}}
		li, err := svc.Pull(ctx, ownerID, ref, opts)
		if err != nil {
			return errorText(err)
		}
		fmt.Printf("pulled %s as %s (%s, %s)\n", ref, li.Image.ID, li.Image.ManifestDigest, humanBytes(li.Image.SizeBytes))
	case "list":
		ims, err := st.AllImages(ctx)
		if err != nil {
			return errorText(err)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tVERSION\tTYPE\tOWNER\tPUBLIC\tDIGEST\tSIZE")
		for _, im := range ims {
			o := "-"
			if im.OwnerID != nil {
				o = *im.OwnerID
			}
			d := "(no content)"
			if im.ManifestDigest != "" {
				d = im.ManifestDigest[:min(len(im.ManifestDigest), 19)]
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\t%s\n", im.ID, im.Name, im.Version, im.Type, o, im.Public, d, humanBytes(im.SizeBytes))
		}
		return tw.Flush()
	default:
		fmt.Fprint(os.Stderr, adminImageUsage)
		return usagef("unknown image action %q", action)
	}
	return nil
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

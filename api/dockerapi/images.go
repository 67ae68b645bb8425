package dockerapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/go-chi/chi/v5"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
)

func (s *Server) imageRoutes(r chi.Router) {
	r.Get("/images/json", s.handle(s.listImagesHandler))
	r.Get("/images/{name}/json", s.handle(s.inspectImage))
	r.Get("/images/{name}/history", s.handle(s.imageHistory))
	// Image references contain slashes ("quay.io/org/app"): match the rest.
	r.Get("/images/*", s.handle(s.imagePath))
	r.Post("/images/create", s.handle(s.unsupported("pulling and importing images through the Docker endpoint")))
	r.Post("/images/load", s.handle(s.unsupported("loading images through the Docker endpoint")))
}

// imagePath serves GET /images/<ref with slashes>/json|history.
func (s *Server) imagePath(w http.ResponseWriter, r *http.Request) error {
	rest := chi.URLParam(r, "*")
	switch {
	case strings.HasSuffix(rest, "/json"):
		return s.writeImageInspect(w, r, strings.TrimSuffix(rest, "/json"))
	case strings.HasSuffix(rest, "/history"):
		return s.writeImageHistory(w, r, strings.TrimSuffix(rest, "/history"))
	}
	return errdefs.NotFoundf("page not found")
}

// runnable reports whether containers can run the image (not a VM disk).
func runnable(img store.Image) bool { return img.Type != "zvol" }

// listImages returns the container images the caller may use.
func (s *Server) listImages(ctx context.Context, c service.Caller) ([]store.Image, error) {
	all, err := s.store.ListImages(ctx, c.AccountID, store.ImageFilter{IncludeDocker: true})
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, img := range all {
		if runnable(img) {
			out = append(out, img)
		}
	}
	return out, nil
}

// ImageID is an image's Docker id: its OCI config digest when it has one,
// else one derived from its uuid.
func ImageID(img store.Image) string {
	var m ocispec.Manifest
	if len(img.Manifest) > 0 && json.Unmarshal(img.Manifest, &m) == nil && m.Config.Digest != "" {
		return m.Config.Digest.String()
	}
	sum := sha256.Sum256([]byte(img.ID))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// imageRef is the name:tag an image is known by.
func imageRef(img store.Image) string {
	v := img.Version
	if v == "" {
		v = "latest"
	}
	return img.Name + ":" + v
}

// repoTags are an image's Docker tags: name:version, plus name:latest for
// the newest version of a name (computed over list).
func repoTags(img store.Image, latest map[string]string) []string {
	tags := []string{imageRef(img)}
	if latest[img.Name] == img.ID && img.Version != "latest" && img.Version != "" {
		tags = append(tags, img.Name+":latest")
	}
	return tags
}

// latestByName maps each image name to the id of its newest version.
func latestByName(list []store.Image) map[string]string {
	newest := map[string]store.Image{}
	for _, img := range list {
		cur, ok := newest[img.Name]
		if !ok || publishedAt(img).After(publishedAt(cur)) {
			newest[img.Name] = img
		}
	}
	out := make(map[string]string, len(newest))
	for n, img := range newest {
		out[n] = img.ID
	}
	return out
}

func publishedAt(img store.Image) time.Time {
	if img.PublishedAt != nil {
		return *img.PublishedAt
	}
	return img.CreatedAt
}

// splitRef splits a Docker reference into its familiar repository and tag:
// "docker.io/library/busybox:1.36" is ("busybox", "1.36"); no tag is "latest".
func splitRef(ref string) (repo, tag, digest string) {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref, digest = ref[:i], ref[i+1:]
	}
	repo = ref
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}
	repo = strings.TrimPrefix(repo, "docker.io/")
	repo = strings.TrimPrefix(repo, "index.docker.io/")
	repo = strings.TrimPrefix(repo, "library/")
	if tag == "" && digest == "" {
		tag = "latest"
	}
	return repo, tag, digest
}

// resolveImage finds an image the caller may use by name[:tag], Docker id
// (with or without "sha256:", or a unique prefix of it) or uuid. Errors:
// NotFound "No such image: ref".
func (s *Server) resolveImage(ctx context.Context, c service.Caller, ref string) (store.Image, error) {
	list, err := s.listImages(ctx, c)
	if err != nil {
		return store.Image{}, err
	}
	return pickImage(list, ref)
}

func pickImage(list []store.Image, ref string) (store.Image, error) {
	if ref == "" {
		return store.Image{}, errdefs.NotFoundf("No such image: %s", ref)
	}
	for _, img := range list {
		if img.ID == ref || ImageID(img) == ref || ImageID(img) == "sha256:"+ref {
			return img, nil
		}
	}
	repo, tag, digest := splitRef(ref)
	latest := latestByName(list)
	for _, img := range list {
		if img.Name != repo {
			continue
		}
		if digest != "" && (img.ManifestDigest == digest || ImageID(img) == digest) {
			return img, nil
		}
		if digest == "" && (img.Version == tag || tag == "latest" && latest[img.Name] == img.ID) {
			return img, nil
		}
	}
	hex := strings.TrimPrefix(ref, "sha256:")
	if isLowerHex(hex) && len(hex) >= 4 {
		var found []store.Image
		for _, img := range list {
			if strings.HasPrefix(strings.TrimPrefix(ImageID(img), "sha256:"), hex) {
				found = append(found, img)
			}
		}
		if len(found) == 1 {
			return found[0], nil
		}
	}
	if digest == "" && !strings.Contains(ref, ":") {
		ref += ":latest"
	}
	return store.Image{}, errdefs.NotFoundf("No such image: %s", ref)
}

// imageConfigOf reads the OCI image config stored with an image.
func imageConfigOf(img store.Image) dockerspec.DockerOCIImageConfig {
	var cfg dockerspec.DockerOCIImage
	if len(img.Config) > 0 {
		json.Unmarshal(img.Config, &cfg)
	}
	if len(cfg.Config.Cmd) == 0 && len(cfg.Config.Entrypoint) == 0 && len(img.Config) == 0 {
		// Images without an OCI config (CloudAPI container images) run
		// their init when no command is given.
		cfg.Config.Cmd = []string{"/sbin/init"}
	}
	return cfg.Config
}

func (s *Server) listImagesHandler(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	args, err := parseFilters(r.URL.Query().Get("filters"), "dangling", "label", "before", "since", "reference", "until")
	if err != nil {
		return err
	}
	dangling, danglingSet, err := boolFilter(args, "dangling")
	if err != nil {
		return err
	}
	list, err := s.listImages(r.Context(), c)
	if err != nil {
		return err
	}
	latest := latestByName(list)
	var before, since *time.Time
	for key, dst := range map[string]**time.Time{"before": &before, "since": &since} {
		if v := args.Get(key); len(v) > 0 {
			img, err := pickImage(list, v[0])
			if err != nil {
				return err
			}
			t := img.CreatedAt
			*dst = &t
		}
	}
	out := []image.Summary{}
	for _, img := range list {
		if danglingSet && dangling {
			continue // every image here has a name
		}
		if before != nil && !img.CreatedAt.Before(*before) || since != nil && !img.CreatedAt.After(*since) {
			continue
		}
		ic := imageConfigOf(img)
		if !matchLabels(args, "label", ic.Labels) {
			continue
		}
		tags := repoTags(img, latest)
		if !matchAny(args, "reference", func(v string) bool {
			for _, t := range tags {
				if matchRef(v, t) {
					return true
				}
			}
			return false
		}) {
			continue
		}
		labels := ic.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		out = append(out, image.Summary{
			ID: ImageID(img), RepoTags: tags, RepoDigests: repoDigests(img), Created: publishedAt(img).Unix(),
			Size: imageSize(img), Labels: labels, Containers: -1, SharedSize: -1,
		})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created > out[j].Created })
	return writeJSON(w, http.StatusOK, out)
}

// matchRef matches a reference filter ("busybox", "busybox:1.*") against
// "name:tag" the way dockerd does: a path glob over the familiar name.
func matchRef(pattern, tagged string) bool {
	repo, _, _ := strings.Cut(tagged, ":")
	if !strings.Contains(pattern, ":") {
		ok, _ := pathMatch(pattern, repo)
		return ok
	}
	ok, _ := pathMatch(pattern, tagged)
	return ok
}

func repoDigests(img store.Image) []string {
	if img.ManifestDigest == "" {
		return []string{}
	}
	return []string{img.Name + "@" + img.ManifestDigest}
}

func imageSize(img store.Image) int64 {
	if img.SizeBytes > 0 {
		return img.SizeBytes
	}
	if img.ImageSize != nil {
		return *img.ImageSize << 20
	}
	return 0
}

func (s *Server) inspectImage(w http.ResponseWriter, r *http.Request) error {
	return s.writeImageInspect(w, r, chi.URLParam(r, "name"))
}

func (s *Server) writeImageInspect(w http.ResponseWriter, r *http.Request, ref string) error {
	c := Caller(r)
	list, err := s.listImages(r.Context(), c)
	if err != nil {
		return err
	}
	img, err := pickImage(list, ref)
	if err != nil {
		return err
	}
	var full dockerspec.DockerOCIImage
	if len(img.Config) > 0 {
		json.Unmarshal(img.Config, &full)
	}
	ic := imageConfigOf(img)
	arch := full.Architecture
	if arch == "" {
		arch = "amd64"
	}
	layers := []string{}
	for _, d := range full.RootFS.DiffIDs {
		layers = append(layers, d.String())
	}
	created := publishedAt(img).UTC().Format(time.RFC3339Nano)
	if full.Created != nil {
		created = full.Created.UTC().Format(time.RFC3339Nano)
	}
	return writeJSON(w, http.StatusOK, image.InspectResponse{
		ID: ImageID(img), RepoTags: repoTags(img, latestByName(list)), RepoDigests: repoDigests(img),
		Comment: img.Description, Created: created, Author: full.Author, Config: &ic, Architecture: arch,
		Os: "linux", Size: imageSize(img), GraphDriver: storageDriver(),
		RootFS: image.RootFS{Type: "layers", Layers: layers},
	})
}

func (s *Server) imageHistory(w http.ResponseWriter, r *http.Request) error {
	return s.writeImageHistory(w, r, chi.URLParam(r, "name"))
}

func (s *Server) writeImageHistory(w http.ResponseWriter, r *http.Request, ref string) error {
	c := Caller(r)
	list, err := s.listImages(r.Context(), c)
	if err != nil {
		return err
	}
	img, err := pickImage(list, ref)
	if err != nil {
		return err
	}
	var full dockerspec.DockerOCIImage
	if len(img.Config) > 0 {
		json.Unmarshal(img.Config, &full)
	}
	out := []image.HistoryResponseItem{}
	for i := len(full.History) - 1; i >= 0; i-- {
		h := full.History[i]
		item := image.HistoryResponseItem{ID: "<missing>", CreatedBy: h.CreatedBy, Comment: h.Comment, Tags: []string{}}
		if h.Created != nil {
			item.Created = h.Created.Unix()
		}
		out = append(out, item)
	}
	if len(out) == 0 {
		out = append(out, image.HistoryResponseItem{CreatedBy: img.Description, Created: publishedAt(img).Unix(), Size: imageSize(img)})
	}
	out[0].ID = ImageID(img)
	out[0].Tags = repoTags(img, latestByName(list))
	return writeJSON(w, http.StatusOK, out)
}

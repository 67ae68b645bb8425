package dockerapi

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/image"
	units "github.com/docker/go-units"
	"github.com/go-chi/chi/v5"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
)

func (s *Server) imageRoutes(r chi.Router) {
	r.Get("/images/json", s.handle(s.listImagesHandler))
	r.Get("/images/get", s.handle(s.saveImages))
	r.Get("/images/{name}/json", s.handle(s.inspectImage))
	r.Get("/images/{name}/history", s.handle(s.imageHistory))
	r.Get("/images/{name}/get", s.handle(s.saveImage))
	r.Post("/images/create", s.handle(s.createImage))
	r.Post("/images/load", s.handle(s.loadImages))
	r.Post("/images/{name}/tag", s.handle(s.tagImage))
	r.Delete("/images/{name}", s.handle(s.removeImage))
	// Image references contain slashes ("quay.io/org/app"): match the rest.
	r.Get("/images/*", s.handle(s.imagePath))
	r.Post("/images/*", s.handle(s.imagePath))
	r.Delete("/images/*", s.handle(s.imagePath))
}

// imagePath serves the image routes whose reference has slashes:
// GET /images/<ref>/json|history|get, POST /images/<ref>/tag and
// DELETE /images/<ref>.
func (s *Server) imagePath(w http.ResponseWriter, r *http.Request) error {
	rest := chi.URLParam(r, "*")
	switch {
	case r.Method == http.MethodDelete:
		return s.deleteImage(w, r, rest)
	case r.Method == http.MethodPost && strings.HasSuffix(rest, "/tag"):
		return s.writeTag(w, r, strings.TrimSuffix(rest, "/tag"))
	case r.Method != http.MethodGet:
	case strings.HasSuffix(rest, "/json"):
		return s.writeImageInspect(w, r, strings.TrimSuffix(rest, "/json"))
	case strings.HasSuffix(rest, "/history"):
		return s.writeImageHistory(w, r, strings.TrimSuffix(rest, "/history"))
	case strings.HasSuffix(rest, "/get"):
		return s.writeSave(w, r, []string{strings.TrimSuffix(rest, "/get")})
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

// imageSet is what one caller sees of the images: those it may use and its
// Docker repo:tags. The caller's own Docker images are named by its tags
// alone (an untagged one is dangling); shared images (operators', public
// ones) by name:version, their newest version also as name:latest unless
// the caller has a tag of that name.
type imageSet struct {
	owner  string
	list   []store.Image
	tags   map[string][]string // image uuid -> the caller's repo:tags
	byTag  map[string]string   // the caller's repo:tag -> image uuid
	latest map[string]string
}

// images loads the caller's image set.
func (s *Server) images(ctx context.Context, c service.Caller) (*imageSet, error) {
	list, err := s.listImages(ctx, c)
	if err != nil {
		return nil, err
	}
	tags, err := s.store.ListImageTags(ctx, c.AccountID, "")
	if err != nil {
		return nil, err
	}
	set := &imageSet{owner: c.AccountID, list: list, tags: map[string][]string{}, byTag: map[string]string{}}
	for _, t := range tags {
		rt := t.Repo + ":" + t.Tag
		set.tags[t.ImageID] = append(set.tags[t.ImageID], rt)
		set.byTag[rt] = t.ImageID
	}
	var shared []store.Image
	for _, img := range list {
		if !set.ownDocker(img) {
			shared = append(shared, img)
		}
	}
	set.latest = latestByName(shared)
	return set, nil
}

// ownDocker reports whether img is one of the caller's Docker images, which
// only its tags name.
func (set *imageSet) ownDocker(img store.Image) bool {
	return img.Type == service.ImageTypeDocker && img.OwnerID != nil && *img.OwnerID == set.owner
}

// repoTags are an image's Docker tags as the caller sees them.
func (set *imageSet) repoTags(img store.Image) []string {
	out := []string{}
	if !set.ownDocker(img) {
		out = append(out, imageRef(img))
		if set.latest[img.Name] == img.ID && img.Version != "latest" && img.Version != "" {
			if _, mine := set.byTag[img.Name+":latest"]; !mine {
				out = append(out, img.Name+":latest")
			}
		}
	}
	for _, t := range set.tags[img.ID] {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out
}

// repoDigests are repo@manifest-digest for each repository naming img.
func (set *imageSet) repoDigests(img store.Image) []string {
	out := []string{}
	if img.ManifestDigest == "" {
		return out
	}
	for _, t := range set.repoTags(img) {
		repo, _, _ := strings.Cut(t, ":")
		if i := strings.LastIndex(t, ":"); i > 0 {
			repo = t[:i]
		}
		if d := repo + "@" + img.ManifestDigest; !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	if len(out) == 0 && img.Name != "" && img.Name != "<none>" {
		out = append(out, img.Name+"@"+img.ManifestDigest)
	}
	return out
}

// byID returns the image with that uuid from the set.
func (set *imageSet) byID(id string) (store.Image, bool) {
	for _, img := range set.list {
		if img.ID == id {
			return img, true
		}
	}
	return store.Image{}, false
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
	set, err := s.images(ctx, c)
	if err != nil {
		return store.Image{}, err
	}
	img, _, err := set.pick(ref)
	return img, err
}

// pick finds the image ref names and, when ref is one of the caller's
// repo:tags, that tag. Errors: NotFound "No such image: ref".
func (set *imageSet) pick(ref string) (img store.Image, tag string, err error) {
	if ref == "" {
		return store.Image{}, "", errdefs.NotFoundf("No such image: %s", ref)
	}
	for _, img := range set.list {
		if img.ID == ref || ImageID(img) == ref || ImageID(img) == "sha256:"+ref {
			return img, "", nil
		}
	}
	repo, t, digest := splitRef(ref)
	if digest == "" {
		if id, ok := set.byTag[repo+":"+t]; ok {
			if img, ok := set.byID(id); ok {
				return img, repo + ":" + t, nil
			}
		}
	}
	for _, img := range set.list {
		if digest != "" && (img.ManifestDigest == digest || ImageID(img) == digest) {
			if img.Name == repo || slices.ContainsFunc(set.tags[img.ID], func(t string) bool { return strings.HasPrefix(t, repo+":") }) {
				return img, "", nil
			}
			continue
		}
		if set.ownDocker(img) || img.Name != repo {
			continue
		}
		if digest == "" && (img.Version == t || t == "latest" && set.latest[img.Name] == img.ID) {
			return img, "", nil
		}
	}
	hex := strings.TrimPrefix(ref, "sha256:")
	if isLowerHex(hex) && len(hex) >= 4 {
		var found []store.Image
		for _, img := range set.list {
			if strings.HasPrefix(strings.TrimPrefix(ImageID(img), "sha256:"), hex) {
				found = append(found, img)
			}
		}
		if len(found) == 1 {
			return found[0], "", nil
		}
	}
	if digest == "" && !strings.Contains(ref, ":") {
		ref += ":latest"
	}
	return store.Image{}, "", errdefs.NotFoundf("No such image: %s", ref)
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
	set, err := s.images(r.Context(), c)
	if err != nil {
		return err
	}
	var before, since *time.Time
	for key, dst := range map[string]**time.Time{"before": &before, "since": &since} {
		if v := args.Get(key); len(v) > 0 {
			img, _, err := set.pick(v[0])
			if err != nil {
				return err
			}
			t := img.CreatedAt
			*dst = &t
		}
	}
	out := []image.Summary{}
	for _, img := range set.list {
		tags := set.repoTags(img)
		if danglingSet && dangling != (len(tags) == 0) {
			continue
		}
		if before != nil && !img.CreatedAt.Before(*before) || since != nil && !img.CreatedAt.After(*since) {
			continue
		}
		ic := imageConfigOf(img)
		if !matchLabels(args, "label", ic.Labels) {
			continue
		}
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
			ID: ImageID(img), RepoTags: tags, RepoDigests: set.repoDigests(img), Created: publishedAt(img).Unix(),
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

// pickImage resolves ref among the caller's images and decodes its config
// (an image without one gives an empty config).
func (s *Server) pickImage(r *http.Request, ref string) (*imageSet, store.Image, dockerspec.DockerOCIImage, error) {
	var full dockerspec.DockerOCIImage
	set, err := s.images(r.Context(), Caller(r))
	if err != nil {
		return set, store.Image{}, full, err
	}
	img, _, err := set.pick(ref)
	if err != nil {
		return set, store.Image{}, full, err
	}
	if len(img.Config) > 0 {
		json.Unmarshal(img.Config, &full)
	}
	return set, img, full, nil
}

func (s *Server) writeImageInspect(w http.ResponseWriter, r *http.Request, ref string) error {
	set, img, full, err := s.pickImage(r, ref)
	if err != nil {
		return err
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
		ID: ImageID(img), RepoTags: set.repoTags(img), RepoDigests: set.repoDigests(img),
		Comment: img.Description, Created: created, Author: full.Author, Config: &ic, Architecture: arch,
		Os: "linux", Size: imageSize(img), GraphDriver: storageDriver(),
		RootFS: image.RootFS{Type: "layers", Layers: layers},
	})
}

func (s *Server) imageHistory(w http.ResponseWriter, r *http.Request) error {
	return s.writeImageHistory(w, r, chi.URLParam(r, "name"))
}

func (s *Server) writeImageHistory(w http.ResponseWriter, r *http.Request, ref string) error {
	set, img, full, err := s.pickImage(r, ref)
	if err != nil {
		return err
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
	out[0].Tags = set.repoTags(img)
	return writeJSON(w, http.StatusOK, out)
}

// progressMessage is one line of the JSON stream that pull, import and
// load answer with (the CLI's jsonmessage.JSONMessage).
type progressMessage struct {
	Stream         string          `json:"stream,omitempty"`
	Status         string          `json:"status,omitempty"`
	ProgressDetail *progressDetail `json:"progressDetail,omitempty"`
	Progress       string          `json:"progress,omitempty"`
	ID             string          `json:"id,omitempty"`
	ErrorDetail    *errorDetail    `json:"errorDetail,omitempty"`
	Error          string          `json:"error,omitempty"`
	Aux            any             `json:"aux,omitempty"`
}

type progressDetail struct {
	Current int64 `json:"current,omitempty"`
	Total   int64 `json:"total,omitempty"`
}

type errorDetail struct {
	Message string `json:"message"`
}

// progressStream writes progress messages, sending the 200 and headers with
// the first one: an operation that fails before it has anything to report
// answers with a proper error status instead (as dockerd does).
type progressStream struct {
	w       http.ResponseWriter
	started bool
}

func (p *progressStream) send(m progressMessage) {
	if !p.started {
		p.started = true
		p.w.Header().Set("Content-Type", "application/json")
		p.w.WriteHeader(http.StatusOK)
	}
	json.NewEncoder(p.w).Encode(m)
	if f, ok := p.w.(http.Flusher); ok {
		f.Flush()
	}
}

// finish ends the stream: err goes in the stream once it has started,
// otherwise it is returned for the handler to render.
func (p *progressStream) finish(err error) error {
	if err == nil || !p.started {
		return err
	}
	msg := errdefs.MessageOf(err)
	if errdefs.CodeOf(err) == errdefs.Internal {
		msg = "internal error"
	}
	p.send(progressMessage{Error: msg, ErrorDetail: &errorDetail{Message: msg}})
	return nil
}

// progressBar renders dockerd's "[===>   ]  1.2MB/3.4MB".
func progressBar(cur, total int64) string {
	if total <= 0 {
		return units.HumanSize(float64(cur))
	}
	const width = 50
	n := int(min(cur, total) * width / total)
	bar := strings.Repeat("=", n)
	if n < width {
		bar += ">" + strings.Repeat(" ", width-n-1)
	}
	return "[" + bar + "] " + fmt.Sprintf("%8s/%v", units.HumanSize(float64(cur)), units.HumanSize(float64(total)))
}

// createImage is POST /images/create: a pull (fromImage) or an import of
// a root filesystem tarball from the body (fromSrc=-).
func (s *Server) createImage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	switch {
	case q.Get("fromImage") != "":
		return s.pullImage(w, r)
	case q.Get("fromSrc") == "-":
		return s.importImage(w, r)
	case q.Get("fromSrc") != "":
		return errdefs.New(errdefs.NotImplemented, "importing from a URL is not supported: download the tarball and run `docker import FILE`")
	}
	return errdefs.InvalidArgument("fromImage or fromSrc is required")
}

// registryAuth decodes X-Registry-Auth (base64url JSON of the CLI's
// registry.AuthConfig); an absent or empty header means anonymous.
func registryAuth(h string) (user, password string, err error) {
	if h == "" {
		return "", "", nil
	}
	raw, err := base64.URLEncoding.DecodeString(h)
	if err != nil {
		if raw, err = base64.RawURLEncoding.DecodeString(h); err != nil {
			return "", "", errdefs.InvalidArgument("X-Registry-Auth is not base64url: %v", err)
		}
	}
	var a struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return "", "", errdefs.InvalidArgument("X-Registry-Auth is not an auth config: %v", err)
	}
	return a.Username, a.Password, nil
}

// pullImage pulls fromImage[:tag] from its registry (Docker Hub references
// from the configured mirror) into the caller's images, streaming dockerd's
// progress messages.
func (s *Server) pullImage(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	q := r.URL.Query()
	ref := q.Get("fromImage")
	if tag := q.Get("tag"); tag != "" {
		if strings.HasPrefix(tag, "sha256:") {
			ref += "@" + tag
		} else {
			ref += ":" + tag
		}
	}
	if p := q.Get("platform"); p != "" && p != "linux" && p != "linux/"+runtime.GOARCH {
		return errdefs.InvalidArgument("this cloud runs linux/%s images; platform %q cannot be pulled", runtime.GOARCH, p)
	}
	user, password, err := registryAuth(r.Header.Get("X-Registry-Auth"))
	if err != nil {
		return err
	}
	repo, tag, digest := splitRef(ref)
	label := repo + ":" + tag
	shortTag := tag
	if digest != "" {
		label, shortTag = repo+"@"+digest, digest
	}
	remote := repo
	if !strings.Contains(repo, "/") {
		remote = "library/" + repo
	} else if i := strings.Index(repo, "/"); strings.ContainsAny(repo[:i], ".:") || repo[:i] == "localhost" {
		remote = repo[i+1:]
	}
	ps := &progressStream{w: w}
	header := func() {
		if !ps.started {
			ps.send(progressMessage{Status: "Pulling from " + remote, ID: shortTag})
		}
	}
	owner := c.AccountID
	li, err := s.Service.Pull(r.Context(), &owner, ref, service.PullOptions{Registry: s.cfg.Registry,
		Username: user, Password: password, Progress: func(p service.PullProgress) {
			header()
			m := progressMessage{Status: p.Status, ID: p.ID, ProgressDetail: &progressDetail{}}
			if p.Status == "Downloading" {
				m.ProgressDetail = &progressDetail{Current: p.Current, Total: p.Total}
				m.Progress = progressBar(p.Current, p.Total)
			}
			ps.send(m)
		}})
	if err != nil {
		if errdefs.CodeOf(err) == errdefs.NotFound && !ps.started {
			err = errdefs.Wrap(errdefs.NotFound, err, "pull access denied for %s, repository does not exist or may require 'docker login'", repo)
		}
		return ps.finish(err)
	}
	header()
	ps.send(progressMessage{Status: "Digest: " + li.Image.ManifestDigest})
	if li.Existed {
		ps.send(progressMessage{Status: "Status: Image is up to date for " + label})
	} else {
		ps.send(progressMessage{Status: "Status: Downloaded newer image for " + label})
	}
	s.log.Info("image pulled", "account", c.Login, "ref", ref, "image", li.Image.ID, "digest", li.Image.ManifestDigest)
	s.recordObjectEvent(r.Context(), c, li.Image.ID, events.ImageEventType, events.ActionPull, label, map[string]string{"name": label})
	return nil
}

// importImage makes an image of the root filesystem tarball in the body
// (`docker import`), tagged repo[:tag] when given.
func (s *Server) importImage(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	q := r.URL.Query()
	repo, tag := "", ""
	if ref := q.Get("repo"); ref != "" {
		if t := q.Get("tag"); t != "" {
			ref += ":" + t
		}
		var err error
		if repo, tag, err = service.ParseRepoTag(ref); err != nil {
			return err
		}
	}
	cfg, err := importChanges(q["changes"])
	if err != nil {
		return err
	}
	meta := service.ImageMeta{Type: service.ImageTypeDocker, Name: "<none>", Version: "<none>",
		Description: q.Get("message"), Config: cfg}
	if repo != "" {
		meta.Name, meta.Version = repo, tag
	}
	owner := c.AccountID
	body, err := s.uploads.body(r, owner, "root filesystem tarball")
	if err != nil {
		return err
	}
	defer body.release()
	im, err := s.Service.ImportRootfs(r.Context(), &owner, body, meta)
	if err != nil {
		return body.limitErr(err)
	}
	if repo != "" {
		if err := s.Service.Tag(r.Context(), owner, im.ID, repo+":"+tag); err != nil {
			return err
		}
	}
	ps := &progressStream{w: w}
	ps.send(progressMessage{Status: ImageID(im)})
	return nil
}

// importChanges applies the Dockerfile instructions of `docker import -c`
// that make sense for a root filesystem: CMD, ENTRYPOINT, ENV, WORKDIR,
// USER, LABEL and EXPOSE.
func importChanges(changes []string) (v1.Config, error) {
	var cfg v1.Config
	for _, ch := range changes {
		for _, line := range strings.Split(ch, "\n") {
			line = strings.TrimSpace(line)
			if line == "" {
				continue
			}
			op, arg, _ := strings.Cut(line, " ")
			arg = strings.TrimSpace(arg)
			switch strings.ToUpper(op) {
			case "CMD", "ENTRYPOINT":
				var argv []string
				if strings.HasPrefix(arg, "[") {
					if err := json.Unmarshal([]byte(arg), &argv); err != nil {
						return cfg, errdefs.InvalidArgument("%s %s: not a JSON array of strings", op, arg)
					}
				} else {
					argv = []string{"/bin/sh", "-c", arg}
				}
				if strings.EqualFold(op, "CMD") {
					cfg.Cmd = argv
				} else {
					cfg.Entrypoint = argv
				}
			case "ENV":
				k, v, ok := strings.Cut(arg, "=")
				if !ok {
					k, v, _ = strings.Cut(arg, " ")
				}
				cfg.Env = append(cfg.Env, strings.TrimSpace(k)+"="+strings.Trim(strings.TrimSpace(v), `"`))
			case "WORKDIR":
				cfg.WorkingDir = arg
			case "USER":
				cfg.User = arg
			case "LABEL":
				k, v, _ := strings.Cut(arg, "=")
				if cfg.Labels == nil {
					cfg.Labels = map[string]string{}
				}
				cfg.Labels[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
			case "EXPOSE":
				if cfg.ExposedPorts == nil {
					cfg.ExposedPorts = map[string]struct{}{}
				}
				for _, p := range strings.Fields(arg) {
					if !strings.Contains(p, "/") {
						p += "/tcp"
					}
					cfg.ExposedPorts[p] = struct{}{}
				}
			default:
				return cfg, errdefs.InvalidArgument("%s is not a valid change command for import or commit (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE)", op)
			}
		}
	}
	return cfg, nil
}

// loadImages is POST /images/load: the images of a `docker save` tarball
// (or OCI layout tar) in the body.
func (s *Server) loadImages(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	owner := c.AccountID
	body, err := s.uploads.body(r, owner, "image archive")
	if err != nil {
		return err
	}
	defer body.release()
	loaded, err := s.Service.LoadArchiveReader(r.Context(), &owner, body)
	if err != nil {
		return body.limitErr(err)
	}
	ps := &progressStream{w: w}
	for _, li := range loaded {
		if len(li.RepoTags) == 0 {
			ps.send(progressMessage{Stream: "Loaded image ID: " + ImageID(li.Image) + "\n"})
		}
		for _, t := range li.RepoTags {
			ps.send(progressMessage{Stream: "Loaded image: " + t + "\n"})
		}
	}
	if !ps.started {
		ps.send(progressMessage{Stream: "Loaded no image\n"})
	}
	return nil
}

func (s *Server) saveImage(w http.ResponseWriter, r *http.Request) error {
	return s.writeSave(w, r, []string{chi.URLParam(r, "name")})
}

// saveImages is GET /images/get?names=a&names=b (`docker save`).
func (s *Server) saveImages(w http.ResponseWriter, r *http.Request) error {
	return s.writeSave(w, r, r.URL.Query()["names"])
}

// writeSave writes the named images as one `docker save` tarball. Every
// name is resolved, and its content found, before the 200 goes out.
func (s *Server) writeSave(w http.ResponseWriter, r *http.Request, names []string) error {
	if len(names) == 0 {
		return errdefs.InvalidArgument("name at least one image to save")
	}
	ctx := r.Context()
	set, err := s.images(ctx, Caller(r))
	if err != nil {
		return err
	}
	refs := make([]string, 0, len(names))
	for _, n := range names {
		img, tag, err := set.pick(n)
		if err != nil {
			return err
		}
		if _, err := s.Service.OCIImage(ctx, img.ID); err != nil {
			if errdefs.CodeOf(err) == errdefs.NotFound {
				return errdefs.Wrap(errdefs.NotFound, err, "image %s has no content to save", n)
			}
			return err
		}
		switch {
		case tag != "":
			refs = append(refs, tag) // the caller's own tag
		case !set.ownDocker(img) && !isImageID(n, img):
			refs = append(refs, imageRef(img))
		default:
			refs = append(refs, img.ID)
		}
	}
	owner := set.owner
	lw := &lazyWriter{w: w, contentType: "application/x-tar"}
	if err := s.Service.SaveImages(ctx, &owner, refs, lw); err != nil {
		if lw.started {
			s.log.Error("image save failed after the archive started", "error", err)
			panic(http.ErrAbortHandler) // cut the connection: a short tar must not look complete
		}
		return err
	}
	if !lw.started {
		lw.Write(nil)
	}
	return nil
}

// isImageID reports whether ref named img by id rather than by name.
func isImageID(ref string, img store.Image) bool {
	return ref == img.ID || strings.HasPrefix(strings.TrimPrefix(ImageID(img), "sha256:"), strings.TrimPrefix(ref, "sha256:"))
}

// lazyWriter sends the 200 with the first write.
type lazyWriter struct {
	w           http.ResponseWriter
	contentType string
	started     bool
}

func (l *lazyWriter) Write(b []byte) (int, error) {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", l.contentType)
		l.w.WriteHeader(http.StatusOK)
	}
	return l.w.Write(b)
}

func (s *Server) tagImage(w http.ResponseWriter, r *http.Request) error {
	return s.writeTag(w, r, chi.URLParam(r, "name"))
}

// writeTag is POST /images/{name}/tag?repo=&tag= (`docker tag`): 201.
func (s *Server) writeTag(w http.ResponseWriter, r *http.Request, ref string) error {
	c := Caller(r)
	q := r.URL.Query()
	target := q.Get("repo")
	if target == "" {
		return errdefs.InvalidArgument("repo is required")
	}
	if t := q.Get("tag"); t != "" {
		target += ":" + t
	}
	set, err := s.images(r.Context(), c)
	if err != nil {
		return err
	}
	img, _, err := set.pick(ref)
	if err != nil {
		return err
	}
	if err := s.Service.Tag(r.Context(), c.AccountID, img.ID, target); err != nil {
		return err
	}
	s.recordObjectEvent(r.Context(), c, img.ID, events.ImageEventType, events.ActionTag, ImageID(img), map[string]string{"name": familiarRef(target)})
	w.WriteHeader(http.StatusCreated)
	return nil
}

func (s *Server) removeImage(w http.ResponseWriter, r *http.Request) error {
	return s.deleteImage(w, r, chi.URLParam(r, "name"))
}

// deleteImage is DELETE /images/{name} (`docker rmi`). A reference to one of
// the caller's tags removes the tag, and the image with its last tag unless
// a container uses it; a reference by id removes every tag and the image.
// The conflicts are dockerd's, in its words. Shared images (operators',
// public ones) cannot be removed, only the caller's tags on them.
func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request, ref string) error {
	ctx := r.Context()
	c := Caller(r)
	force := boolParam(r.URL.Query().Get("force"))
	set, err := s.images(ctx, c)
	if err != nil {
		return err
	}
	img, tag, err := set.pick(ref)
	if err != nil {
		return err
	}
	own := set.ownDocker(img)
	if tag == "" && !own {
		return errdefs.New(errdefs.Forbidden, "image %s is provided by this cloud and shared by its accounts; it cannot be removed", ref)
	}
	users, err := s.store.ListInstances(ctx, c.AccountID, store.InstanceFilter{Image: img.ID})
	if err == nil && s.awaitRemoved(ctx, c, users) {
		// docker compose down --rmi removes the containers, then the images.
		users, err = s.store.ListInstances(ctx, c.AccountID, store.InstanceFilter{Image: img.ID})
	}
	if err != nil {
		return err
	}
	var running, stopped string
	for _, in := range users {
		switch in.State {
		case "running", "provisioning", "stopping", "unknown":
			if running == "" {
				running = ContainerID(in.ID)[:12]
			}
		default:
			if stopped == "" {
				stopped = ContainerID(in.ID)[:12]
			}
		}
	}
	short := strings.TrimPrefix(ImageID(img), "sha256:")[:12]
	tags := set.tags[img.ID]
	var untag []string
	removeImage := own
	if tag != "" {
		untag = []string{tag}
		last := len(tags) == 1
		switch {
		case !last || !own:
			removeImage = false
		case len(users) > 0 && !force:
			user := running
			if user == "" {
				user = stopped
			}
			return errdefs.Conflictf("conflict: unable to remove repository reference %q (must force) - container %s is using its referenced image %s", ref, user, short)
		case len(users) > 0:
			removeImage = false // the image stays, untagged, for its containers
		}
	} else {
		switch {
		case running != "":
			return errdefs.Conflictf("conflict: unable to delete %s (cannot be forced) - image is being used by running container %s", short, running)
		case stopped != "" && !force:
			return errdefs.Conflictf("conflict: unable to delete %s (must be forced) - image is being used by stopped container %s", short, stopped)
		case len(tags) > 1 && !force:
			return errdefs.Conflictf("conflict: unable to delete %s (must be forced) - image is referenced in multiple repositories", short)
		}
		untag = tags
		removeImage = len(users) == 0
	}
	out := []image.DeleteResponse{}
	for _, t := range untag {
		if _, err := s.Service.Untag(ctx, c.AccountID, t); err != nil && errdefs.CodeOf(err) != errdefs.NotFound {
			return err
		}
		out = append(out, image.DeleteResponse{Untagged: t})
		s.recordObjectEvent(ctx, c, img.ID, events.ImageEventType, events.ActionUnTag, ImageID(img), map[string]string{"name": t})
	}
	if removeImage {
		for _, d := range set.repoDigests(img) {
			out = append(out, image.DeleteResponse{Untagged: d})
		}
		if err := s.store.DeleteImage(ctx, c.AccountID, img.ID); err != nil {
			return err
		}
		out = append(out, image.DeleteResponse{Deleted: ImageID(img)})
		s.recordObjectEvent(ctx, c, img.ID, events.ImageEventType, events.ActionDelete, ImageID(img), map[string]string{"name": ImageID(img)})
		s.log.Info("image deleted", "account", c.Login, "image", img.ID)
	}
	return writeJSON(w, http.StatusOK, out)
}

// familiarRef is a reference as dockerd's events show it: without the
// Docker Hub host and library/ ("busybox:1", not "docker.io/library/busybox:1").
func familiarRef(ref string) string {
	ref = strings.TrimPrefix(ref, "docker.io/")
	return strings.TrimPrefix(ref, "library/")
}

package dockerapi

// `docker build` with the classic builder's protocol (POST /build, the
// context tar in the body, progress as a chunked JSON stream). Each RUN
// step runs in a build container of the account: an instance made from
// the image built so far, placed on a node with the runc driver, its
// output streamed to the client, committed into the next image when it
// exits 0, and removed whatever happens (also when the client leaves).
// Build containers are tagged docker_build and left out of the endpoint's
// container lists. COPY and ADD make a layer from the context here;
// configuration instructions change the image's configuration only. There
// is no build cache: every build runs every step. Intermediate images are
// removed at the end; the final one is the account's like any other.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/pkg/stdcopy"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/api/dockerapi/dockerfile"
	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
	"flotilla/api/service"
	"flotilla/store"
)

// buildDriver is the node driver build containers need: one whose
// containers can be committed.
const buildDriver = "runc"

// buildOutput is the build's response stream; the RUN output pump and the
// steps write to it from different goroutines.
type buildOutput struct {
	mu    sync.Mutex
	ps    *progressStream
	quiet bool
}

func (o *buildOutput) send(m progressMessage) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ps.send(m)
}

// say writes a line of the build's log (left out with q=1).
func (o *buildOutput) say(format string, args ...any) {
	if o.quiet {
		return
	}
	o.send(progressMessage{Stream: fmt.Sprintf(format, args...) + "\n"})
}

// Write streams a RUN step's output.
func (o *buildOutput) Write(p []byte) (int, error) {
	if !o.quiet && len(p) > 0 {
		o.send(progressMessage{Stream: string(p)})
	}
	return len(p), nil
}

func (o *buildOutput) finish(err error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ps.finish(err)
}

// buildRequest is what POST /build's query asks for.
type buildRequest struct {
	tags       []string // repo:tag
	dockerfile string
	buildArgs  map[string]*string
	labels     map[string]string
	quiet      bool
	target     string
}

func parseBuildRequest(r *http.Request) (buildRequest, error) {
	q := r.URL.Query()
	br := buildRequest{dockerfile: q.Get("dockerfile"), quiet: boolParam(q.Get("q")), target: q.Get("target")}
	if br.dockerfile == "" {
		br.dockerfile = "Dockerfile"
	}
	if v := q.Get("remote"); v != "" {
		return br, errdefs.New(errdefs.NotImplemented, "building from a remote context (%s) is not supported: fetch it and run docker build on the directory", v)
	}
	if q.Get("version") == "2" {
		return br, errdefs.New(errdefs.NotImplemented, "BuildKit is not supported by this cloud: use the classic builder (DOCKER_BUILDKIT=0)")
	}
	if boolParam(q.Get("squash")) {
		return br, errdefs.New(errdefs.NotImplemented, "--squash is not supported by this cloud's builder")
	}
	if p := q.Get("platform"); p != "" && p != "linux" && !strings.HasPrefix(p, "linux/"+hostArch) {
		return br, errdefs.InvalidArgument("this cloud builds linux/%s images; platform %q cannot be built", hostArch, p)
	}
	if o := q.Get("outputs"); o != "" && o != "[]" && o != "null" {
		return br, errdefs.New(errdefs.NotImplemented, "build outputs are not supported: the image is stored in the account's images")
	}
	for _, t := range q["t"] {
		repo, tag, err := service.ParseRepoTag(t)
		if err != nil {
			return br, errdefs.InvalidArgument("invalid tag %q: %s", t, errdefs.MessageOf(err))
		}
		br.tags = append(br.tags, repo+":"+tag)
	}
	if v := q.Get("buildargs"); v != "" {
		if err := json.Unmarshal([]byte(v), &br.buildArgs); err != nil {
			return br, errdefs.InvalidArgument("buildargs is not a JSON object of strings: %v", err)
		}
	}
	if br.buildArgs == nil {
		br.buildArgs = map[string]*string{}
	}
	if v := q.Get("labels"); v != "" {
		if err := json.Unmarshal([]byte(v), &br.labels); err != nil {
			return br, errdefs.InvalidArgument("labels is not a JSON object of strings: %v", err)
		}
	}
	return br, nil
}

// checkDockerfile refuses, before any work, what this builder does not do,
// and counts the steps (the instructions from the first FROM on, up to the
// end of the target stage: the last, or --target's).
func checkDockerfile(df *dockerfile.File, target string) (steps int, hasRun bool, err error) {
	from := 0
	target = strings.ToLower(target)
	found, done := target == "", false
	for _, in := range df.Instructions {
		bad := func(format string, args ...any) error {
			return errdefs.InvalidArgument("Dockerfile line %d: %s", in.Line, fmt.Sprintf(format, args...))
		}
		if from == 0 && in.Cmd != "FROM" && in.Cmd != "ARG" {
			return 0, false, bad("%s before FROM: a Dockerfile must start with FROM (only ARG may come before it)", in.Cmd)
		}
		if in.Cmd == "FROM" {
			from++
			if target != "" {
				if found {
					done = true // a stage after the target's is not built
				} else if stageName(in, df.Escape) == target {
					found = true
				}
			}
		}
		built := from > 0 && !done
		if built {
			steps++
		}
		switch in.Cmd {
		case "ONBUILD":
			return 0, false, bad("ONBUILD is not supported by this cloud's builder")
		case "RUN":
			hasRun = hasRun || built
			for _, f := range in.Flags {
				return 0, false, bad("RUN --%s is not supported by this cloud's builder (it runs RUN steps as plain containers)", f.Name)
			}
		case "COPY", "ADD":
			for _, f := range in.Flags {
				switch f.Name {
				case "chown", "chmod", "link":
				case "from":
					if in.Cmd == "ADD" {
						return 0, false, bad("ADD --from is not a Dockerfile option: use COPY --from")
					}
				default:
					return 0, false, bad("%s --%s is not supported by this cloud's builder", in.Cmd, f.Name)
				}
			}
		}
	}
	if from == 0 {
		return 0, false, errdefs.InvalidArgument("the Dockerfile has no FROM: nothing to build")
	}
	if !found {
		return 0, false, errdefs.InvalidArgument("failed to reach build target %s in Dockerfile: no stage is named so", target)
	}
	return steps, hasRun, nil
}

// stageName is the lower-cased name a FROM gives its stage ("" for none).
func stageName(in dockerfile.Instruction, escape rune) string {
	f := dockerfile.Fields(in.Rest, escape)
	if len(f) == 3 && strings.EqualFold(f[1], "AS") {
		return strings.ToLower(f[2])
	}
	return ""
}

// postBuild is POST /build.
func (s *Server) postBuild(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	ctx := r.Context()
	req, err := parseBuildRequest(r)
	if err != nil {
		return err
	}
	body, err := s.uploads.body(r, c.AccountID, "build context")
	if err != nil {
		return err
	}
	defer body.release()
	bc, err := spoolContext(body)
	if err != nil {
		return body.limitErr(err)
	}
	defer bc.close()
	raw, err := bc.dockerfile(req.dockerfile)
	if err != nil {
		return err
	}
	df, err := dockerfile.Parse(bytes.NewReader(raw))
	if err != nil {
		return errdefs.InvalidArgument("%v", err)
	}
	steps, hasRun, err := checkDockerfile(df, req.target)
	if err != nil {
		return err
	}
	if hasRun {
		if err := s.Service.RequireDriver(ctx, buildDriver, "docker build (its RUN steps run in containers that are then committed)"); err != nil {
			return err
		}
	}
	idb := make([]byte, 6)
	rand.Read(idb)
	b := &builder{s: s, c: c, id: hex.EncodeToString(idb), bc: bc, df: df, req: req, steps: steps,
		st:     newBuildState(df.Escape, req.buildArgs),
		out:    &buildOutput{ps: &progressStream{w: w}, quiet: req.quiet},
		stages: map[string]string{}, images: map[string]*buildContext{}}
	defer b.closeImages()
	t0 := time.Now()
	final, err := b.run(ctx)
	b.removeIntermediates(final.ID)
	if err != nil {
		s.log.Info("build failed", "account", c.Login, "build", b.id, "err", err, "took", time.Since(t0))
		return b.out.finish(err)
	}
	s.log.Info("image built", "account", c.Login, "build", b.id, "image", final.ID, "steps", steps, "took", time.Since(t0))
	return nil
}

// builder runs one build.
type builder struct {
	s     *Server
	c     service.Caller
	id    string
	bc    *buildContext
	df    *dockerfile.File
	req   buildRequest
	st    *buildState
	out   *buildOutput
	steps int

	step    int
	imageID string // the image built so far
	baseID  string // the FROM image
	dirty   bool   // st.cfg differs from imageID's configuration
	created []string
	last    string // the last instruction, for the final image's history

	stage       string            // the name of the stage being built
	stages      map[string]string // the images of the stages built, by name
	stageImages []string          // and by index
	images      map[string]*buildContext
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// run runs every step and tags the image; it returns the final image.
func (b *builder) run(ctx context.Context) (store.Image, error) {
	inStage := false
	target := strings.ToLower(b.req.target)
	for _, in := range b.df.Instructions {
		if err := ctx.Err(); err != nil {
			return store.Image{}, err
		}
		if inStage && in.Cmd == "FROM" {
			if target != "" && b.stage == target {
				break // the target stage is built
			}
			if err := b.endStage(ctx); err != nil {
				return store.Image{}, err
			}
		}
		if !inStage && in.Cmd == "ARG" {
			if err := b.st.arg(in, false); err != nil {
				return store.Image{}, err
			}
			continue
		}
		b.step++
		b.out.say("Step %d/%d : %s", b.step, b.steps, in.Original)
		b.last = in.Original
		var err error
		switch in.Cmd {
		case "FROM":
			err = b.from(ctx, in)
			inStage = true
		case "ARG":
			err = b.st.arg(in, true)
		case "RUN":
			err = b.runStep(ctx, in)
		case "COPY", "ADD":
			err = b.copyStep(ctx, in)
		default:
			var ok bool
			ok, err = b.st.applyConfig(in)
			if err == nil && !ok {
				err = errdefs.InvalidArgument("Dockerfile line %d: %s is not supported by this cloud's builder", in.Line, in.Cmd)
			}
			b.dirty = true
		}
		if err != nil {
			return store.Image{}, err
		}
	}
	if len(b.req.labels) > 0 {
		labels := map[string]string{}
		for k, v := range b.st.cfg.Labels {
			labels[k] = v
		}
		for k, v := range b.req.labels {
			labels[k] = v
		}
		b.st.cfg.Labels = labels
		b.dirty = true
	}
	if unused := b.st.unusedArgs(); len(unused) > 0 {
		b.out.say("[Warning] One or more build-args %v were not consumed", unused)
	}
	if b.dirty || b.imageID == b.baseID {
		if err := b.commitConfig(ctx); err != nil {
			return store.Image{}, err
		}
	}
	final, err := b.s.store.GetImage(ctx, b.c.AccountID, b.imageID)
	if err != nil {
		return store.Image{}, err
	}
	id := ImageID(final)
	b.out.send(progressMessage{Aux: map[string]string{"ID": id}})
	if b.req.quiet {
		b.out.send(progressMessage{Stream: id + "\n"})
	}
	b.out.say("Successfully built %s", shortID(id))
	for _, t := range b.req.tags {
		if err := b.s.Service.Tag(ctx, b.c.AccountID, final.ID, t); err != nil {
			return final, err
		}
		b.s.recordObjectEvent(ctx, b.c, final.ID, events.ImageEventType, events.ActionTag, id, map[string]string{"name": t})
		b.out.say("Successfully tagged %s", t)
	}
	return final, nil
}

// history is the history line of a step, as the classic builder writes it.
func history(in string, run bool) string {
	if run {
		return in
	}
	return "/bin/sh -c #(nop) " + in
}

func (b *builder) meta() service.ImageMeta {
	return service.ImageMeta{Type: service.ImageTypeDocker, Name: "<none>", Version: "<none>"}
}

// record notes an image the build made, and makes it the current one.
func (b *builder) record(im store.Image, isNew bool) {
	if isNew {
		b.created = append(b.created, im.ID)
	}
	b.imageID = im.ID
	b.dirty = false
	b.out.say(" ---> %s", shortID(ImageID(im)))
}

// commitConfig makes the image built so far with the current
// configuration.
func (b *builder) commitConfig(ctx context.Context) error {
	im, isNew, err := b.s.Service.StepImage(ctx, b.c.AccountID, b.imageID, "", b.st.cfg,
		v1.History{CreatedBy: history(b.last, false), Author: b.st.author}, b.meta())
	if err != nil {
		return err
	}
	if isNew {
		b.created = append(b.created, im.ID)
	}
	b.imageID = im.ID
	b.dirty = false
	return nil
}

// removeIntermediates deletes the images the build made, but keep.
func (b *builder) removeIntermediates(keep string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range b.created {
		if id == keep {
			continue
		}
		if err := b.s.store.DeleteImage(ctx, b.c.AccountID, id); err != nil && !errdefs.Is(err, errdefs.NotFound) {
			b.s.log.Warn("remove an intermediate build image", "build", b.id, "image", id, "err", err)
		}
	}
}

// endStage records the stage built so far, by name and index, for the
// FROM and COPY --from of later stages.
func (b *builder) endStage(ctx context.Context) error {
	if b.dirty {
		if err := b.commitConfig(ctx); err != nil {
			return err
		}
	}
	b.stageImages = append(b.stageImages, b.imageID)
	if b.stage != "" {
		b.stages[b.stage] = b.imageID
	}
	return nil
}

// stageImage is the image --from names: a stage before this one (by name
// or index) or an image of the account (pulled if it has none so named).
func (b *builder) stageImage(ctx context.Context, ref string) (string, error) {
	if id, ok := b.stages[strings.ToLower(ref)]; ok {
		return id, nil
	}
	if n, err := strconv.Atoi(ref); err == nil {
		if n < 0 || n >= len(b.stageImages) {
			return "", errdefs.InvalidArgument("--from=%d: there is no stage %d before this one (stages count from 0)", n, n)
		}
		return b.stageImages[n], nil
	}
	img, err := b.s.resolveImage(ctx, b.c, ref)
	if errdefs.Is(err, errdefs.NotFound) {
		img, err = b.pull(ctx, ref)
	}
	return img.ID, err
}

// imageContext is the flattened filesystem of image id, to copy from.
func (b *builder) imageContext(ctx context.Context, id, ref string) (*buildContext, error) {
	if bc, ok := b.images[id]; ok {
		return bc, nil
	}
	rc, err := b.s.Service.ImageFilesystem(ctx, b.c.AccountID, id)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	bc, err := spoolContext(rc)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "read the files of %s", ref)
	}
	bc.from = ref
	b.images[id] = bc
	return bc, nil
}

func (b *builder) closeImages() {
	for _, bc := range b.images {
		bc.close()
	}
}

func (b *builder) from(ctx context.Context, in dockerfile.Instruction) error {
	ref, stage, err := b.st.parseFrom(in)
	if err != nil {
		return err
	}
	if b.imageID != "" {
		// A new stage: its own configuration and ARGs; the meta ARGs and
		// what was used stay.
		st := newBuildState(b.df.Escape, b.req.buildArgs)
		st.metaArgs, st.usedArgs = b.st.metaArgs, b.st.usedArgs
		b.st = st
	}
	if _, dup := b.stages[stage]; stage != "" && dup {
		return errdefs.InvalidArgument("Dockerfile line %d: the stage name %q is used twice", in.Line, stage)
	}
	b.stage = stage
	var img store.Image
	if id, ok := b.stages[strings.ToLower(ref)]; ok {
		img, err = b.s.store.GetImage(ctx, b.c.AccountID, id)
	} else if strings.EqualFold(ref, "scratch") {
		var isNew bool
		if img, isNew, err = b.s.Service.ScratchImage(ctx, b.c.AccountID, v1.Config{}); err != nil {
			return err
		}
		if isNew {
			b.created = append(b.created, img.ID)
		}
	} else if img, err = b.s.resolveImage(ctx, b.c, ref); errdefs.Is(err, errdefs.NotFound) {
		img, err = b.pull(ctx, ref)
	}
	if err != nil {
		return err
	}
	var cf v1.ConfigFile
	if len(img.Config) > 0 {
		if err := json.Unmarshal(img.Config, &cf); err != nil {
			return errdefs.Wrap(errdefs.Invalid, err, "the image %s has a configuration this builder cannot read", ref)
		}
	}
	if _, err := b.s.Service.OCIImage(ctx, img.ID); err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "the image %s has no content to build on (it is not a Docker image)", ref)
	}
	b.st.cfg = cf.Config
	if len(cf.Config.Env) == 0 {
		b.st.cfg.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	b.imageID, b.baseID, b.dirty = img.ID, img.ID, false
	b.out.say(" ---> %s", shortID(ImageID(img)))
	return nil
}

// pull brings ref into the account's images as `docker pull` does.
func (b *builder) pull(ctx context.Context, ref string) (store.Image, error) {
	b.out.say("Pulling %s", ref)
	owner := b.c.AccountID
	li, err := b.s.Service.Pull(ctx, &owner, ref, service.PullOptions{Registry: b.s.cfg.Registry})
	if err != nil {
		if errdefs.CodeOf(err) == errdefs.NotFound {
			repo, _, _ := splitRef(ref)
			return store.Image{}, errdefs.Wrap(errdefs.NotFound, err, "pull access denied for %s, repository does not exist or may require 'docker login'", repo)
		}
		return store.Image{}, err
	}
	return li.Image, nil
}

// runStep runs a RUN instruction in a build container and commits it.
func (b *builder) runStep(ctx context.Context, in dockerfile.Instruction) error {
	argv := b.st.command(in)
	if len(argv) == 0 || argv[0] == "" {
		return errdefs.InvalidArgument("Dockerfile line %d: RUN needs a command", in.Line)
	}
	env := b.st.runEnv()
	start := false
	cr := service.CreateRequest{
		Name: "build-" + b.id + "-" + strconv.Itoa(b.step), Image: b.imageID, Docker: true, Start: &start,
		Tags:       map[string]any{"sdc_docker": true, service.BuildTag: b.id},
		NodeDriver: buildDriver,
		Process: &service.ProcessSpec{Entrypoint: argv[:1], Cmd: argv[1:], Env: env, WorkingDir: b.st.cfg.WorkingDir,
			User: b.st.cfg.User, Labels: map[string]string{service.BuildTag: b.id}},
	}
	inst, _, err := b.s.Service.CreateInstance(ctx, b.c, cr)
	if err != nil {
		return err
	}
	defer b.removeContainer(inst.ID)
	b.out.say(" ---> Running in %s", shortID(ContainerID(inst.ID)))
	node, err := b.s.nodeOf(ctx, inst)
	if err != nil {
		return err
	}
	stream, err := nodes.Attach(ctx, node, inst.ID, nodeclient.AttachOptions{Stdout: true, Stderr: true})
	if err != nil {
		return err
	}
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		stdcopy.StdCopy(b.out, b.out, stream)
	}()
	defer stream.Close()
	if inst, err = b.s.Service.Start(ctx, b.c, inst.ID); err != nil {
		return err
	}
	code, msg, err := b.s.waitExit(ctx, b.c, inst, "next-exit")
	if err != nil {
		return err
	}
	select {
	case <-pumped:
	case <-time.After(5 * time.Second): // the output is drained by now, or lost
	case <-ctx.Done():
		return ctx.Err()
	}
	if code != 0 || msg != "" {
		text := strings.Join(argv, " ")
		if msg != "" && code == 0 {
			code = 127
		}
		err := errdefs.InvalidArgument("The command '%s' returned a non-zero code: %d", text, code)
		if msg != "" {
			err = errdefs.InvalidArgument("The command '%s' returned a non-zero code: %d: %s", text, code, msg)
		}
		return err
	}
	cur, err := b.s.store.GetInstance(ctx, b.c.AccountID, inst.ID)
	if err != nil {
		return err
	}
	created := history(strings.Join(argv, " "), true)
	im, isNew, err := b.s.Service.CommitInstanceNew(ctx, b.c.AccountID, cur, service.CommitOptions{Meta: b.meta(),
		Config: &b.st.cfg, CreatedBy: created, Author: b.st.author})
	if err != nil {
		return err
	}
	b.out.say(" ---> Removed intermediate container %s", shortID(ContainerID(inst.ID)))
	b.record(im, isNew)
	return nil
}

// removeContainer deletes a build container, whether or not the client is
// still there.
func (b *builder) removeContainer(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.s.Service.Delete(ctx, b.c, id); err != nil && !errdefs.Is(err, errdefs.Gone) && !errdefs.Is(err, errdefs.NotFound) {
		b.s.log.Warn("remove a build container", "build", b.id, "instance", id, "err", err)
	}
}

// copyStep runs COPY or ADD: a layer of context files.
func (b *builder) copyStep(ctx context.Context, in dockerfile.Instruction) error {
	look := b.st.lookup(true)
	bad := func(format string, args ...any) error {
		return errdefs.InvalidArgument("Dockerfile line %d: %s: %s", in.Line, in.Cmd, fmt.Sprintf(format, args...))
	}
	raw := in.Args
	if !in.JSON {
		raw = dockerfile.Fields(in.Rest, b.df.Escape)
	}
	var words []string
	for _, r := range raw {
		w, err := dockerfile.Word(r, b.df.Escape, look)
		if err != nil {
			return bad("%v", err)
		}
		words = append(words, w)
	}
	if len(words) < 2 {
		return bad("give at least one source and a destination")
	}
	o := copyOptions{cmd: in.Cmd, sources: words[:len(words)-1], now: time.Now()}
	dest := words[len(words)-1]
	isDir := strings.HasSuffix(dest, "/") || dest == "." || strings.HasSuffix(dest, "/.")
	if !path.IsAbs(dest) {
		dest = path.Join("/", b.st.cfg.WorkingDir, dest)
	}
	if isDir && !strings.HasSuffix(dest, "/") {
		dest += "/"
	}
	o.dest = dest
	if v, ok := in.Flag("chown"); ok {
		v, err := dockerfile.Word(v, b.df.Escape, look)
		if err != nil {
			return bad("%v", err)
		}
		lookup := func(file string) ([]byte, error) {
			fs, err := b.imageContext(ctx, b.imageID, "the image")
			if err != nil {
				return nil, err
			}
			return fs.readFile("etc/"+file, 1<<20)
		}
		if o.uid, o.gid, err = parseChown(v, lookup); err != nil {
			return bad("%v", err)
		}
		o.chown = true
	}
	if v, ok := in.Flag("chmod"); ok {
		m, err := strconv.ParseInt(v, 8, 32)
		if err != nil || m < 0 || m > 0o7777 {
			return bad("--chmod=%s is not an octal mode (0644)", v)
		}
		o.chmod = &m
	}
	src := b.bc
	if from, ok := in.Flag("from"); ok {
		from, err := dockerfile.Word(from, b.df.Escape, look)
		if err != nil || from == "" {
			return bad("--from needs a stage name, index or image")
		}
		id, err := b.stageImage(ctx, from)
		if err != nil {
			return err
		}
		if src, err = b.imageContext(ctx, id, from); err != nil {
			return err
		}
	}
	plan, err := src.plan(o)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp("", "flotilla-build-layer-*")
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "spool a layer")
	}
	defer os.Remove(f.Name())
	werr := src.writeLayer(o, plan, f)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		if errdefs.CodeOf(werr) == errdefs.Invalid {
			return werr
		}
		return errdefs.Wrap(errdefs.Internal, werr, "make the layer of %s", in.Cmd)
	}
	im, isNew, err := b.s.Service.StepImage(ctx, b.c.AccountID, b.imageID, f.Name(), b.st.cfg,
		v1.History{CreatedBy: history(in.Original, false), Author: b.st.author}, b.meta())
	if err != nil {
		return err
	}
	b.record(im, isNew)
	return nil
}

var _ io.Writer = (*buildOutput)(nil)

package dockerapi

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"flotilla/api/auth"
	"flotilla/api/service"
	"flotilla/oci"
)

// withEndpoint returns e talking to a second Docker endpoint over the same
// control plane, configured with cfg (same CA, same client certificates).
func (e *testEnv) withEndpoint(cfg Config) *testEnv {
	t := e.t
	t.Helper()
	ca, err := auth.NewDevCA(filepath.Dir(e.caFile))
	must(t, err)
	tlsCfg, err := ca.TLSConfig()
	must(t, err)
	caPEM, err := os.ReadFile(e.caFile)
	must(t, err)
	cfg.CAPEM, cfg.Datacenter, cfg.ConvergeTimeout = caPEM, "test-dc", 15*time.Second
	api := New(e.svc, slog.New(slog.NewTextHandler(io.Discard, nil)), cfg)
	hs := httptest.NewUnstartedServer(api.Handler())
	hs.TLS = tlsCfg
	hs.StartTLS()
	t.Cleanup(hs.Close)
	c := *e
	c.srv, c.host = hs, "tcp://"+hs.Listener.Addr().String()
	return &c
}

// tarOf returns an uncompressed tar holding files (path -> content).
func tarOf(t testing.TB, files map[string]string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for p, body := range files {
		must(t, tw.WriteHeader(&tar.Header{Name: p, Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg}))
		_, err := tw.Write([]byte(body))
		must(t, err)
	}
	must(t, tw.Close())
	return buf.Bytes()
}

// hubStandIn is an in-process OCI registry playing Docker Hub, holding
// library/busybox:latest and library/alpine:3.
func hubStandIn(t *testing.T) (url string, images map[string]v1.Image) {
	t.Helper()
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	host := reg.Listener.Addr().String()
	images = map[string]v1.Image{}
	for ref, file := range map[string]string{"library/busybox:latest": "bin/busybox", "library/alpine:3": "etc/alpine-release"} {
		img, err := oci.ImageFromLayerTars(v1.Config{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}},
			tarOf(t, map[string]string{file: ref + "\n"}))
		must(t, err)
		r, err := name.ParseReference(host + "/" + ref)
		must(t, err)
		must(t, remote.Write(r, img))
		images[ref] = img
	}
	return "http://" + host, images
}

func TestDockerImageOperations(t *testing.T) {
	base := newTestEnv(t)
	base.svc.SetBlobs(mustDirStore(t))
	base.svc.SetImagePolicy(service.ImagePolicy{RegistryAllowPrivate: true}) // the stand-in listens on loopback
	hub, imgs := hubStandIn(t)
	e := base.withEndpoint(Config{Registry: hub})
	bbDigest, err := imgs["library/busybox:latest"].Digest()
	must(t, err)
	bbConfig, err := imgs["library/busybox:latest"].ConfigName()
	must(t, err)
	bbID := bbConfig.String()

	t.Run("Pull", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "pull", "busybox")
		for _, want := range []string{"latest: Pulling from library/busybox", "Pull complete", "Digest: " + bbDigest.String(),
			"Status: Downloaded newer image for busybox:latest", "docker.io/library/busybox:latest"} {
			if !strings.Contains(out, want) {
				t.Errorf("docker pull lacks %q:\n%s", want, out)
			}
		}
		if out := e.ok("alice", "pull", "docker.io/library/busybox:latest"); !strings.Contains(out, "Status: Image is up to date for busybox:latest") {
			t.Errorf("second pull:\n%s", out)
		}
	})
	t.Run("ErrPullNotFound", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 1, "pull access denied for nosuch", "pull", "nosuch")
	})
	t.Run("ListAndInspect", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "images", "--digests", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}} {{.ID}}")
		if want := "busybox:latest " + bbDigest.String() + " " + bbID + "\n"; !strings.Contains(out, want) {
			t.Errorf("docker images lacks %q:\n%s", want, out)
		}
		if strings.Count(out, "busybox:latest") != 1 {
			t.Errorf("busybox:latest listed more than once (the shared busybox:1.36 must not claim it):\n%s", out)
		}
		out = e.ok("alice", "image", "inspect", "--format", "{{json .RepoTags}} {{json .RepoDigests}} {{.Id}} {{index .Config.Cmd 0}}", "busybox")
		if want := `["busybox:latest"] ["busybox@` + bbDigest.String() + `"] ` + bbID + " sh\n"; out != want {
			t.Errorf("image inspect: %q, want %q", out, want)
		}
		if out := e.ok("alice", "history", "--no-trunc", "--format", "{{.ID}}", "busybox"); !strings.HasPrefix(out, bbID+"\n") {
			t.Errorf("history: %q", out)
		}
	})
	t.Run("OtherAccountCannotSee", func(t *testing.T) {
		e := e.with(t)
		if out := e.ok("bob", "images", "-q", "--no-trunc"); strings.Contains(out, bbID) {
			t.Fatalf("bob sees alice's pulled image: %q", out)
		}
		e.fails("bob", 1, "No such image: "+bbID, "image", "inspect", bbID)
		e.fails("bob", 1, "No such image", "tag", bbID, "mine:1")
		e.fails("bob", 1, "No such image", "rmi", bbID)
		e.fails("bob", 1, "No such image", "save", "-o", filepath.Join(t.TempDir(), "x.tar"), bbID)
	})
	t.Run("TagAndUntag", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "tag", "busybox", "registry.example.com/team/box:1")
		out := e.ok("alice", "image", "inspect", "--format", "{{json .RepoTags}} {{len .RepoDigests}}", "registry.example.com/team/box:1")
		if out != `["busybox:latest","registry.example.com/team/box:1"] 2`+"\n" {
			t.Fatalf("after tag: %q", out)
		}
		if out := e.ok("alice", "rmi", "registry.example.com/team/box:1"); out != "Untagged: registry.example.com/team/box:1\n" {
			t.Fatalf("rmi of one of two tags: %q", out)
		}
		e.fails("alice", 1, "No such image: registry.example.com/team/box:1", "image", "inspect", "registry.example.com/team/box:1")
	})
	t.Run("RunPullsMissingImage", func(t *testing.T) {
		e := e.with(t)
		out, errOut, code := e.run("alice", "run", "-d", "--name", "auto", "alpine:3", "sleep", "1000")
		if code != 0 || !strings.Contains(errOut, "Unable to find image 'alpine:3' locally") || !fullID.MatchString(strings.TrimSpace(out)) {
			t.Fatalf("run with a missing image: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
	})
	t.Run("ErrRmiInUse", func(t *testing.T) {
		e := e.with(t)
		cid := strings.TrimSpace(e.ok("alice", "inspect", "--format", "{{.Id}}", "auto"))
		iid := strings.TrimSpace(e.ok("alice", "image", "inspect", "--format", "{{.Id}}", "alpine:3"))
		short := strings.TrimPrefix(iid, "sha256:")[:12]
		e.fails("alice", 1, `conflict: unable to remove repository reference "alpine:3" (must force) - container `+cid[:12]+` is using its referenced image `+short, "rmi", "alpine:3")
		e.fails("alice", 1, "conflict: unable to delete "+short+" (cannot be forced) - image is being used by running container "+cid[:12], "rmi", "-f", iid)
		e.ok("alice", "rm", "-f", "auto")
		deadline := time.Now().Add(15 * time.Second)
		for {
			out, errOut, code := e.run("alice", "rmi", "alpine:3")
			if code == 0 {
				if !strings.Contains(out, "Untagged: alpine:3\n") || !strings.Contains(out, "Deleted: "+iid+"\n") {
					t.Fatalf("rmi alpine:3: %q", out)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("rmi after the container went: %s", errOut)
			}
			time.Sleep(200 * time.Millisecond)
		}
		e.fails("alice", 1, "No such image: alpine:3", "image", "inspect", "alpine:3")
	})
	t.Run("ErrRmiShared", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 1, "shared by its accounts; it cannot be removed", "rmi", "busybox:1.36")
	})
	t.Run("SaveRmiLoad", func(t *testing.T) {
		e := e.with(t)
		f := filepath.Join(t.TempDir(), "busybox.tar")
		e.ok("alice", "save", "-o", f, "busybox")
		out := e.ok("alice", "rmi", "busybox")
		if !strings.Contains(out, "Untagged: busybox:latest\n") || !strings.Contains(out, "Deleted: "+bbID+"\n") {
			t.Fatalf("rmi busybox: %q", out)
		}
		if out := e.ok("alice", "images", "-q", "--no-trunc"); strings.Contains(out, bbID) {
			t.Fatalf("the image is still listed after rmi: %q", out)
		}
		if out := e.ok("alice", "load", "-i", f); out != "Loaded image: busybox:latest\n" {
			t.Fatalf("load: %q", out)
		}
		if out := e.ok("alice", "image", "inspect", "--format", "{{.Id}} {{json .RepoTags}}", "busybox:latest"); out != bbID+` ["busybox:latest"]`+"\n" {
			t.Fatalf("after load: %q", out)
		}
		// bob loads the same archive: his own copy, alice's tags untouched.
		if out := e.ok("bob", "load", "-i", f); out != "Loaded image: busybox:latest\n" {
			t.Fatalf("bob's load: %q", out)
		}
		e.ok("bob", "rmi", "busybox:latest")
		e.ok("alice", "image", "inspect", "busybox:latest")
	})
	t.Run("Import", func(t *testing.T) {
		e := e.with(t)
		f := filepath.Join(t.TempDir(), "rootfs.tar")
		must(t, os.WriteFile(f, tarOf(t, map[string]string{"etc/motd": "hello\n"}), 0o644))
		out := strings.TrimSpace(e.ok("alice", "import", "-c", `CMD ["/bin/sh"]`, "-c", "ENV A=b", "-m", "my rootfs", f, "imp:1"))
		if !strings.HasPrefix(out, "sha256:") || len(out) != 71 {
			t.Fatalf("import printed %q, want an image id", out)
		}
		got := e.ok("alice", "image", "inspect", "--format", "{{.Id}} {{json .RepoTags}} {{json .Config.Cmd}} {{json .Config.Env}} {{.Comment}}", "imp:1")
		if want := out + ` ["imp:1"] ["/bin/sh"] ["A=b"] my rootfs` + "\n"; got != want {
			t.Fatalf("imported image: %q, want %q", got, want)
		}
		// From stdin, untagged: a dangling image.
		cmd := e.cmd("alice", "import", "-")
		cmd.Stdin = bytes.NewReader(tarOf(t, map[string]string{"etc/other": "x\n"}))
		b, err := cmd.Output()
		must(t, err)
		id := strings.TrimSpace(string(b))
		if out := e.ok("alice", "images", "--filter", "dangling=true", "-q", "--no-trunc"); out != id+"\n" {
			t.Fatalf("dangling images: %q, want %s", out, id)
		}
		e.fails("alice", 1, "not a valid tar archive", "import", filepath.Join("testdata", "..", "images_test.go"))
		e.fails("alice", 1, "is not a valid change command for import", "import", "-c", "RUN true", f)
	})
	t.Run("ResponsesMatchEngineSpec", func(t *testing.T) {
		spec := loadEngineSpec(t)
		c := e.client("alice")
		do := func(method, path string) []byte {
			req, err := http.NewRequestWithContext(context.Background(), method, e.srv.URL+"/v1.51"+path, nil)
			must(t, err)
			resp, err := c.Do(req)
			must(t, err)
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
			}
			return b
		}
		e.ok("alice", "tag", "busybox", "spec:1")
		checkBody(t, spec, "GET", "/images/json", 200, do("GET", "/images/json"))
		checkBody(t, spec, "GET", "/images/{name}/json", 200, do("GET", "/images/busybox/json"))
		checkBody(t, spec, "GET", "/images/{name}/history", 200, do("GET", "/images/busybox/history"))
		checkBody(t, spec, "DELETE", "/images/{name}", 200, do("DELETE", "/images/spec:1"))
	})
}

func mustDirStore(t *testing.T) *oci.DirStore {
	t.Helper()
	d, err := oci.NewDirStore(t.TempDir())
	must(t, err)
	return d
}

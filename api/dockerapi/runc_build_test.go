package dockerapi

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"flotilla/api/service"
	"flotilla/store"
)

// writeContext writes a build context directory of name -> content files
// (a name ending in "*" is made executable, without the star).
func writeContext(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, "*") {
			name, mode = strings.TrimSuffix(name, "*"), 0o755
		}
		p := filepath.Join(dir, name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(content), mode))
	}
	return dir
}

// TestRuncBuild drives `docker build` (the CLI's classic builder) against
// a runc node: ARG, ENV, WORKDIR, COPY, RUN, USER, LABEL, EXPOSE,
// ENTRYPOINT and CMD; the image runs with docker run, has the Dockerfile's
// configuration, is the FROM of another build, and is not another
// account's to see; a failing RUN fails the build with dockerd's message.
func TestRuncBuild(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	ctxDir := writeContext(t, map[string]string{
		"Dockerfile": `# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM $BASE
ARG GREETING=hello
# environment of the image
ENV APP_HOME=/app \
    MODE=prod
WORKDIR $APP_HOME
COPY files/ ./files/
COPY run.sh /usr/local/bin/
COPY . /ctx/
RUN echo "$GREETING from $MODE" > greeting.txt && \
    cat files/a.txt >> greeting.txt && \
    chown -R 1000:1000 /app
RUN ["/bin/sh", "-c", "echo exec form > /app/exec.txt"]
USER 1000
LABEL team=infra "org.example.version"="1.0"
EXPOSE 8080 53/udp
ENTRYPOINT ["/usr/local/bin/run.sh"]
CMD ["greeting.txt"]
`,
		"run.sh*":       "#!/bin/sh\necho \"user $(id -u) in $(pwd)\"\ncat \"$@\"\n",
		"files/a.txt":   "from the context\n",
		"files/sub/b":   "b\n",
		"secret.txt":    "never sent\n",
		".dockerignore": "secret.txt\n",
	})
	t0 := time.Now()
	out := e.ok("alice", "build", "-t", "mine/app:v1", "-t", "mine/app:latest", "--build-arg", "GREETING=bonjour",
		"--label", "built=yes", ctxDir)
	t.Logf("figure: docker build of 14 steps (2 RUN, 3 COPY) on a runc node took %s", time.Since(t0).Round(time.Millisecond))
	for _, want := range []string{"Step 1/14 : FROM $BASE", "Step 8/14 : RUN echo \"$GREETING from $MODE\"", " ---> Running in ",
		"Successfully built ", "Successfully tagged mine/app:v1", "Successfully tagged mine/app:latest"} {
		if !strings.Contains(out, want) {
			t.Errorf("docker build output lacks %q:\n%s", want, out)
		}
	}
	ev := e.ok("alice", "events", "--since", t0.Add(-time.Second).Format(time.RFC3339), "--until", time.Now().Add(time.Second).Format(time.RFC3339),
		"--filter", "type=image", "--filter", "event=tag", "--format", "{{.Actor.Attributes.name}}")
	if ev != "mine/app:v1\nmine/app:latest\n" {
		t.Errorf("docker events of the build's tags: %q", ev)
	}
	if got := e.ok("alice", "run", "--rm", "mine/app:v1"); got != "user 1000 in /app\nbonjour from prod\nfrom the context\n" {
		t.Errorf("docker run of the built image printed %q", got)
	}
	if got := e.ok("alice", "run", "--rm", "--entrypoint", "sh", "mine/app:latest", "-c",
		"cat exec.txt; ls -A /ctx; ls /ctx/files/sub; echo $GREETING; stat -c '%a %u' /usr/local/bin/run.sh"); got !=
		"exec form\n.dockerignore\nDockerfile\nfiles\nrun.sh\nb\n\n755 0\n" {
		t.Errorf("the built image's files: %q", got)
	}
	var cfg struct {
		ID     string `json:"Id"`
		Config struct {
			Env          []string
			Labels       map[string]string
			WorkingDir   string
			User         string
			Entrypoint   []string
			Cmd          []string
			ExposedPorts map[string]struct{}
		}
	}
	must(t, json.Unmarshal([]byte(e.ok("alice", "image", "inspect", "-f", "{{json .}}", "mine/app:v1")), &cfg))
	c := cfg.Config
	if !slices.Contains(c.Env, "APP_HOME=/app") || !slices.Contains(c.Env, "MODE=prod") ||
		slices.ContainsFunc(c.Env, func(e string) bool { return strings.HasPrefix(e, "GREETING=") }) {
		t.Errorf("built image Env %q: want APP_HOME and MODE, and no build argument", c.Env)
	}
	if c.Labels["team"] != "infra" || c.Labels["org.example.version"] != "1.0" || c.Labels["built"] != "yes" {
		t.Errorf("built image labels %v", c.Labels)
	}
	if c.WorkingDir != "/app" || c.User != "1000" || !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/run.sh"}) ||
		!slices.Equal(c.Cmd, []string{"greeting.txt"}) {
		t.Errorf("built image config %+v", c)
	}
	if _, ok := c.ExposedPorts["8080/tcp"]; !ok || len(c.ExposedPorts) != 2 {
		t.Errorf("built image ExposedPorts %v", c.ExposedPorts)
	}
	// Build containers are gone, intermediate images too.
	if ps := e.ok("alice", "ps", "-a", "-q"); ps != "" {
		t.Errorf("docker ps -a after the build: %q", ps)
	}
	images := e.ok("alice", "images", "-a", "--format", "{{.Repository}}:{{.Tag}}")
	if lines := strings.Fields(images); len(lines) != 3 || !slices.Contains(lines, "mine/app:v1") || strings.Contains(images, "<none>") {
		t.Errorf("docker images -a after the build:\n%s", images)
	}
	if _, _, code := e.run("bob", "image", "inspect", "mine/app:v1"); code == 0 {
		t.Errorf("bob sees alice's built image")
	}

	t.Run("FromBuiltImage", func(t *testing.T) {
		e := e.with(t)
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM mine/app:v1\nUSER 0\nRUN cp greeting.txt /copy.txt\nCMD [\"/copy.txt\"]\n"})
		e.ok("alice", "build", "-q", "-t", "mine/child", dir)
		if got := e.ok("alice", "run", "--rm", "mine/child"); got != "user 0 in /app\nbonjour from prod\nfrom the context\n" {
			t.Errorf("docker run of the child image printed %q", got)
		}
	})

	t.Run("MultiStage", func(t *testing.T) {
		e := e.with(t)
		dir := writeContext(t, map[string]string{
			"Dockerfile": `FROM busybox AS builder
WORKDIR /src
COPY files/ ./
RUN echo built > out.txt && cat a.txt >> out.txt
FROM builder AS second
RUN echo second > /second.txt
FROM busybox
COPY --from=builder /src/out.txt /final/
COPY --from=1 /second.txt /src/a.txt /final/
CMD ["cat", "/final/out.txt", "/final/second.txt", "/final/a.txt"]
`,
			"files/a.txt": "from the context\n",
		})
		t0 := time.Now()
		e.ok("alice", "build", "-t", "mine/multi", dir)
		t.Logf("figure: docker build of 3 stages (2 RUN, 3 COPY) took %s", time.Since(t0).Round(time.Millisecond))
		if got := e.ok("alice", "run", "--rm", "mine/multi"); got != "built\nfrom the context\nsecond\nfrom the context\n" {
			t.Errorf("docker run of the multi-stage image printed %q", got)
		}
		if got := e.ok("alice", "run", "--rm", "mine/multi", "sh", "-c", "test -e /src && echo present; true"); got != "" {
			t.Errorf("the final stage has the first stage's files: %q", got)
		}
		e.ok("alice", "build", "--target", "builder", "-t", "mine/stage", dir)
		if got := e.ok("alice", "run", "--rm", "mine/stage", "cat", "out.txt"); got != "built\nfrom the context\n" {
			t.Errorf("docker run of the --target image printed %q", got)
		}
		if images := e.ok("alice", "images", "-a", "--format", "{{.Repository}}:{{.Tag}}"); strings.Contains(images, "<none>") {
			t.Errorf("multi-stage builds left intermediate images:\n%s", images)
		}
	})

	t.Run("WorkdirAndAddArchive", func(t *testing.T) {
		e := e.with(t)
		dir := writeContext(t, map[string]string{"pkg.tar.gz": archiveData(),
			"Dockerfile": "FROM busybox\nWORKDIR /made/here\nRUN pwd > /pwd.txt\nWORKDIR /only/config\nADD pkg.tar.gz /opt/\n" +
				"COPY --chown=nobody:nogroup --chmod=600 Dockerfile /owned\n" +
				"RUN cat /opt/top/f.txt > unpacked.txt && stat -c '%a %u' /opt/top/f.txt /owned >> unpacked.txt\nCMD pwd\n"})
		e.ok("alice", "build", "-t", "mine/wd", dir)
		if got := e.ok("alice", "run", "--rm", "mine/wd", "cat", "unpacked.txt"); got != "f\n600 33\n600 65534\n" {
			t.Errorf("ADD of a gzip'd tar: %q", got)
		}
		if got := e.ok("alice", "run", "--rm", "mine/wd"); got != "/only/config\n" {
			t.Errorf("docker run in the image's WORKDIR printed %q", got)
		}
		if got := e.ok("alice", "run", "--rm", "mine/wd", "cat", "/pwd.txt"); got != "/made/here\n" {
			t.Errorf("RUN in a WORKDIR made by the build printed %q", got)
		}
	})

	t.Run("Scratch", func(t *testing.T) {
		e := e.with(t)
		bb, err := os.ReadFile("/bin/busybox")
		must(t, err)
		dir := writeContext(t, map[string]string{"busybox*": string(bb),
			"Dockerfile": "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\nCMD [\"echo\", \"from scratch\"]\n"})
		e.ok("alice", "build", "-t", "mine/scratch", dir)
		if got := e.ok("alice", "run", "--rm", "mine/scratch"); got != "from scratch\n" {
			t.Errorf("docker run of a FROM scratch image printed %q", got)
		}
	})

	t.Run("FailingRun", func(t *testing.T) {
		e := e.with(t)
		before := e.ok("alice", "images", "-a", "-q")
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM busybox\nRUN echo before\nRUN echo failing && false\nRUN echo never\n"})
		out, errOut, code := e.run("alice", "build", dir)
		if code != 1 || !strings.Contains(errOut+out, "The command '/bin/sh -c echo failing && false' returned a non-zero code: 1") {
			t.Errorf("a failing RUN: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		if !strings.Contains(out, "failing\n") || strings.Contains(out, "never") {
			t.Errorf("a failing RUN's output:\n%s", out)
		}
		if ps := e.ok("alice", "ps", "-a", "-q"); ps != "" {
			t.Errorf("docker ps -a after a failed build: %q", ps)
		}
		if after := e.ok("alice", "images", "-a", "-q"); after != before {
			t.Errorf("a failed build left images:\n%s\nbefore:\n%s", after, before)
		}
	})

	t.Run("ClientLeaves", func(t *testing.T) {
		e := e.with(t)
		body := contextTar(t, []ctxEntry{{name: "Dockerfile", typ: tar.TypeReg, mode: 0o644,
			data: "FROM busybox\nRUN echo started && sleep 60\n"}}, false)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.srv.URL+"/v1.47/build?t=mine/never", body)
		must(t, err)
		req.Header.Set("Content-Type", "application/x-tar")
		resp, err := e.client("alice").Do(req)
		must(t, err)
		sc := bufio.NewScanner(resp.Body)
		var seen []string
		for sc.Scan() && !strings.Contains(sc.Text(), `"started\n"`) {
			seen = append(seen, sc.Text())
		}
		if sc.Err() != nil || len(seen) == 0 || !strings.Contains(strings.Join(seen, "\n"), "Running in") {
			t.Fatalf("the build never ran its step: %v\n%s", sc.Err(), strings.Join(seen, "\n"))
		}
		acct, err := e.st.AccountByLogin(context.Background(), "alice")
		must(t, err)
		running, err := e.st.ListInstances(context.Background(), acct.ID, store.InstanceFilter{})
		must(t, err)
		if len(running) != 1 || running[0].Tags[service.BuildTag] == nil {
			t.Fatalf("while the step runs, alice has %d instances, want its build container", len(running))
		}
		if ps := e.ok("alice", "ps", "-a", "-q"); ps != "" {
			t.Errorf("docker ps -a lists the build container: %q", ps)
		}
		cancel()
		resp.Body.Close()
		deadline := time.Now().Add(30 * time.Second)
		for {
			list, err := e.st.ListInstances(context.Background(), acct.ID, store.InstanceFilter{})
			must(t, err)
			left := 0
			for _, in := range list {
				if _, ok := in.Tags[service.BuildTag]; ok {
					left++
				}
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d build containers still there 30 s after the client left", left)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if _, _, code := e.run("alice", "image", "inspect", "mine/never"); code == 0 {
			t.Errorf("a build whose client left tagged its image")
		}
	})

	t.Run("Refused", func(t *testing.T) {
		e := e.with(t)
		for _, tc := range []struct{ dockerfile, msg string }{
			{"FROM busybox\nFROBNICATE x\n", "unknown instruction: FROBNICATE"},
			{"FROM busybox AS a\nFROM busybox\nCOPY --from=a /nosuch /x\n", "/nosuch not found in a"},
			{"FROM busybox\nCOPY --from=3 /bin /x\n", "there is no stage 3"},
			{"FROM busybox\nCOPY ../x /x\n", "forbidden path outside the build context"},
			{"FROM busybox\nCOPY nosuch /x\n", "file not found in build context"},
			{"FROM busybox\nADD https://example.com/x /x\n", "adding from a URL"},
			{"FROM busybox\nONBUILD RUN true\n", "ONBUILD is not supported"},
			{"RUN true\n", "a Dockerfile must start with FROM"},
		} {
			dir := writeContext(t, map[string]string{"Dockerfile": tc.dockerfile})
			e.fails("alice", 1, tc.msg, "build", dir)
		}
	})
}

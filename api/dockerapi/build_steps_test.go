package dockerapi

import (
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/api/dockerapi/dockerfile"
)

// stateAfter runs the ARG and configuration instructions of src (a
// single-stage Dockerfile) on a fresh state, as the builder does.
func stateAfter(t *testing.T, src string, base v1.Config, buildArgs map[string]*string) (*buildState, error) {
	t.Helper()
	df, err := dockerfile.Parse(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	if buildArgs == nil {
		buildArgs = map[string]*string{}
	}
	b := newBuildState(df.Escape, buildArgs)
	inStage := false
	for _, in := range df.Instructions {
		switch {
		case in.Cmd == "ARG":
			err = b.arg(in, inStage)
		case in.Cmd == "FROM":
			if _, _, err = b.parseFrom(in); err == nil {
				inStage, b.cfg = true, base
			}
		default:
			var ok bool
			if ok, err = b.applyConfig(in); err == nil && !ok {
				t.Fatalf("%s is not a configuration instruction", in.Cmd)
			}
		}
		if err != nil {
			return b, err
		}
	}
	return b, nil
}

func strp(s string) *string { return &s }

func TestBuildConfigInstructions(t *testing.T) {
	base := v1.Config{Env: []string{"PATH=/bin", "KEEP=1"}, Cmd: []string{"sh"}, Labels: map[string]string{"from": "base"}}
	b, err := stateAfter(t, `ARG TAG=1
FROM busybox:$TAG
ARG TAG
ARG USERNAME=nobody
ARG UNSET
ENV PATH=/opt/bin:$PATH A="x y" B=${TAG}
ENV LEGACY some words
WORKDIR /srv
WORKDIR app/$USERNAME
USER $USERNAME
LABEL a=1 "b c"="d e"
EXPOSE 80 53/udp 1000-1002/tcp
ENTRYPOINT ["/entry"]
STOPSIGNAL SIGINT
VOLUME ["/data", "/logs"]
VOLUME /more
SHELL ["/bin/bash", "-c"]
HEALTHCHECK --interval=5s --retries=2 CMD curl -f http://localhost/
MAINTAINER someone
`, base, map[string]*string{"USERNAME": strp("app"), "EXTRA": strp("x")})
	if err != nil {
		t.Fatal(err)
	}
	c := b.cfg
	wantEnv := []string{"PATH=/opt/bin:/bin", "KEEP=1", "A=x y", "B=1", "LEGACY=some words"}
	if !slices.Equal(c.Env, wantEnv) {
		t.Errorf("Env %q, want %q", c.Env, wantEnv)
	}
	if c.WorkingDir != "/srv/app/app" || c.User != "app" {
		t.Errorf("WorkingDir %q User %q", c.WorkingDir, c.User)
	}
	if c.Labels["a"] != "1" || c.Labels["b c"] != "d e" || c.Labels["from"] != "base" || base.Labels["a"] != "" {
		t.Errorf("Labels %v (base's %v)", c.Labels, base.Labels)
	}
	for _, p := range []string{"80/tcp", "53/udp", "1000-1002/tcp"} {
		if _, ok := c.ExposedPorts[p]; !ok {
			t.Errorf("ExposedPorts %v lacks %s", c.ExposedPorts, p)
		}
	}
	if !slices.Equal(c.Entrypoint, []string{"/entry"}) || c.Cmd != nil {
		t.Errorf("ENTRYPOINT keeps the base image's CMD: Entrypoint %q Cmd %q", c.Entrypoint, c.Cmd)
	}
	if c.StopSignal != "SIGINT" || len(c.Volumes) != 3 || !slices.Equal(c.Shell, []string{"/bin/bash", "-c"}) {
		t.Errorf("StopSignal %q Volumes %v Shell %q", c.StopSignal, c.Volumes, c.Shell)
	}
	if hc := c.Healthcheck; hc == nil || !slices.Equal(hc.Test, []string{"CMD-SHELL", "curl -f http://localhost/"}) ||
		hc.Interval != 5*time.Second || hc.Retries != 2 {
		t.Errorf("Healthcheck %+v", c.Healthcheck)
	}
	if b.author != "someone" {
		t.Errorf("MAINTAINER: author %q", b.author)
	}
	// RUN sees the ARGs with values that ENV does not set; the image does not.
	env := b.runEnv()
	if !slices.Contains(env, "USERNAME=app") || !slices.Contains(env, "TAG=1") || slices.ContainsFunc(env, func(e string) bool {
		return strings.HasPrefix(e, "UNSET=")
	}) {
		t.Errorf("RUN environment %q", env)
	}
	if got := b.unusedArgs(); !slices.Equal(got, []string{"EXTRA"}) {
		t.Errorf("unused build args %q", got)
	}
	if got := b.command(dockerfile.Instruction{Cmd: "RUN", Rest: "echo hi"}); !slices.Equal(got, []string{"/bin/bash", "-c", "echo hi"}) {
		t.Errorf("shell-form RUN after SHELL: %q", got)
	}
}

func TestBuildCmdThenEntrypoint(t *testing.T) {
	b, err := stateAfter(t, "FROM x\nCMD [\"a\"]\nENTRYPOINT echo\n", v1.Config{Cmd: []string{"base"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(b.cfg.Cmd, []string{"a"}) || !slices.Equal(b.cfg.Entrypoint, []string{"/bin/sh", "-c", "echo"}) {
		t.Errorf("CMD then ENTRYPOINT: Cmd %q Entrypoint %q", b.cfg.Cmd, b.cfg.Entrypoint)
	}
	b, err = stateAfter(t, "FROM x\nHEALTHCHECK NONE\n", v1.Config{}, nil)
	if err != nil || b.cfg.Healthcheck == nil || !slices.Equal(b.cfg.Healthcheck.Test, []string{"NONE"}) {
		t.Errorf("HEALTHCHECK NONE: %+v %v", b.cfg.Healthcheck, err)
	}
	b, err = stateAfter(t, "FROM x\nHEALTHCHECK CMD [\"/check\", \"-q\"]\n", v1.Config{}, nil)
	if err != nil || b.cfg.Healthcheck == nil || !slices.Equal(b.cfg.Healthcheck.Test, []string{"CMD", "/check", "-q"}) {
		t.Errorf("HEALTHCHECK exec form: %+v %v", b.cfg.Healthcheck, err)
	}
}

func TestBuildArgsBeforeFrom(t *testing.T) {
	df, err := dockerfile.Parse(strings.NewReader("ARG IMG=busybox\nARG V\nFROM ${IMG}:${V:-latest} AS Build\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := newBuildState('\\', map[string]*string{"V": strp("1.36")})
	must(t, b.arg(df.Instructions[0], false))
	must(t, b.arg(df.Instructions[1], false))
	img, stage, err := b.parseFrom(df.Instructions[2])
	if err != nil || img != "busybox:1.36" || stage != "build" {
		t.Errorf("FROM = %q AS %q, %v", img, stage, err)
	}
}

func TestBuildConfigErrors(t *testing.T) {
	for name, src := range map[string]string{
		"ErrExposeProto":    "FROM x\nEXPOSE 80/xyz\n",
		"ErrExposePort":     "FROM x\nEXPOSE http\n",
		"ErrStopSignal":     "FROM x\nSTOPSIGNAL NOPE\n",
		"ErrShellNotJSON":   "FROM x\nSHELL /bin/bash -c\n",
		"ErrEnvNoValue":     "FROM x\nENV ONLY\n",
		"ErrLabelPair":      "FROM x\nLABEL a=1 b\n",
		"ErrHealthInterval": "FROM x\nHEALTHCHECK --interval=soon CMD true\n",
		"ErrHealthOption":   "FROM x\nHEALTHCHECK --bogus=1 CMD true\n",
		"ErrHealthForm":     "FROM x\nHEALTHCHECK true\n",
		"ErrFromPlatform":   "FROM --platform=windows/amd64 x\n",
		"ErrFromWords":      "FROM x y z w\n",
		"ErrFromEmpty":      "ARG NONE\nFROM $NONE\n",
		"ErrArgName":        "FROM x\nARG BAD-NAME\n",
		"ErrUnsetRequired":  "FROM x\nWORKDIR ${NOPE:?must be set}\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := stateAfter(t, src, v1.Config{}, nil); err == nil {
				t.Errorf("%q was accepted", src)
			}
		})
	}
}

func TestCheckDockerfile(t *testing.T) {
	parse := func(src string) *dockerfile.File {
		df, err := dockerfile.Parse(strings.NewReader(src))
		must(t, err)
		return df
	}
	steps, hasRun, err := checkDockerfile(parse("ARG A\nFROM x\nENV B=1\nRUN true\n"), "")
	if err != nil || steps != 3 || !hasRun {
		t.Errorf("checkDockerfile = %d, %v, %v", steps, hasRun, err)
	}
	if _, hasRun, err := checkDockerfile(parse("FROM x\nCOPY a /b\n"), ""); err != nil || hasRun {
		t.Errorf("a build without RUN: %v %v", hasRun, err)
	}
	for name, src := range map[string]string{
		"ErrNoFrom":   "ARG A\n",
		"ErrEnvFirst": "ENV A=1\nFROM x\n",
		"ErrAddFrom":  "FROM x\nADD --from=y /a /b\n",
		"ErrRunMount": "FROM x\nRUN --mount=type=cache,target=/c true\n",
		"ErrOnbuild":  "FROM x\nONBUILD RUN true\n",
		"ErrCopyFlag": "FROM x\nCOPY --parents a /b\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, _, err := checkDockerfile(parse(src), ""); err == nil {
				t.Errorf("%q was accepted", src)
			}
		})
	}
	if _, _, err := checkDockerfile(parse("FROM x\n"), "stage"); err == nil {
		t.Errorf("--target of a stage that does not exist was accepted")
	}
	multi := parse("FROM x AS One\nRUN a\nFROM y AS two\nCOPY --from=one /a /b\nRUN b\nFROM z\nENV A=1\n")
	if steps, hasRun, err := checkDockerfile(multi, ""); err != nil || steps != 7 || !hasRun {
		t.Errorf("multi-stage: %d steps, %v, %v", steps, hasRun, err)
	}
	if steps, _, err := checkDockerfile(multi, "ONE"); err != nil || steps != 2 {
		t.Errorf("--target one: %d steps, %v", steps, err)
	}
	if steps, _, err := checkDockerfile(multi, "two"); err != nil || steps != 5 {
		t.Errorf("--target two: %d steps, %v", steps, err)
	}
}

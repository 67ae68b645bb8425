package dockerapi

// What each Dockerfile instruction does to the image being built, apart
// from the work of RUN, COPY and ADD (build.go, build_copy.go): the
// configuration instructions, ARG scoping and build arguments, and the
// argument forms of FROM, RUN, CMD and ENTRYPOINT. Pure functions of the
// build's state, so that they are tested without a node.

import (
	"encoding/json"
	"fmt"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/api/dockerapi/dockerfile"
	"flotilla/api/errdefs"
)

const hostArch = runtime.GOARCH

// buildState is the state of the stage being built.
type buildState struct {
	escape rune
	cfg    v1.Config
	author string
	// metaArgs are the ARGs declared before the first FROM (their values).
	metaArgs map[string]*string
	// args are the ARGs declared in this stage, with their values (nil:
	// declared without a value).
	args map[string]*string
	// buildArgs are --build-arg values (nil: take it from the environment
	// of the client, which the CLI already did, so unset).
	buildArgs map[string]*string
	usedArgs  map[string]bool
	// cmdSet is whether this stage set CMD (an ENTRYPOINT then keeps it).
	cmdSet bool
}

func newBuildState(escape rune, buildArgs map[string]*string) *buildState {
	return &buildState{escape: escape, metaArgs: map[string]*string{}, args: map[string]*string{},
		buildArgs: buildArgs, usedArgs: map[string]bool{}}
}

// lookup resolves a variable: the stage's environment first, then its
// ARGs; before FROM, the meta ARGs.
func (b *buildState) lookup(inStage bool) dockerfile.Lookup {
	return func(name string) (string, bool) {
		if inStage {
			for i := len(b.cfg.Env) - 1; i >= 0; i-- {
				if k, v, _ := strings.Cut(b.cfg.Env[i], "="); k == name {
					return v, true
				}
			}
			if v, ok := b.args[name]; ok && v != nil {
				return *v, true
			}
			return "", false
		}
		if v, ok := b.metaArgs[name]; ok && v != nil {
			return *v, true
		}
		return "", false
	}
}

// arg applies an ARG instruction: inside a stage (inStage) or before the
// first FROM.
func (b *buildState) arg(in dockerfile.Instruction, inStage bool) error {
	pairs, err := dockerfile.Args(in.Rest, b.escape, b.lookup(inStage))
	if err != nil {
		return errdefs.InvalidArgument("line %d: %v", in.Line, err)
	}
	for _, p := range pairs {
		var val *string
		if p.HasValue {
			v := p.Value
			val = &v
		}
		if inStage && !p.HasValue {
			if mv, ok := b.metaArgs[p.Key]; ok {
				val = mv // the meta ARG's value, re-declared in the stage
			}
		}
		if bv, ok := b.buildArgs[p.Key]; ok && bv != nil {
			v := *bv
			val = &v
		}
		b.usedArgs[p.Key] = true
		if inStage {
			b.args[p.Key] = val
		} else {
			b.metaArgs[p.Key] = val
		}
	}
	return nil
}

// unusedArgs lists the build arguments no ARG declared, sorted.
func (b *buildState) unusedArgs() []string {
	var out []string
	for k := range b.buildArgs {
		if !b.usedArgs[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// runEnv is the environment of a RUN step: the image's, plus the stage's
// ARGs that have values and are not set by ENV.
func (b *buildState) runEnv() []string {
	env := append([]string(nil), b.cfg.Env...)
	keys := make([]string, 0, len(b.args))
	for k := range b.args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := b.args[k]
		if v == nil {
			continue
		}
		if slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") }) {
			continue
		}
		env = append(env, k+"="+*v)
	}
	return env
}

// shell is the shell of shell-form commands.
func (b *buildState) shell() []string {
	if len(b.cfg.Shell) > 0 {
		return b.cfg.Shell
	}
	return []string{"/bin/sh", "-c"}
}

// command is the argv of RUN, CMD or ENTRYPOINT: the JSON array, or the
// shell with the text.
func (b *buildState) command(in dockerfile.Instruction) []string {
	if in.JSON {
		return append([]string{}, in.Args...)
	}
	return append(append([]string{}, b.shell()...), in.Rest)
}

// parseFrom reads FROM's arguments: the image and the stage name of
// "AS name".
func (b *buildState) parseFrom(in dockerfile.Instruction) (image, stage string, err error) {
	for _, f := range in.Flags {
		if f.Name != "platform" {
			return "", "", errdefs.InvalidArgument("line %d: FROM --%s is not supported: only --platform is", in.Line, f.Name)
		}
	}
	words, werr := dockerfile.Words(in.Rest, b.escape, b.lookup(false))
	if werr != nil {
		return "", "", errdefs.InvalidArgument("line %d: %v", in.Line, werr)
	}
	switch {
	case len(words) == 1:
	case len(words) == 3 && strings.EqualFold(words[1], "AS"):
		stage = strings.ToLower(words[2])
	default:
		return "", "", errdefs.InvalidArgument("line %d: FROM takes an image and optionally AS name: %q", in.Line, in.Rest)
	}
	if words[0] == "" {
		return "", "", errdefs.InvalidArgument("line %d: FROM names no image (is a build argument unset?)", in.Line)
	}
	if p, ok := in.Flag("platform"); ok {
		if p, err = dockerfile.Word(p, b.escape, b.lookup(false)); err != nil {
			return "", "", errdefs.InvalidArgument("line %d: %v", in.Line, err)
		}
		if p != "" && p != "linux" && !strings.HasPrefix(p, "linux/"+hostArch) {
			return "", "", errdefs.InvalidArgument("line %d: this cloud builds linux/%s images, not %s", in.Line, hostArch, p)
		}
	}
	return words[0], stage, nil
}

// applyConfig applies an instruction that changes only the image's
// configuration. It returns false for the other instructions.
func (b *buildState) applyConfig(in dockerfile.Instruction) (bool, error) {
	bad := func(format string, args ...any) error {
		return errdefs.InvalidArgument("line %d: %s: %s", in.Line, in.Cmd, fmt.Sprintf(format, args...))
	}
	look := b.lookup(true)
	cfg := &b.cfg
	switch in.Cmd {
	case "ENV":
		pairs, err := dockerfile.Pairs("ENV", in.Rest, b.escape, look)
		if err != nil {
			return true, bad("%v", err)
		}
		for _, p := range pairs {
			cfg.Env = mergeEnvs(cfg.Env, []string{p.Key + "=" + p.Value})
		}
	case "LABEL":
		pairs, err := dockerfile.Pairs("LABEL", in.Rest, b.escape, look)
		if err != nil {
			return true, bad("%v", err)
		}
		labels := map[string]string{}
		for k, v := range cfg.Labels {
			labels[k] = v
		}
		for _, p := range pairs {
			labels[p.Key] = p.Value
		}
		cfg.Labels = labels
	case "WORKDIR":
		dir, err := dockerfile.Word(in.Rest, b.escape, look)
		if err != nil {
			return true, bad("%v", err)
		}
		if dir == "" {
			return true, bad("give a directory")
		}
		if !path.IsAbs(dir) {
			dir = path.Join("/", cfg.WorkingDir, dir)
		}
		cfg.WorkingDir = path.Clean(dir)
	case "USER":
		u, err := dockerfile.Word(in.Rest, b.escape, look)
		if err != nil {
			return true, bad("%v", err)
		}
		cfg.User = u
	case "EXPOSE":
		words, err := dockerfile.Words(in.Rest, b.escape, look)
		if err != nil {
			return true, bad("%v", err)
		}
		ports := map[string]struct{}{}
		for p := range cfg.ExposedPorts {
			ports[p] = struct{}{}
		}
		for _, w := range words {
			p, err := exposedPort(w)
			if err != nil {
				return true, bad("%v", err)
			}
			ports[p] = struct{}{}
		}
		cfg.ExposedPorts = ports
	case "CMD":
		cfg.Cmd = b.command(in)
		b.cmdSet = true
	case "ENTRYPOINT":
		cfg.Entrypoint = b.command(in)
		if !b.cmdSet {
			cfg.Cmd = nil // a base image's CMD is not an argument list for this entrypoint
		}
	case "STOPSIGNAL":
		sig, err := dockerfile.Word(in.Rest, b.escape, look)
		if err != nil {
			return true, bad("%v", err)
		}
		if _, err := parseSignal(sig, 0); err != nil || sig == "" {
			return true, bad("%q is not a signal: use a name (SIGTERM, TERM) or a number", sig)
		}
		cfg.StopSignal = sig
	case "SHELL":
		if !in.JSON || len(in.Args) == 0 {
			return true, bad(`give the shell as a JSON array, e.g. SHELL ["/bin/sh", "-c"]`)
		}
		cfg.Shell = append([]string{}, in.Args...)
	case "VOLUME":
		vols := in.Args
		if !in.JSON {
			var err error
			if vols, err = dockerfile.Words(in.Rest, b.escape, look); err != nil {
				return true, bad("%v", err)
			}
		}
		all := map[string]struct{}{}
		for v := range cfg.Volumes {
			all[v] = struct{}{}
		}
		for _, v := range vols {
			if v = strings.TrimSpace(v); v == "" {
				return true, bad("a volume needs a path")
			}
			all[v] = struct{}{}
		}
		cfg.Volumes = all
	case "HEALTHCHECK":
		hc, err := b.healthcheck(in)
		if err != nil {
			return true, bad("%v", err)
		}
		cfg.Healthcheck = hc
	case "MAINTAINER":
		m, err := dockerfile.Word(in.Rest, b.escape, look)
		if err != nil {
			return true, bad("%v", err)
		}
		b.author = m
	default:
		return false, nil
	}
	return true, nil
}

// exposedPort checks an EXPOSE word: PORT, PORT/PROTO or a range.
func exposedPort(w string) (string, error) {
	port, proto, ok := strings.Cut(w, "/")
	if !ok {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" && proto != "sctp" {
		return "", fmt.Errorf("invalid protocol %q in %q: use tcp, udp or sctp", proto, w)
	}
	lo, hi, isRange := strings.Cut(port, "-")
	check := func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("invalid port %q in %q", s, w)
		}
		return nil
	}
	if err := check(lo); err != nil {
		return "", err
	}
	if isRange {
		if err := check(hi); err != nil {
			return "", err
		}
	}
	return port + "/" + proto, nil
}

// healthcheck reads HEALTHCHECK NONE or HEALTHCHECK [--options] CMD ...
func (b *buildState) healthcheck(in dockerfile.Instruction) (*v1.HealthConfig, error) {
	rest := strings.TrimSpace(in.Rest)
	word, cmdText, _ := strings.Cut(rest, " ")
	switch strings.ToUpper(word) {
	case "NONE":
		if strings.TrimSpace(cmdText) != "" || len(in.Flags) > 0 {
			return nil, fmt.Errorf("NONE takes no arguments or options")
		}
		return &v1.HealthConfig{Test: []string{"NONE"}}, nil
	case "CMD":
	default:
		return nil, fmt.Errorf("use HEALTHCHECK NONE or HEALTHCHECK [OPTIONS] CMD command")
	}
	hc := &v1.HealthConfig{}
	for _, f := range in.Flags {
		switch f.Name {
		case "interval", "timeout", "start-period", "start-interval":
			d, err := time.ParseDuration(f.Value)
			if err != nil || d < 0 {
				return nil, fmt.Errorf("--%s=%s is not a duration (30s, 1m)", f.Name, f.Value)
			}
			switch f.Name {
			case "interval":
				hc.Interval = d
			case "timeout":
				hc.Timeout = d
			case "start-period":
				hc.StartPeriod = d
			}
		case "retries":
			n, err := strconv.Atoi(f.Value)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("--retries=%s is not a count", f.Value)
			}
			hc.Retries = n
		default:
			return nil, fmt.Errorf("unknown option --%s", f.Name)
		}
	}
	cmdText = strings.TrimSpace(cmdText)
	if cmdText == "" {
		return nil, fmt.Errorf("CMD needs a command")
	}
	sub := dockerfile.Instruction{Cmd: "CMD", Rest: cmdText}
	if strings.HasPrefix(cmdText, "[") {
		var args []string
		if json.Unmarshal([]byte(cmdText), &args) == nil {
			sub.JSON, sub.Args = true, args
		}
	}
	if sub.JSON {
		hc.Test = append([]string{"CMD"}, sub.Args...)
	} else {
		hc.Test = []string{"CMD-SHELL", cmdText}
	}
	return hc, nil
}

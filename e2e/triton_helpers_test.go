package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
)

// tritonResult is one run of the triton CLI.
type tritonResult struct {
	Args           []string
	Stdout, Stderr string
	Code           int // exit status; -1 when it did not run to the end
	Took           time.Duration
}

func (r tritonResult) String() string {
	return "triton " + strings.Join(r.Args, " ") + "\n--- stdout:\n" + r.Stdout + "--- stderr:\n" + r.Stderr
}

// runTriton runs triton with env (nil: tritonEnv()) and a timeout long
// enough for any -w wait this suite does.
func runTriton(t *testing.T, env []string, args ...string) tritonResult {
	t.Helper()
	if env == nil {
		env = tritonEnv()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tritonBin, args...)
	cmd.Env = env
	cmd.Dir = home
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := tritonResult{Args: args, Stdout: out.String(), Stderr: errb.String(), Took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.Code = ee.ExitCode()
	default:
		r.Code = -1
		t.Fatalf("triton %s: %v (after %s)\n%s", strings.Join(args, " "), err, r.Took.Round(time.Millisecond), r)
	}
	return r
}

// tri runs triton as the dev account and fails the test unless it succeeds.
func tri(t *testing.T, args ...string) string {
	t.Helper()
	r := runTriton(t, nil, args...)
	if r.Code != 0 {
		t.Fatalf("exit status %d, want 0:\n%s", r.Code, r)
	}
	return r.Stdout
}

// triFails runs triton as the dev account and fails the test unless it
// exits non-zero with wantStderr in its error output.
func triFails(t *testing.T, wantStderr string, args ...string) tritonResult {
	t.Helper()
	r := runTriton(t, nil, args...)
	if r.Code == 0 {
		t.Fatalf("exit status 0, want an error mentioning %q:\n%s", wantStderr, r)
	}
	if !strings.Contains(r.Stderr, wantStderr) {
		t.Fatalf("error output does not mention %q:\n%s", wantStderr, r)
	}
	return r
}

// triJSON runs triton (which must be given -j or print JSON) and decodes
// its output into v: one JSON value, or a JSON stream (one object a line)
// when v points to a slice.
func triJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	decodeJSONOutput(t, tri(t, args...), v)
}

func decodeJSONOutput(t *testing.T, out string, v any) {
	t.Helper()
	// Decoding into a used map would merge; start from the zero value.
	reflect.ValueOf(v).Elem().SetZero()
	trimmed := strings.TrimSpace(out)
	if sl, ok := v.(*[]map[string]any); ok && !strings.HasPrefix(trimmed, "[") {
		*sl = nil
		dec := json.NewDecoder(strings.NewReader(trimmed))
		dec.UseNumber()
		for dec.More() {
			var m map[string]any
			if err := dec.Decode(&m); err != nil {
				t.Fatalf("decoding a JSON stream: %v\n%s", err, out)
			}
			*sl = append(*sl, m)
		}
		return
	}
	dec := json.NewDecoder(strings.NewReader(trimmed))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decoding JSON: %v\n%s", err, out)
	}
}

// field returns m[k] as a string ("" when missing); json.Number and bools
// come back in their JSON spelling.
func field(m map[string]any, k string) string {
	switch v := m[k].(type) {
	case nil:
		return ""
	case string:
		return v
	case json.Number:
		return v.String()
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// byField indexes a list of objects by one of their fields.
func byField(list []map[string]any, k string) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, m := range list {
		out[field(m, k)] = m
	}
	return out
}

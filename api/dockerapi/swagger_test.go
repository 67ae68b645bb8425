package dockerapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"go.yaml.in/yaml/v4"
)

// loadEngineSpec reads api/swagger.yaml of the docker module we build
// against and converts it to OpenAPI 3.
func loadEngineSpec(t *testing.T) *openapi3.T {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/docker/docker").Output()
	if err != nil {
		t.Skipf("cannot locate the docker module to read its swagger.yaml: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "api", "swagger.yaml"))
	if err != nil {
		t.Skipf("the docker module has no api/swagger.yaml: %v", err)
	}
	var doc any
	must(t, yaml.Unmarshal(raw, &doc))
	js, err := json.Marshal(stringKeys(doc))
	must(t, err)
	var v2 openapi2.T
	must(t, json.Unmarshal(js, &v2))
	v3, err := openapi2conv.ToV3(&v2)
	must(t, err)
	return v3
}

// checkBody validates body against the spec's 200/201 response schema of
// method path.
func checkBody(t *testing.T, spec *openapi3.T, method, path string, status int, body []byte) {
	t.Helper()
	item := spec.Paths.Find(path)
	if item == nil {
		t.Fatalf("spec has no path %s", path)
	}
	op := item.GetOperation(method)
	resp := op.Responses.Status(status)
	if resp == nil || resp.Value == nil {
		t.Fatalf("spec has no %d response for %s %s", status, method, path)
	}
	mt := resp.Value.Content.Get("application/json")
	if mt == nil || mt.Schema == nil {
		t.Fatalf("spec has no JSON schema for %s %s", method, path)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("%s %s: not JSON: %v\n%s", method, path, err, body)
	}
	// dockerd itself sends null for unset lists and maps (Binds, CapAdd,
	// Entrypoint, ...) where the spec lacks x-nullable: judge them as absent.
	v = dropNulls(v)
	if err := mt.Schema.Value.VisitJSON(v, openapi3.MultiErrors()); err != nil {
		t.Errorf("%s %s does not match the Engine API spec: %v\n%s", method, path, err, body)
	}
}

func TestResponsesMatchEngineSpec(t *testing.T) {
	spec := loadEngineSpec(t)
	e := newTestEnv(t)
	e.ok("alice", "run", "-d", "--name", "web", "-p", "80:80", "--label", "a=b", "busybox:1.36", "sleep", "1000")
	e.ok("alice", "network", "create", "specnet")
	c := e.client("alice")
	get := func(method, url string) (int, []byte) {
		req, err := http.NewRequestWithContext(context.Background(), method, e.srv.URL+"/v1.51"+url, nil)
		must(t, err)
		resp, err := c.Do(req)
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q", method, url, ct)
		}
		return resp.StatusCode, b
	}
	for _, tc := range []struct{ url, path string }{
		{"/version", "/version"},
		{"/info", "/info"},
		{"/containers/json?all=1", "/containers/json"},
		{"/containers/web/json", "/containers/{id}/json"},
		{"/images/json", "/images/json"},
		{"/images/busybox:1.36/json", "/images/{name}/json"},
		{"/images/busybox:1.36/history", "/images/{name}/history"},
		{"/networks", "/networks"},
		{"/networks/specnet", "/networks/{id}"},
	} {
		status, body := get(http.MethodGet, tc.url)
		if status != 200 {
			t.Errorf("GET %s: %d %s", tc.url, status, body)
			continue
		}
		checkBody(t, spec, http.MethodGet, tc.path, 200, body)
	}
	status, body := get(http.MethodGet, "/containers/nosuch/json")
	if status != 404 {
		t.Fatalf("missing container: %d", status)
	}
	checkBody(t, spec, http.MethodGet, "/containers/{id}/json", 404, body)
}

// stringKeys turns YAML maps with non-string keys (response codes) into
// JSON-compatible maps.
func stringKeys(v any) any {
	switch m := v.(type) {
	case map[string]any:
		for k, x := range m {
			m[k] = stringKeys(x)
		}
		return m
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, x := range m {
			out[fmt.Sprint(k)] = stringKeys(x)
		}
		return out
	case []any:
		for i, x := range m {
			m[i] = stringKeys(x)
		}
		return m
	}
	return v
}

func dropNulls(v any) any {
	switch m := v.(type) {
	case map[string]any:
		for k, x := range m {
			if x == nil {
				delete(m, k)
				continue
			}
			m[k] = dropNulls(x)
		}
	case []any:
		for i, x := range m {
			m[i] = dropNulls(x)
		}
	}
	return v
}

package dockerapi

import (
	"archive/tar"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestBuildRefusals checks what POST /build refuses before it builds, with
// the status and Docker's {"message"} body, and that a Dockerfile with a
// RUN step is refused where no node runs containers with runc.
func TestBuildRefusals(t *testing.T) {
	e := newTestEnv(t)
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM busybox\nRUN echo hi\n"})
	e.fails("alice", 1, "needs a node that runs containers with runc", "build", dir)

	ctx := contextTar(t, []ctxEntry{{name: "Dockerfile", typ: tar.TypeReg, mode: 0o644, data: "FROM busybox\nRUN true\n"}}, false).Bytes()
	for _, tc := range []struct {
		query  string
		body   string
		status int
		msg    string
	}{
		{"remote=https://example.com/x.git", "", http.StatusNotImplemented, "remote context"},
		{"version=2", "", http.StatusNotImplemented, "BuildKit is not supported"},
		{"buildargs=notjson", "", http.StatusBadRequest, "buildargs is not a JSON object"},
		{"t=BAD%20TAG", "", http.StatusBadRequest, "invalid tag"},
		{"platform=windows/amd64", "", http.StatusBadRequest, "cannot be built"},
		{"target=x", string(ctx), http.StatusBadRequest, "failed to reach build target x"},
		{"", "not a tar", http.StatusBadRequest, "not a valid tar"},
		{"dockerfile=Other", string(ctx), http.StatusBadRequest, "Cannot locate specified Dockerfile: Other"},
	} {
		body := tc.body
		resp, err := e.client("alice").Post(e.srv.URL+"/v1.47/build?"+tc.query, "application/x-tar", strings.NewReader(body))
		must(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), `"message"`) || !strings.Contains(string(b), tc.msg) {
			t.Errorf("POST /build?%s: %d %s, want %d with %q", tc.query, resp.StatusCode, b, tc.status, tc.msg)
		}
	}
	// Nothing was made: no container, no image.
	if ps := e.ok("alice", "ps", "-a", "-q"); ps != "" {
		t.Errorf("docker ps -a after refused builds: %q", ps)
	}
}

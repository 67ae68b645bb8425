package agentapi_test

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-chi/chi/v5"

	"flotilla/api/agentapi"
	"flotilla/openapi"
)

// TestOpenAPIRoutes fails on any agent API route missing from
// openapi/agentapi.yaml and on any documented operation no route serves.
// (The responses themselves are validated against the document by the
// CloudAPI tests, which run a real agent through this API.)
func TestOpenAPIRoutes(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(openapi.AgentAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi/agentapi.yaml: %v", err)
	}
	spec := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			spec[strings.ToUpper(method)+" "+path] = true
			if op.Responses.Default() == nil {
				t.Errorf("%s %s documents no error response", method, path)
			}
		}
	}
	routes, ok := agentapi.New(nil, nil).Handler().(chi.Routes)
	if !ok {
		t.Fatal("the agent API handler is not a chi router")
	}
	served := map[string]bool{}
	chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		served[method+" "+route] = true
		return nil
	})
	var problems []string
	for r := range served {
		if !spec[r] {
			problems = append(problems, "route "+r+" is served but not documented")
		}
	}
	for r := range spec {
		if !served[r] {
			problems = append(problems, "documented "+r+" is not served")
		}
	}
	sort.Strings(problems)
	for _, p := range problems {
		t.Error(p)
	}
	if len(served) == 0 {
		t.Fatal("no routes")
	}
}

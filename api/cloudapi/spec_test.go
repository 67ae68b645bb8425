package cloudapi_test

import (
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-chi/chi/v5"

	"flotilla/api/cloudapi"
	"flotilla/api/service"
)

// routeSet lists "METHOD /path" for every route of a chi router, with a
// mounted sub-router's root ("/{account}/") written as the URL clients use
// ("/{account}").
func routeSet(t *testing.T, h http.Handler) map[string]bool {
	t.Helper()
	routes, ok := h.(chi.Routes)
	if !ok {
		t.Fatalf("handler %T is not a chi router", h)
	}
	out := map[string]bool{}
	err := chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if len(route) > 1 {
			route = strings.TrimSuffix(route, "/")
		}
		out[method+" "+route] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// specSet lists "METHOD /path" for every operation of an OpenAPI document.
func specSet(doc *openapi3.T) map[string]bool {
	out := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			out[strings.ToUpper(method)+" "+path] = true
		}
	}
	return out
}

// compareRoutes fails on a route the document lacks and on a documented
// operation no route serves.
func compareRoutes(t *testing.T, name string, router, spec map[string]bool) {
	t.Helper()
	var missing, extra []string
	for r := range router {
		if !spec[r] {
			missing = append(missing, r)
		}
	}
	for r := range spec {
		if !router[r] {
			extra = append(extra, r)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	for _, r := range missing {
		t.Errorf("route %s is served but not in %s", r, name)
	}
	for _, r := range extra {
		t.Errorf("%s documents %s, which no route serves", name, r)
	}
	if len(router) == 0 {
		t.Fatal("the router has no routes")
	}
}

func TestOpenAPIRoutes(t *testing.T) {
	cloud, _ := specs(t)
	h := cloudapi.New(&service.Service{}, nil, cloudapi.Config{}).Handler()
	router := routeSet(t, h)
	compareRoutes(t, "openapi/cloudapi.yaml", router, specSet(cloud.doc))
	t.Logf("%d CloudAPI routes, all documented", len(router))

	// Every GET has its HEAD twin in both the router and the document, except
	// the ones CloudAPI itself serves as GET only.
	getOnly := map[string]bool{"/--ping": true, "/openapi.yaml": true, "/{account}/changefeed": true,
		"/{account}/datacenters": true, "/{account}/datacenters/{dc}": true, "/{account}/services": true}
	for r := range router {
		if p, ok := strings.CutPrefix(r, "GET "); ok && !getOnly[p] && !router["HEAD "+p] {
			t.Errorf("GET %s has no HEAD twin", p)
		}
	}

	// Every operation documents its errors and has a CloudAPI name.
	ids := map[string]string{}
	for path, item := range cloud.doc.Paths.Map() {
		for method, op := range item.Operations() {
			where := method + " " + path
			if op.OperationID == "" {
				t.Errorf("%s has no operationId", where)
			} else if prev, dup := ids[op.OperationID]; dup {
				t.Errorf("operationId %s is used by %s and %s", op.OperationID, prev, where)
			}
			ids[op.OperationID] = where
			if op.Responses.Default() == nil {
				t.Errorf("%s documents no default (error) response", where)
			}
		}
	}
}

// TestOpenAPIServed checks that /openapi.yaml serves the embedded document.
func TestOpenAPIServed(t *testing.T) {
	e := newEnv(t)
	resp, b := e.do(request{method: "GET", path: "/openapi.yaml", unsigned: true})
	wantStatus(t, resp, b, http.StatusOK)
	if !strings.Contains(string(b), "operationId: CreateMachine") {
		t.Errorf("served document lacks CreateMachine: %.200s", b)
	}
}

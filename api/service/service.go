// Package service owns the rules both public APIs share: creating, acting
// on and deleting instances, resolving images, packages and networks, and
// placing instances with the scheduler. CloudAPI and the Docker endpoint call
// it; neither imports the other.
//
// Imports: store, scheduler, oci, go-containerregistry, api/errdefs,
// agent/driver (brand names and types), api/nodeclient (reading an
// instance's changes on its node). Never api/cloudapi, api/dockerapi or
// net/http servers.
package service

import (
	"context"
	"log/slog"

	"flotilla/api/nodeclient"
	"flotilla/oci"
	"flotilla/store"
)

// Service is the shared rule layer.
type Service struct {
	Store  *store.Store
	Placer *Placer
	Log    *slog.Logger

	blobs       oci.BlobStore      // image content; see SetBlobs
	imagePolicy ImagePolicy        // limits on image content and pulls; see SetImagePolicy
	watch       Waiters            // requests waiting for instances to change; see RunWatcher
	nodes       *nodeclient.Client // reaches nodes' stream servers; see SetNodeClient
	migrating   migrations         // migration phases this replica runs
}

// New returns a Service whose placer loads its snapshot from st.
func New(ctx context.Context, st *store.Store, log *slog.Logger, opts PlacerOptions) (*Service, error) {
	if log == nil {
		log = slog.Default()
	}
	p, err := NewPlacer(ctx, st, log, opts)
	if err != nil {
		return nil, err
	}
	return &Service{Store: st, Placer: p, Log: log}, nil
}

// Caller is who makes a request, for rules and the audit log.
type Caller struct {
	AccountID string // the account acted on
	Login     string
	// Principal is the authenticated account when an operator acts as another.
	Principal string
	Operator  bool
	KeyID     string
	IP        string
	Via       string // "cloudapi" or "docker"
}

// Audit renders the caller as CloudAPI's audit "caller" object.
func (c Caller) Audit() map[string]any {
	m := map[string]any{"type": "signature"}
	if c.Via == "docker" {
		m["type"] = "docker"
	}
	if c.IP != "" {
		m["ip"] = c.IP
	}
	if c.KeyID != "" {
		m["keyId"] = c.KeyID
	}
	if c.Principal != "" && c.Principal != c.Login {
		m["type"] = "operator"
		m["user"] = c.Principal
	}
	return m
}

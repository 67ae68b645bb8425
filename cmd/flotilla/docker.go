package main

import (
	"context"
	"log/slog"

	"flotilla/api/service"
)

// dockerEndpoint is a running Docker API listener.
type dockerEndpoint struct {
	URL     string // tcp://host:port
	CertDir string // where ca.pem (and, for dev, the client cert) live
	Close   func() error
}

// startDocker starts the Docker API listener when cfg.DockerAddr is set.
func startDocker(ctx context.Context, cfg serveConfig, svc *service.Service, log *slog.Logger) (*dockerEndpoint, error) {
	if cfg.DockerAddr == "" {
		return nil, nil
	}
	return nil, usagef("the Docker endpoint is not available in this build")
}

package main

import (
	"context"
	"strings"
	"testing"
)

// TestServeRefusesPlainAgentAPIOffLoopback: node credentials, join tokens
// and assignments (other tenants' environment and keys) must not cross the
// network in plain HTTP.
func TestServeRefusesPlainAgentAPIOffLoopback(t *testing.T) {
	cp, err := startControlPlane(context.Background(), serveConfig{DB: "postgres://127.0.0.1:1/none", CloudAPIAddr: "127.0.0.1:0",
		AgentAPIAddr: "0.0.0.0:0", DataDir: t.TempDir(), Policy: "pack"})
	if err == nil {
		cp.Close()
		t.Fatal("serve started a plain HTTP agent API on 0.0.0.0")
	}
	if !strings.Contains(err.Error(), "--agentapi-tls") {
		t.Fatalf("error %q does not say which flag to use", err)
	}
}

// Package openapi embeds the OpenAPI descriptions of Flotilla's HTTP APIs:
// cloudapi.yaml (the CloudAPI surface we serve, at /openapi.yaml) and
// agentapi.yaml (the internal agent API).
//
// Imports: standard library only.
package openapi

import _ "embed"

// CloudAPI is the OpenAPI 3 description of every CloudAPI route served.
//
//go:embed cloudapi.yaml
var CloudAPI []byte

// AgentAPI is the OpenAPI 3 description of the agent API.
//
//go:embed agentapi.yaml
var AgentAPI []byte

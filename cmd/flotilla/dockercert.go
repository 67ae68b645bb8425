package main

import "context"

func runDockerCert(ctx context.Context, args []string) error {
	return usagef("docker-cert is not available yet")
}

package main

import "context"

func runBench(ctx context.Context, args []string) error {
	return usagef("bench: say which benchmark: e2e or place")
}

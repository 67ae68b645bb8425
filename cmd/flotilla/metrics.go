package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"flotilla/api/service"
	"flotilla/internal/metrics"
)

// watchControlPlane wires a control plane's metrics: placements (outcome,
// latency, in flight) from the placer, and, at scrape time, instances by
// state and the nodes' capacity and usage from the database.
func watchControlPlane(reg *metrics.Registry, svc *service.Service) {
	svc.Placer.SetObserver(reg)
	reg.Queue("placer", "placements", svc.Placer.Placing)
	reg.GaugeFunc("flotilla_instances", "Instances that are not deleted, by observed state.", []string{"state"},
		func(ctx context.Context) ([]metrics.Sample, error) {
			counts, err := svc.Store.InstanceCountsByState(ctx)
			if err != nil {
				return nil, err
			}
			var out []metrics.Sample
			for state, n := range counts {
				out = append(out, metrics.Sample{Labels: []string{state}, Value: float64(n)})
			}
			return out, nil
		})
	nodes := func(ctx context.Context) ([]metrics.Sample, []metrics.Sample, []metrics.Sample, error) {
		list, err := svc.Store.ListNodes(ctx)
		if err != nil {
			return nil, nil, nil, err
		}
		var capMem, capDisk, capCPU, capInst, useMem, useDisk, useCPU, useInst float64
		byState := map[string]float64{}
		for _, n := range list {
			st := n.State
			if n.Drained {
				st = "drained"
			}
			byState[st]++
			if n.State != "running" {
				continue
			}
			capMem += float64(n.MemoryMiB) * n.RatioMemory
			capDisk += float64(n.DiskMiB) * n.RatioDisk
			capCPU += float64(n.VCPUsMilli) / 1000 * n.RatioVCPU
			capInst += float64(n.MaxInstances)
			useMem += float64(n.UsedMemoryMiB)
			useDisk += float64(n.UsedDiskMiB)
			useCPU += float64(n.UsedVCPUsMilli) / 1000
			useInst += float64(n.Instances)
		}
		s := func(r string, v float64) metrics.Sample { return metrics.Sample{Labels: []string{r}, Value: v} }
		capacity := []metrics.Sample{s("memory_mib", capMem), s("disk_mib", capDisk), s("vcpus", capCPU), s("instances", capInst)}
		used := []metrics.Sample{s("memory_mib", useMem), s("disk_mib", useDisk), s("vcpus", useCPU), s("instances", useInst)}
		var states []metrics.Sample
		for st, n := range byState {
			states = append(states, s(st, n))
		}
		return capacity, used, states, nil
	}
	reg.GaugeFunc("flotilla_node_capacity", "What the running nodes offer in total (overcommit ratios applied), by resource: memory_mib, disk_mib, vcpus, instances.",
		[]string{"resource"}, func(ctx context.Context) ([]metrics.Sample, error) { c, _, _, err := nodes(ctx); return c, err })
	reg.GaugeFunc("flotilla_node_used", "What placements use on the running nodes in total, by resource: memory_mib, disk_mib, vcpus, instances.",
		[]string{"resource"}, func(ctx context.Context) ([]metrics.Sample, error) { _, u, _, err := nodes(ctx); return u, err })
	reg.GaugeFunc("flotilla_nodes", "Compute nodes by state (running, offline; drained counts separately).",
		[]string{"state"}, func(ctx context.Context) ([]metrics.Sample, error) { _, _, s, err := nodes(ctx); return s, err })
}

// withMetrics serves reg at /metrics beside h.
func withMetrics(reg *metrics.Registry, h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", reg.Handler())
	mux.Handle("/", h)
	return mux
}

// serveMetrics serves reg at /metrics on addr until ctx ends and returns
// the address it listens on.
func serveMetrics(ctx context.Context, addr string, reg *metrics.Registry, log *slog.Logger) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", reg.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "error", err)
		}
	}()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	return l.Addr().String(), nil
}

package dockerapi

import (
	"cmp"
	"time"

	"github.com/docker/docker/api/types/container"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
)

// mergeHealthcheck is the container's health check as dockerd merges it:
// the client's settings, each unset one (zero) taken from the image's.
func mergeHealthcheck(user *container.HealthConfig, image *dockerspec.HealthcheckConfig) *container.HealthConfig {
	if image == nil {
		return user
	}
	if user == nil {
		return &container.HealthConfig{Test: image.Test, Interval: image.Interval, Timeout: image.Timeout,
			StartPeriod: image.StartPeriod, StartInterval: image.StartInterval, Retries: image.Retries}
	}
	out := *user
	if len(out.Test) == 0 {
		out.Test = image.Test
	}
	out.Interval = cmp.Or(out.Interval, image.Interval)
	out.Timeout = cmp.Or(out.Timeout, image.Timeout)
	out.StartPeriod = cmp.Or(out.StartPeriod, image.StartPeriod)
	out.StartInterval = cmp.Or(out.StartInterval, image.StartInterval)
	out.Retries = cmp.Or(out.Retries, image.Retries)
	return &out
}

// healthcheckSpec checks a merged health check as dockerd does and returns
// what the node runs: nil for none (no test, or NONE). Errors are Invalid
// with dockerd's messages.
func healthcheckSpec(h *container.HealthConfig) (*driver.Healthcheck, error) {
	if h == nil {
		return nil, nil
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Interval", h.Interval}, {"Timeout", h.Timeout}, {"StartPeriod", h.StartPeriod}, {"StartInterval", h.StartInterval}} {
		if d.v != 0 && d.v < container.MinimumDuration {
			return nil, errdefs.InvalidArgument("%s in Healthcheck cannot be less than %s", d.name, container.MinimumDuration)
		}
	}
	if h.Retries < 0 {
		return nil, errdefs.InvalidArgument("Retries in Healthcheck cannot be negative")
	}
	if len(h.Test) == 0 || h.Test[0] == "NONE" {
		return nil, nil
	}
	switch h.Test[0] {
	case "CMD", "CMD-SHELL":
	default:
		return nil, errdefs.InvalidArgument("unknown Healthcheck type %q: use CMD, CMD-SHELL or NONE", h.Test[0])
	}
	if len(h.Test) < 2 || h.Test[1] == "" {
		return nil, errdefs.InvalidArgument("Healthcheck %s needs a command", h.Test[0])
	}
	return &driver.Healthcheck{Test: append([]string{}, h.Test...),
		Interval:      cmp.Or(h.Interval, driver.DefaultHealthInterval),
		Timeout:       cmp.Or(h.Timeout, driver.DefaultHealthTimeout),
		StartPeriod:   h.StartPeriod,
		StartInterval: cmp.Or(h.StartInterval, driver.DefaultHealthStartInterval),
		Retries:       cmp.Or(h.Retries, driver.DefaultHealthRetries)}, nil
}

// healthOf is a container's State.Health: nil without a health check or
// before its first start; what its node last reported otherwise, "starting"
// for a running container it has not reported on yet, and "unhealthy" once
// the container has stopped, as dockerd does when it stops probing.
func healthOf(in store.Instance, hc *driver.Healthcheck, st container.State) *container.Health {
	if hc == nil {
		return nil
	}
	h := &container.Health{Status: container.Starting, Log: []*container.HealthcheckResult{}}
	if in.Health != nil {
		h.Status, h.FailingStreak = container.HealthStatus(in.Health.Status), in.Health.FailingStreak
		for _, r := range in.Health.Log {
			h.Log = append(h.Log, &container.HealthcheckResult{Start: r.Start, End: r.End, ExitCode: r.ExitCode, Output: r.Output})
		}
	} else if in.StartedAt == nil {
		return nil
	}
	if !st.Running && h.Status != container.Unhealthy {
		h.Status = container.Unhealthy
	}
	return h
}

// healthSuffix is what docker ps adds to a running container's status.
func healthSuffix(h *container.Health) string {
	if h == nil {
		return ""
	}
	switch h.Status {
	case container.Starting:
		return " (health: starting)"
	case container.Healthy, container.Unhealthy:
		return " (" + string(h.Status) + ")"
	}
	return ""
}

// healthFilterValues are the values of docker ps --filter health=.
var healthFilterValues = map[string]bool{"starting": true, "healthy": true, "unhealthy": true, "none": true}

// healthStatusOf is a container's health for docker ps --filter health=:
// "none" without a health check.
func healthStatusOf(in store.Instance) string {
	h := healthOf(in, service.DecodeProcessSpec(in.Spec).Healthcheck, stateOf(in))
	if h == nil {
		return container.NoHealthcheck
	}
	return h.Status
}

package dockerapi

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

func TestHealthcheckSpec(t *testing.T) {
	image := &dockerspec.HealthcheckConfig{Test: []string{"CMD", "probe"}, Interval: time.Minute, Retries: 7}
	tests := []struct {
		name  string
		user  *container.HealthConfig
		image *dockerspec.HealthcheckConfig
		want  *driver.Healthcheck
		err   string
	}{
		{"None", nil, nil, nil, ""},
		{"Defaults", &container.HealthConfig{Test: []string{"CMD-SHELL", "true"}}, nil,
			&driver.Healthcheck{Test: []string{"CMD-SHELL", "true"}, Interval: 30 * time.Second, Timeout: 30 * time.Second,
				StartInterval: 5 * time.Second, Retries: 3}, ""},
		{"FromImage", nil, image,
			&driver.Healthcheck{Test: []string{"CMD", "probe"}, Interval: time.Minute, Timeout: 30 * time.Second,
				StartInterval: 5 * time.Second, Retries: 7}, ""},
		{"MergedWithImage", &container.HealthConfig{Timeout: time.Second, StartPeriod: time.Second}, image,
			&driver.Healthcheck{Test: []string{"CMD", "probe"}, Interval: time.Minute, Timeout: time.Second,
				StartPeriod: time.Second, StartInterval: 5 * time.Second, Retries: 7}, ""},
		{"NoHealthcheckOverImage", &container.HealthConfig{Test: []string{"NONE"}}, image, nil, ""},
		{"ErrInterval", &container.HealthConfig{Test: []string{"CMD", "x"}, Interval: time.Microsecond}, nil, nil,
			"Interval in Healthcheck cannot be less than 1ms"},
		{"ErrTimeout", &container.HealthConfig{Test: []string{"CMD", "x"}, Timeout: -time.Second}, nil, nil,
			"Timeout in Healthcheck cannot be less than 1ms"},
		{"ErrStartPeriod", &container.HealthConfig{Test: []string{"CMD", "x"}, StartPeriod: time.Nanosecond}, nil, nil,
			"StartPeriod in Healthcheck cannot be less than 1ms"},
		{"ErrRetries", &container.HealthConfig{Test: []string{"CMD", "x"}, Retries: -1}, nil, nil,
			"Retries in Healthcheck cannot be negative"},
		{"ErrType", &container.HealthConfig{Test: []string{"SHELL", "x"}}, nil, nil, `unknown Healthcheck type "SHELL"`},
		{"ErrNoCommand", &container.HealthConfig{Test: []string{"CMD-SHELL"}}, nil, nil, "Healthcheck CMD-SHELL needs a command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := healthcheckSpec(mergeHealthcheck(tt.user, tt.image))
			if tt.err != "" {
				if errdefs.CodeOf(err) != errdefs.Invalid || err.Error() != tt.err && !strings.HasPrefix(err.Error(), tt.err) {
					t.Fatalf("error %v (%s), want Invalid %q", err, errdefs.CodeOf(err), tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	if cmd := (driver.Healthcheck{Test: []string{"CMD-SHELL", "test -f /x"}}).Command(); !reflect.DeepEqual(cmd, []string{"/bin/sh", "-c", "test -f /x"}) {
		t.Fatalf("CMD-SHELL runs %q", cmd)
	}
}

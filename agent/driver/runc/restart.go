package runc

import (
	"time"

	"flotilla/agent/driver"
)

// Backoff bounds for restarts: the first restart waits RestartBackoffMin,
// each further one twice as long, up to RestartBackoffMax (Docker's numbers).
var (
	RestartBackoffMin = 100 * time.Millisecond
	RestartBackoffMax = time.Minute
)

// ShouldRestart applies Docker's restart policies to a container whose main
// process exited with exitCode after it had already been restarted
// `restarts` times. It does not know about explicit stops: the caller (the
// shim) never restarts a container the user stopped, for any policy.
//
//   - "" and "no": never.
//   - "on-failure[:N]": when exitCode != 0, at most MaximumRetryCount
//     times (0 = no limit).
//   - "always" and "unless-stopped": always.
//
// The delay is the exponential backoff before the restart.
func ShouldRestart(policy driver.RestartPolicy, exitCode, restarts int) (bool, time.Duration) {
	switch policy.Name {
	case "always", "unless-stopped":
	case "on-failure":
		if exitCode == 0 {
			return false, 0
		}
		if policy.MaximumRetryCount > 0 && restarts >= policy.MaximumRetryCount {
			return false, 0
		}
	default:
		return false, 0
	}
	d := RestartBackoffMin
	for i := 0; i < restarts && d < RestartBackoffMax; i++ {
		d *= 2
	}
	if d > RestartBackoffMax {
		d = RestartBackoffMax
	}
	return true, d
}

package dockerapi

import (
	"strconv"
	"strings"

	"flotilla/api/errdefs"
)

// linuxSignals are the signal names docker kill and --stop-signal accept
// (moby's signal.SignalMap for Linux), without their "SIG" prefix.
var linuxSignals = map[string]int{
	"ABRT": 6, "ALRM": 14, "BUS": 7, "CHLD": 17, "CLD": 17, "CONT": 18, "FPE": 8, "HUP": 1, "ILL": 4,
	"INT": 2, "IO": 29, "IOT": 6, "KILL": 9, "PIPE": 13, "POLL": 29, "PROF": 27, "PWR": 30, "QUIT": 3,
	"SEGV": 11, "STKFLT": 16, "STOP": 19, "SYS": 31, "TERM": 15, "TRAP": 5, "TSTP": 20, "TTIN": 21,
	"TTOU": 22, "URG": 23, "USR1": 10, "USR2": 12, "VTALRM": 26, "WINCH": 28, "XCPU": 24, "XFSZ": 25,
	"RTMIN": 34, "RTMAX": 64,
}

const (
	sigKILL = 9
	sigTERM = 15
)

// parseSignal reads a signal as Docker clients send it: a name with or
// without "SIG" in any case ("HUP", "SIGUSR1", "RTMIN+3"), or a number.
// An empty string is def. Errors are Invalid, dockerd's wording.
func parseSignal(v string, def int) (int, error) {
	if v == "" {
		return def, nil
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 || n > 64 {
			return 0, errdefs.InvalidArgument("invalid signal: %s", v)
		}
		return n, nil
	}
	name := strings.TrimPrefix(strings.ToUpper(v), "SIG")
	if base, off, ok := strings.Cut(name, "+"); ok && (base == "RTMIN") {
		n, err := strconv.Atoi(off)
		if err == nil && n >= 0 && linuxSignals["RTMIN"]+n <= 64 {
			return linuxSignals["RTMIN"] + n, nil
		}
	} else if base, off, ok := strings.Cut(name, "-"); ok && base == "RTMAX" {
		n, err := strconv.Atoi(off)
		if err == nil && n >= 0 && 64-n >= linuxSignals["RTMIN"] {
			return 64 - n, nil
		}
	}
	if n, ok := linuxSignals[name]; ok {
		return n, nil
	}
	return 0, errdefs.InvalidArgument("invalid signal: %s", v)
}

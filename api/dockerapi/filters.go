package dockerapi

import (
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/filters"

	"flotilla/api/errdefs"
)

// maxFilterLen bounds the filters parameter.
const maxFilterLen = 64 << 10

// parseFilters reads the filters query parameter (the JSON map of API 1.22+
// or the legacy array form) and refuses keys outside allowed, as dockerd
// does: "invalid filter 'x'".
func parseFilters(raw string, allowed ...string) (filters.Args, error) {
	if len(raw) > maxFilterLen {
		return filters.Args{}, errdefs.InvalidArgument("the filters parameter is longer than %d bytes", maxFilterLen)
	}
	args, err := filters.FromJSON(raw)
	if err != nil {
		return filters.Args{}, errdefs.Wrap(errdefs.Invalid, err, "invalid filters: %s", strings.TrimPrefix(err.Error(), "invalid filter: "))
	}
	ok := map[string]bool{}
	for _, k := range allowed {
		ok[k] = true
	}
	for _, k := range args.Keys() {
		if !ok[k] {
			return filters.Args{}, errdefs.InvalidArgument("invalid filter '%s'", k)
		}
	}
	return args, nil
}

// matchAny reports whether any of the key's values satisfies fn; a key
// without values matches everything. Values of one key are OR-ed.
func matchAny(args filters.Args, key string, fn func(v string) bool) bool {
	vals := args.Get(key)
	if len(vals) == 0 {
		return true
	}
	for _, v := range vals {
		if fn(v) {
			return true
		}
	}
	return false
}

// matchLabels reports whether labels satisfy every label filter ("key" or
// "key=value"): label filters are AND-ed, unlike the other keys.
func matchLabels(args filters.Args, key string, labels map[string]string) bool {
	for _, f := range args.Get(key) {
		k, v, hasValue := strings.Cut(f, "=")
		got, ok := labels[k]
		if !ok || hasValue && got != v {
			return false
		}
	}
	return true
}

// matchRegexp matches v against a filter value as dockerd does for names
// and ids: an unanchored regular expression, or a literal substring when
// the value is not a valid expression.
func matchRegexp(pattern, v string) bool {
	if len(pattern) > 256 {
		return strings.Contains(v, pattern)
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return strings.Contains(v, pattern)
	}
	return re.MatchString(v)
}

// boolFilter reads a true/false filter value ("dangling").
func boolFilter(args filters.Args, key string) (val, set bool, err error) {
	vals := args.Get(key)
	if len(vals) == 0 {
		return false, false, nil
	}
	if len(vals) > 1 {
		return false, false, errdefs.InvalidArgument("invalid filter '%s': only one value is allowed", key)
	}
	b, err := strconv.ParseBool(vals[0])
	if err != nil {
		return false, false, errdefs.InvalidArgument("invalid filter '%s=%s'", key, vals[0])
	}
	return b, true, nil
}

// containerStatuses are the values of the status filter.
var containerStatuses = map[string]bool{"created": true, "restarting": true, "running": true, "removing": true,
	"paused": true, "exited": true, "dead": true}

// pathMatch is path.Match, tolerant of bad patterns (no match).
func pathMatch(pattern, name string) (bool, error) { return path.Match(pattern, name) }

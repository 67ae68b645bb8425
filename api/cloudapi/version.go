package cloudapi

import (
	"strconv"
	"strings"
)

// negotiate returns the newest of versions (newest first, "X.Y.Z") that
// satisfies the semver range rng as restify reads Accept-Version: "||"
// separates alternatives, spaces join comparators; ~, ^, =, <, <=, >, >=,
// x/* wildcards and partial versions are understood.
func negotiate(rng string, versions []string) (string, bool) {
	for _, v := range versions {
		if satisfies(v, rng) {
			return v, true
		}
	}
	return "", false
}

type semver [3]int

func parseVersion(s string) (semver, int, bool) {
	// returns the version, how many parts were given (wildcards stop it), ok
	var v semver
	s = strings.TrimPrefix(strings.TrimSpace(s), "v")
	if s == "" || s == "*" || s == "x" || s == "X" {
		return v, 0, true
	}
	parts := strings.Split(s, ".")
	if len(parts) > 3 {
		return v, 0, false
	}
	n := 0
	for i, p := range parts {
		if p == "x" || p == "X" || p == "*" {
			break
		}
		if j := strings.IndexAny(p, "-+"); j >= 0 && i == len(parts)-1 {
			p = p[:j]
		}
		x, err := strconv.Atoi(p)
		if err != nil || x < 0 {
			return v, 0, false
		}
		v[i] = x
		n++
	}
	return v, n, true
}

func cmp(a, b semver) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

func satisfies(version, rng string) bool {
	v, _, _ := parseVersion(version)
	for _, alt := range strings.Split(rng, "||") {
		alt = strings.TrimSpace(alt)
		if alt == "" {
			alt = "*"
		}
		ok := true
		for _, c := range strings.Fields(alt) {
			if !comparator(v, c) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func comparator(v semver, c string) bool {
	op := ""
	for _, p := range []string{">=", "<=", ">", "<", "=", "~", "^"} {
		if strings.HasPrefix(c, p) {
			op, c = p, c[len(p):]
			break
		}
	}
	want, n, ok := parseVersion(c)
	if !ok {
		return false
	}
	// lo <= v < hi for partial and tilde/caret forms.
	lo := want
	hi := want
	switch {
	case n == 0:
		hi = semver{1 << 30}
	case n == 1:
		hi = semver{want[0] + 1}
	case n == 2:
		hi = semver{want[0], want[1] + 1}
	default:
		hi = semver{want[0], want[1], want[2] + 1}
	}
	switch op {
	case "", "=":
		return cmp(v, lo) >= 0 && cmp(v, hi) < 0
	case "~":
		if n >= 2 {
			hi = semver{want[0], want[1] + 1}
		}
		return cmp(v, lo) >= 0 && cmp(v, hi) < 0
	case "^":
		switch {
		case want[0] > 0 || n <= 1:
			hi = semver{want[0] + 1}
		case want[1] > 0 || n == 2:
			hi = semver{0, want[1] + 1}
		}
		return cmp(v, lo) >= 0 && cmp(v, hi) < 0
	case ">=":
		return cmp(v, lo) >= 0
	case ">":
		return cmp(v, hi) >= 0
	case "<":
		return cmp(v, lo) < 0
	case "<=":
		return cmp(v, hi) < 0
	}
	return false
}

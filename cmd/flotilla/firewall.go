package main

import (
	"strings"

	"flotilla/agent/firewall"
)

// nodeFirewall is the firewall of the node called name: nftables table
// bridge flotilla-<name>, so that agents sharing a host (dev mode, tests)
// never touch each other's rules.
func nodeFirewall(name string) (*firewall.Firewall, error) {
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, name)
	return firewall.New("flotilla-" + clean[:min(len(clean), 55)])
}

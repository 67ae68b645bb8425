// Package network plumbs instance networking on a compute node: one Linux
// bridge per Flotilla network, a persistent named network namespace and a
// veth pair per container, tap devices for VMs, and the iptables rules for
// outbound NAT and isolation between networks.
//
// Imports: standard library, api/errdefs, agent/driver (for NIC),
// vishvananda/netlink and vishvananda/netns. It never imports store or api;
// iptables is driven through the iptables binary (nf_tables backend).
package network

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// Prefix starts the name of every link, chain and namespace this package
// creates, so that an operator (and a cleanup) can tell them apart.
const Prefix = "flt"

// maxIfName is IFNAMSIZ-1: Linux truncates nothing, it refuses longer names.
const maxIfName = 15

// shortID is a stable 10-hex-digit digest of an id. Ids are uuids in
// production but tests and operators may pass anything; hashing keeps the
// derived names short, valid and unlikely to collide.
func shortID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])[:10]
}

// BridgeName is the bridge that carries network networkID on every node:
// "flt-" and 10 hex digits (14 characters).
func BridgeName(networkID string) string { return Prefix + "-" + shortID(networkID) }

// VethName is the host end of the veth pair of NIC index nic (0-9 fit; larger
// indexes are folded) of instance instanceID: "fltv", 10 hex digits and the
// index (15 characters).
func VethName(instanceID string, nic int) string {
	return Prefix + "v" + shortID(instanceID) + strconv.Itoa(nic%10)
}

// TapName is the tap device of NIC index nic of VM instanceID: "fltt", 10 hex
// digits and the index (15 characters).
func TapName(instanceID string, nic int) string {
	return Prefix + "t" + shortID(instanceID) + strconv.Itoa(nic%10)
}

// NetNSName is the persistent network namespace of instance instanceID, the
// name of a file under /var/run/netns.
func NetNSName(instanceID string) string { return Prefix + "-" + shortID(instanceID) }

// NetNSPath is the path runc joins for the namespace named name.
func NetNSPath(name string) string { return "/var/run/netns/" + name }

// validIfName reports whether name is usable as a Linux interface name.
func validIfName(name string) bool {
	if name == "" || len(name) > maxIfName || name == "." || name == ".." {
		return false
	}
	for _, c := range name {
		if c == '/' || c == ':' || c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

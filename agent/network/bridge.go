package network

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"flotilla/api/errdefs"
)

// EnsureBridge makes sure bridge name exists, is up, carries the address
// gatewayCIDR (the network's gateway with the network prefix, e.g.
// "10.213.1.1/24") and is isolated from other Flotilla bridges. It is
// idempotent and safe to call for every instance. It returns Invalid for a
// bad name or CIDR and Internal when the kernel refuses.
func EnsureBridge(name, gatewayCIDR string) error {
	if !validIfName(name) {
		return errdefs.InvalidArgument("bridge name %q is not a valid interface name (1-15 printable characters)", name)
	}
	addr, err := netlink.ParseAddr(gatewayCIDR)
	if err != nil {
		return errdefs.InvalidArgument("gateway %q is not an address with a prefix length (like 10.213.1.1/24)", gatewayCIDR)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		if !isLinkNotFound(err) {
			return errdefs.Wrap(errdefs.Internal, err, "look up bridge %s", name)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return errdefs.Wrap(errdefs.Internal, err, "create bridge %s", name)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "look up new bridge %s", name)
		}
	}
	if link.Type() != "bridge" {
		return errdefs.Conflictf("link %s exists and is a %s, not a bridge", name, link.Type())
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "set address %s on bridge %s", gatewayCIDR, name)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "bring bridge %s up", name)
		}
	}
	return ensureIsolation(name)
}

// DeleteBridge removes bridge name with its NAT and isolation rules. Deleting
// a bridge that does not exist is not an error. Links still attached to it
// are detached by the kernel.
func DeleteBridge(name string) error {
	if !validIfName(name) {
		return errdefs.InvalidArgument("bridge name %q is not a valid interface name", name)
	}
	forgetInstalled(name, false)
	var errs []error
	if err := removeIsolation(name); err != nil {
		errs = append(errs, err)
	}
	if err := removeNATRules(name); err != nil {
		errs = append(errs, err)
	}
	if err := DeleteLink(name); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errdefs.Wrap(errdefs.Internal, errors.Join(errs...), "delete bridge %s", name)
	}
	return nil
}

// DeleteLink removes the link name (a tap, a veth end or a bridge). A link
// that does not exist is not an error.
func DeleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if isLinkNotFound(err) {
			return nil
		}
		return errdefs.Wrap(errdefs.Internal, err, "look up link %s", name)
	}
	if err := netlink.LinkDel(link); err != nil && !isLinkNotFound(err) {
		return errdefs.Wrap(errdefs.Internal, err, "delete link %s", name)
	}
	return nil
}

// LinkExists reports whether a link called name exists in the host namespace.
func LinkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// CreateTap creates a persistent tap device name for a VM NIC, attached to
// bridge and up. mac is the guest's MAC address; the host end gets the same
// address with its first octet set to 0xfe (libvirt's convention), so that the
// bridge never mistakes the guest's address for a local one. Creating a tap
// that already exists re-attaches it and is not an error.
func CreateTap(name, bridge, mac string) error {
	if !validIfName(name) {
		return errdefs.InvalidArgument("tap name %q is not a valid interface name", name)
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		if isLinkNotFound(err) {
			return errdefs.NotFoundf("bridge %s does not exist; call EnsureBridge first", bridge)
		}
		return errdefs.Wrap(errdefs.Internal, err, "look up bridge %s", bridge)
	}
	var hostMAC net.HardwareAddr
	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return errdefs.InvalidArgument("MAC %q is not a 6-byte MAC address", mac)
		}
		hostMAC = append(net.HardwareAddr{0xfe}, hw[1:]...)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		if !isLinkNotFound(err) {
			return errdefs.Wrap(errdefs.Internal, err, "look up tap %s", name)
		}
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name, MTU: br.Attrs().MTU},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_NO_PI,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "create tap %s", name)
		}
		// LinkAdd leaves the creating fds open in tap.Fds; the device is
		// persistent, so they are not needed.
		for _, f := range tap.Fds {
			f.Close()
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "look up new tap %s", name)
		}
	}
	if hostMAC != nil {
		if err := netlink.LinkSetHardwareAddr(link, hostMAC); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "set MAC of tap %s", name)
		}
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "attach tap %s to bridge %s", name, bridge)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "bring tap %s up", name)
	}
	return nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, os.ErrNotExist)
}

// ipForward turns on IPv4 forwarding, which outbound NAT needs.
func ipForward() error {
	const p = "/proc/sys/net/ipv4/ip_forward"
	b, err := os.ReadFile(p)
	if err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable ip forwarding: %w", err)
	}
	return nil
}

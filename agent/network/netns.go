package network

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// ensureNamedNetNS creates the persistent namespace /var/run/netns/name if it
// does not exist yet and returns a handle to it (the caller closes it).
func ensureNamedNetNS(name string) (netns.NsHandle, error) {
	if h, err := netns.GetFromName(name); err == nil {
		return h, nil
	}
	// NewNamed unshares the calling thread into the new namespace; pin the
	// goroutine to the thread and switch back before letting go of it. If
	// switching back fails the thread stays locked and dies with the
	// goroutine, so no other goroutine ever runs in the wrong namespace.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		if h.IsOpen() {
			h.Close()
		}
		return netns.None(), fmt.Errorf("return to host netns: %w", serr)
	}
	runtime.UnlockOSThread()
	if err != nil {
		// A half-made file (created, not mounted) would block the next try.
		os.Remove(NetNSPath(name))
		return netns.None(), fmt.Errorf("create netns %s: %w", name, err)
	}
	return h, nil
}

// SetupInstanceNetNS makes the persistent network namespace nsName (a file
// under /var/run/netns that outlives container restarts) and connects it to
// nic.Bridge with a veth pair: vethHost on the host side attached to the
// bridge, eth0 inside with nic.MAC, nic.IP/nic.PrefixLen and a default route
// via nic.Gateway; lo is up. Calling it again for a namespace that already
// has eth0 and whose host end exists only re-applies the address and route.
// It returns NotFound if the bridge does not exist, Invalid for a bad NIC.
func SetupInstanceNetNS(nsName string, nic driver.NIC, vethHost string) error {
	if nsName == "" || len(nsName) > 200 || nsName != sanitizeNSName(nsName) {
		return errdefs.InvalidArgument("network namespace name %q is not a plain file name", nsName)
	}
	if !validIfName(vethHost) {
		return errdefs.InvalidArgument("veth name %q is not a valid interface name", vethHost)
	}
	ip := net.ParseIP(nic.IP).To4()
	if ip == nil || nic.PrefixLen <= 0 || nic.PrefixLen > 32 {
		return errdefs.InvalidArgument("NIC address %s/%d is not an IPv4 address with a prefix length", nic.IP, nic.PrefixLen)
	}
	var mac net.HardwareAddr
	if nic.MAC != "" {
		var err error
		if mac, err = net.ParseMAC(nic.MAC); err != nil || len(mac) != 6 {
			return errdefs.InvalidArgument("NIC MAC %q is not a 6-byte MAC address", nic.MAC)
		}
	}
	var gw net.IP
	if nic.Gateway != "" {
		if gw = net.ParseIP(nic.Gateway).To4(); gw == nil {
			return errdefs.InvalidArgument("NIC gateway %q is not an IPv4 address", nic.Gateway)
		}
	}
	br, err := netlink.LinkByName(nic.Bridge)
	if err != nil {
		if isLinkNotFound(err) {
			return errdefs.NotFoundf("bridge %q does not exist; call EnsureBridge first", nic.Bridge)
		}
		return errdefs.Wrap(errdefs.Internal, err, "look up bridge %s", nic.Bridge)
	}

	ns, err := ensureNamedNetNS(nsName)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create network namespace %s", nsName)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open netlink in namespace %s", nsName)
	}
	defer h.Close()

	_, hostErr := netlink.LinkByName(vethHost)
	eth0, nsErr := h.LinkByName("eth0")
	if hostErr != nil || nsErr != nil {
		// Start from scratch: a leftover host end would keep the name.
		if err := DeleteLink(vethHost); err != nil {
			return err
		}
		if nsErr == nil {
			h.LinkDel(eth0)
		}
		if eth0, err = addVeth(h, ns, br, vethHost); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "create veth %s for namespace %s", vethHost, nsName)
		}
	}
	if err := configureEth0(h, eth0, mac, &net.IPNet{IP: ip, Mask: net.CIDRMask(nic.PrefixLen, 32)}, gw); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "configure eth0 in namespace %s", nsName)
	}
	return nil
}

func addVeth(h *netlink.Handle, ns netns.NsHandle, br netlink.Link, vethHost string) (netlink.Link, error) {
	return addVethAs(h, ns, br, vethHost, "eth0")
}

// addVethAs makes a veth pair: vethHost on br, up, and inName inside ns.
func addVethAs(h *netlink.Handle, ns netns.NsHandle, br netlink.Link, vethHost, inName string) (netlink.Link, error) {
	var rnd [4]byte
	rand.Read(rnd[:])
	peerName := Prefix + "p" + hex.EncodeToString(rnd[:])
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: vethHost, MTU: br.Attrs().MTU, MasterIndex: br.Attrs().Index},
		PeerName:  peerName,
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			DeleteLink(vethHost)
		}
	}()
	peer, err := netlink.LinkByName(peerName)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		return nil, err
	}
	host, err := netlink.LinkByName(vethHost)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, err
	}
	inside, err := h.LinkByName(peerName)
	if err != nil {
		return nil, err
	}
	if err := h.LinkSetName(inside, inName); err != nil {
		return nil, err
	}
	inside, err = h.LinkByName(inName)
	if err != nil {
		return nil, err
	}
	ok = true
	return inside, nil
}

func configureEth0(h *netlink.Handle, eth0 netlink.Link, mac net.HardwareAddr, addr *net.IPNet, gw net.IP) error {
	if mac != nil && eth0.Attrs().HardwareAddr.String() != mac.String() {
		if err := h.LinkSetHardwareAddr(eth0, mac); err != nil {
			return fmt.Errorf("set MAC: %w", err)
		}
	}
	if err := h.AddrReplace(eth0, &netlink.Addr{IPNet: addr}); err != nil {
		return fmt.Errorf("set address: %w", err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("bring eth0 up: %w", err)
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring lo up: %w", err)
		}
	}
	if gw != nil {
		r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw, Dst: nil}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

// TeardownInstanceNetNS removes the host end vethHost (the kernel removes its
// peer) and the namespace nsName. Missing pieces are not an error.
func TeardownInstanceNetNS(nsName, vethHost string) error {
	var errs []error
	if vethHost != "" {
		if err := DeleteLink(vethHost); err != nil {
			errs = append(errs, err)
		}
	}
	if nsName != "" && nsName == sanitizeNSName(nsName) {
		if err := netns.DeleteNamed(nsName); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, err)
		}
		// Unmount failed with EINVAL (not a mount point) or ENOENT: make sure
		// no stale file is left.
		if err := os.Remove(NetNSPath(nsName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errdefs.Wrap(errdefs.Internal, errors.Join(errs...), "tear down network namespace %s", nsName)
	}
	return nil
}

// InstanceVeths maps the MAC address (lower case) of each eth<n> link in the
// persistent namespace nsName to the host end of its veth pair,
// VethName(instanceID, n). A missing namespace maps nothing.
func InstanceVeths(nsName, instanceID string) (map[string]string, error) {
	if nsName != sanitizeNSName(nsName) || !NetNSExists(nsName) {
		return nil, nil
	}
	ns, err := netns.GetFromPath(NetNSPath(nsName))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "open network namespace %s", nsName)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "open netlink in namespace %s", nsName)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "list links in %s", nsName)
	}
	out := map[string]string{}
	for _, l := range links {
		name := l.Attrs().Name
		if n, err := strconv.Atoi(strings.TrimPrefix(name, "eth")); err == nil && strings.HasPrefix(name, "eth") && n >= 0 && n < 10 {
			out[strings.ToLower(l.Attrs().HardwareAddr.String())] = VethName(instanceID, n)
		}
	}
	return out, nil
}

// NetNSExists reports whether the named namespace file exists.
func NetNSExists(nsName string) bool {
	_, err := os.Stat(NetNSPath(nsName))
	return err == nil
}

func sanitizeNSName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	if s == "." || s == ".." {
		return "_"
	}
	return string(b)
}

// SyncInstanceNICs makes the persistent namespace nsName hold exactly nics,
// matched by MAC address: a NIC that is missing gets a veth pair (host end
// VethName(instanceID, n) on its bridge, "eth<n>" inside, eth0 for the
// primary when free), one no longer wanted is removed, and every one gets
// its address. The default route goes via the primary NIC's gateway. Fabric
// NICs (VNI set) are first given their fabric (EnsureFabric, with the
// underlay set by SetUnderlay) and plumbed on its bridge. Errors: Invalid
// for a bad NIC or name, NotFound for a missing bridge, Internal.
func SyncInstanceNICs(nsName, instanceID string, nics []driver.NIC) error {
	if nsName == "" || len(nsName) > 200 || nsName != sanitizeNSName(nsName) {
		return errdefs.InvalidArgument("network namespace name %q is not a plain file name", nsName)
	}
	defer HoldFabrics()()
	type want struct {
		nic  driver.NIC
		addr *net.IPNet
		mac  net.HardwareAddr
		gw   net.IP
		br   netlink.Link
	}
	var wants []want
	for _, nic := range orderNICs(nics) {
		ip := net.ParseIP(nic.IP).To4()
		if ip == nil || nic.PrefixLen <= 0 || nic.PrefixLen > 32 {
			return errdefs.InvalidArgument("NIC address %s/%d is not an IPv4 address with a prefix length", nic.IP, nic.PrefixLen)
		}
		mac, err := net.ParseMAC(nic.MAC)
		if err != nil || len(mac) != 6 {
			return errdefs.InvalidArgument("NIC MAC %q is not a 6-byte MAC address", nic.MAC)
		}
		w := want{nic: nic, addr: &net.IPNet{IP: ip, Mask: net.CIDRMask(nic.PrefixLen, 32)}, mac: mac}
		if nic.Gateway != "" {
			if w.gw = net.ParseIP(nic.Gateway).To4(); w.gw == nil {
				return errdefs.InvalidArgument("NIC gateway %q is not an IPv4 address", nic.Gateway)
			}
		}
		if err := EnsureNICBridge(&w.nic); err != nil {
			return err
		}
		if w.br, err = netlink.LinkByName(w.nic.Bridge); err != nil {
			if isLinkNotFound(err) {
				return errdefs.NotFoundf("bridge %q does not exist; call EnsureBridge first", w.nic.Bridge)
			}
			return errdefs.Wrap(errdefs.Internal, err, "look up bridge %s", w.nic.Bridge)
		}
		wants = append(wants, w)
	}
	ns, err := ensureNamedNetNS(nsName)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create network namespace %s", nsName)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open netlink in namespace %s", nsName)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "list links in %s", nsName)
	}
	byMAC := map[string]netlink.Link{}
	used := map[string]bool{}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "eth") {
			byMAC[l.Attrs().HardwareAddr.String()] = l
			used[l.Attrs().Name] = true
		}
	}
	keep := map[string]bool{}
	var primary netlink.Link
	var primaryGW net.IP
	for i, w := range wants {
		link := byMAC[w.mac.String()]
		if link == nil {
			name := ""
			for n := 0; n < 10; n++ {
				if c := "eth" + strconv.Itoa(n); !used[c] {
					name = c
					break
				}
			}
			if name == "" {
				return errdefs.InvalidArgument("an instance has at most 10 NICs")
			}
			n, _ := strconv.Atoi(name[3:])
			vethHost := VethName(instanceID, n)
			if err := DeleteLink(vethHost); err != nil {
				return err
			}
			if link, err = addVethAs(h, ns, w.br, vethHost, name); err != nil {
				return errdefs.Wrap(errdefs.Internal, err, "create veth %s for namespace %s", vethHost, nsName)
			}
			used[name] = true
		}
		keep[link.Attrs().Name] = true
		if err := configureEth0(h, link, w.mac, w.addr, nil); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "configure %s in namespace %s", link.Attrs().Name, nsName)
		}
		if i == 0 {
			primary, primaryGW = link, w.gw
		}
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "eth") && !keep[l.Attrs().Name] {
			if err := h.LinkDel(l); err != nil {
				return errdefs.Wrap(errdefs.Internal, err, "remove %s from namespace %s", l.Attrs().Name, nsName)
			}
		}
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		h.LinkSetUp(lo)
	}
	if primary != nil && primaryGW != nil {
		r := &netlink.Route{LinkIndex: primary.Attrs().Index, Gw: primaryGW}
		if err := h.RouteReplace(r); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "default route via %s", primaryGW)
		}
	}
	return nil
}

// orderNICs puts the primary NIC first, keeping the others' order.
func orderNICs(nics []driver.NIC) []driver.NIC {
	out := make([]driver.NIC, 0, len(nics))
	for _, n := range nics {
		if n.Primary {
			out = append(out, n)
		}
	}
	for _, n := range nics {
		if !n.Primary {
			out = append(out, n)
		}
	}
	return out
}

// EnsureNICBridge makes the bridge a NIC attaches to: for a fabric NIC its
// VLAN's fabric (nic.Bridge is set to the fabric bridge), otherwise the
// network's bridge with the gateway address and, when asked, NAT.
func EnsureNICBridge(nic *driver.NIC) error {
	if nic.VNI != 0 {
		f := Fabric{VNI: nic.VNI, Underlay: underlay()}
		sub, err := netip.ParsePrefix(nic.Subnet)
		if err != nil {
			return errdefs.InvalidArgument("fabric NIC %s has no valid subnet (%q)", nic.IP, nic.Subnet)
		}
		fn := FabricNet{Subnet: sub.Masked(), NAT: nic.NAT}
		if nic.Gateway != "" {
			if fn.Gateway, err = netip.ParseAddr(nic.Gateway); err != nil {
				return errdefs.InvalidArgument("NIC gateway %q is not an IPv4 address", nic.Gateway)
			}
		}
		f.Networks = []FabricNet{fn}
		nic.Bridge = FabricBridgeName(nic.VNI)
		return EnsureFabric(f)
	}
	if nic.Bridge == "" {
		return errdefs.InvalidArgument("NIC %s has no bridge", nic.IP)
	}
	if nic.Gateway != "" {
		if err := EnsureBridge(nic.Bridge, nic.Gateway+"/"+strconv.Itoa(nic.PrefixLen)); err != nil {
			return err
		}
	}
	if nic.NAT {
		return EnableNAT(nic.Bridge, nic.Subnet)
	}
	return nil
}

var underlayAddr atomic.Value // netip.Addr

// SetUnderlay sets this node's underlay address, the source of its VXLAN
// traffic; "" keeps fabrics on this node only. Errors: Invalid.
func SetUnderlay(ip string) error {
	if ip == "" {
		underlayAddr.Store(netip.Addr{})
		return nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return errdefs.InvalidArgument("underlay address %q is not an IPv4 address", ip)
	}
	underlayAddr.Store(a)
	return nil
}

func underlay() netip.Addr {
	a, _ := underlayAddr.Load().(netip.Addr)
	return a
}

package network

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"flotilla/api/errdefs"
)

// Fabrics: an account's VLAN is carried on a node by
//
//   - a bridge without a host address ("fltf" and the VNI in hex), so the
//     host never routes between tenants' subnets, which may overlap;
//   - a kernel VXLAN device ("fltx"+VNI, VNI = the VLAN's datacenter-wide
//     identifier) enslaved to it, with head-end replication to the other
//     nodes' underlay addresses (all-zero FDB entries) and MAC learning for
//     unicast; only nodes with a device for the VNI accept its frames;
//   - a router namespace per VLAN holding the gateways of the VLAN's
//     networks on "gw0", a veth whose other end is on the bridge. Networks
//     with outbound NAT get a second veth "up0" to the host on a /31 from
//     100.64.0.0/10 (derived from the VNI); the router masquerades the
//     tenant subnets to it and the host masquerades that to the world,
//     isolated from every other Flotilla bridge and uplink.
//
// Instances attach to the fabric bridge with their veths as on any bridge.

// VXLANPort is the UDP port VXLAN traffic uses between nodes (IANA's).
const VXLANPort = 4789

// vxlanOverhead is what VXLAN over IPv4 adds to a frame.
const vxlanOverhead = 50

// FabricBridgeName is the bridge of VNI vni on every node.
func FabricBridgeName(vni int) string { return fmt.Sprintf("%sf%06x", Prefix, vni&0xffffff) }

// VXLANName is the VXLAN device of VNI vni.
func VXLANName(vni int) string { return fmt.Sprintf("%sx%06x", Prefix, vni&0xffffff) }

func routerVethName(vni int) string { return fmt.Sprintf("%sg%06x", Prefix, vni&0xffffff) }
func uplinkVethName(vni int) string { return fmt.Sprintf("%su%06x", Prefix, vni&0xffffff) }

// RouterNetNSName is the router namespace of VNI vni on this host: the
// name carries the host's network namespace, so that nodes sharing one
// /var/run/netns (test nodes, each in its own namespace) never share a
// router.
func RouterNetNSName(vni int) string {
	return fmt.Sprintf("%sr-%s-%06x", Prefix, hostNSID(), vni&0xffffff)
}

// RouterNetNSPath is the path of RouterNetNSName(vni).
func RouterNetNSPath(vni int) string { return NetNSPath(RouterNetNSName(vni)) }

var hostNSIDOnce = sync.OnceValue(func() string {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return "0"
	}
	return fmt.Sprintf("%x", st.Ino)
})

func hostNSID() string { return hostNSIDOnce() }

// uplinkAddrs are the host and router ends of VNI vni's uplink.
func uplinkAddrs(vni int) (host, router netip.Addr) {
	base := uint32(100)<<24 | uint32(64)<<16
	off := uint32(vni&0x1fffff) * 2
	v := base + off
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}),
		netip.AddrFrom4([4]byte{byte((v + 1) >> 24), byte((v + 1) >> 16), byte((v + 1) >> 8), byte(v + 1)})
}

// FabricNet is one network of a fabric VLAN.
type FabricNet struct {
	Subnet  netip.Prefix
	Gateway netip.Addr // invalid: no gateway
	NAT     bool
}

// Fabric is what a node needs to carry one VLAN.
type Fabric struct {
	VNI int
	// Underlay is this node's address on the underlay network (VXLAN's
	// source); invalid keeps the VLAN on this node only.
	Underlay netip.Addr
	Networks []FabricNet
}

// fabricUse orders attaching instances to fabrics (read side: make the
// fabric, then plug NICs into its bridge) against releasing an unused
// fabric (write side), so that a release never removes a bridge an
// instance is being plugged into.
var fabricUse sync.RWMutex

// HoldFabrics keeps fabrics from being released until the returned
// function is called: hold it from EnsureFabric until the instance's link
// is on the bridge.
func HoldFabrics() (release func()) {
	fabricUse.RLock()
	return fabricUse.RUnlock
}

// fabrics remembers what EnsureFabric set up, so that an instance on a
// VLAN already set up costs no system call; peers are the underlay
// addresses every VXLAN device floods to.
var fabrics = struct {
	sync.Mutex
	done  map[int]string // vni -> key of the applied Fabric
	peers []netip.Addr
}{done: map[int]string{}}

func (f Fabric) key() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d|%s", f.VNI, f.Underlay)
	nets := slices.Clone(f.Networks)
	slices.SortFunc(nets, func(a, b FabricNet) int { return strings.Compare(a.Subnet.String(), b.Subnet.String()) })
	for _, n := range nets {
		fmt.Fprintf(&b, "|%s,%s,%v", n.Subnet, n.Gateway, n.NAT)
	}
	return b.String()
}

// EnsureFabric makes sure this node carries VLAN f: its bridge, its VXLAN
// device (when f has an underlay address) with FDB entries for the known
// peers, and its router namespace with the gateways of f's networks and NAT
// for those that ask for it. It is idempotent and cheap when nothing
// changed. Networks are merged: a network of the VLAN not in f is kept
// (another instance may use it). Errors: Invalid (bad VNI), Internal.
func EnsureFabric(f Fabric) error {
	if f.VNI <= 0 || f.VNI > 0xffffff {
		return errdefs.InvalidArgument("VNI %d is out of range (1-16777215)", f.VNI)
	}
	fabrics.Lock()
	defer fabrics.Unlock()
	key := f.key()
	if fabrics.done[f.VNI] == key {
		return nil
	}
	if err := ensureFabric(f, fabrics.peers); err != nil {
		return err
	}
	fabrics.done[f.VNI] = key
	return nil
}

func ensureFabric(f Fabric, peers []netip.Addr) error {
	brName := FabricBridgeName(f.VNI)
	br, err := ensureLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: brName}}, "bridge")
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "fabric bridge %s", brName)
	}
	if f.Underlay.IsValid() {
		if err := ensureVXLAN(f, br, peers); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "VXLAN device for VNI %d", f.VNI)
		}
	}
	// The host holds no address of a tenant's subnet on the bridge, but by
	// default it answers ARP on any interface for any of its own addresses:
	// a host address equal to a tenant's gateway (another bridge's, a
	// docker0's) would take the gateway's traffic from the router.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+brName+"/arp_ignore", []byte("8"), 0o644); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "stop the host answering ARP on fabric bridge %s", brName)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "bring fabric bridge %s up", brName)
	}
	if err := ensureBridgeForwarding(brName); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "accept forwarding on fabric bridge %s", brName)
	}
	if err := ensureFabricsUnNATed(); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "keep the host's NAT off fabric bridges")
	}
	if err := ensureRouter(f, br); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "router namespace for VNI %d", f.VNI)
	}
	return nil
}

// ensureLink creates link unless a link of its name exists, and returns it.
func ensureLink(link netlink.Link, kind string) (netlink.Link, error) {
	name := link.Attrs().Name
	l, err := netlink.LinkByName(name)
	if err == nil {
		if l.Type() != kind {
			return nil, fmt.Errorf("link %s exists and is a %s, not a %s", name, l.Type(), kind)
		}
		return l, nil
	}
	if !isLinkNotFound(err) {
		return nil, err
	}
	if err := netlink.LinkAdd(link); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create %s %s: %w", kind, name, err)
	}
	return netlink.LinkByName(name)
}

func ensureVXLAN(f Fabric, br netlink.Link, peers []netip.Addr) error {
	dev, err := linkWithAddr(f.Underlay)
	if err != nil {
		return err
	}
	mtu := dev.Attrs().MTU - vxlanOverhead
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: VXLANName(f.VNI), MTU: mtu},
		VxlanId:      f.VNI,
		VtepDevIndex: dev.Attrs().Index,
		SrcAddr:      net.IP(f.Underlay.AsSlice()),
		Port:         VXLANPort,
		Learning:     true,
	}
	l, err := ensureLink(vx, "vxlan")
	if err != nil {
		return err
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", vx.Name, br.Attrs().Name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring %s up: %w", vx.Name, err)
	}
	return syncFDB(l, peers)
}

// linkWithAddr finds the interface that holds address a.
func linkWithAddr(a netip.Addr) (netlink.Link, error) {
	addrs, err := netlink.AddrList(nil, unix.AF_INET)
	if err != nil {
		return nil, err
	}
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP); ok && ip.Unmap() == a {
			return netlink.LinkByIndex(x.LinkIndex)
		}
	}
	return nil, fmt.Errorf("no interface has the underlay address %s: start the agent with --underlay-ip set to one of this node's addresses", a)
}

var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// syncFDB makes the VXLAN device's all-zero FDB entries (where broadcast,
// unknown unicast and multicast go) exactly peers.
func syncFDB(vx netlink.Link, peers []netip.Addr) error {
	neighs, err := netlink.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list FDB of %s: %w", vx.Attrs().Name, err)
	}
	have := map[netip.Addr]bool{}
	var errs []error
	for _, n := range neighs {
		if n.HardwareAddr.String() != zeroMAC.String() {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if slices.Contains(peers, ip) {
			have[ip] = true
			continue
		}
		if err := netlink.NeighDel(&n); err != nil {
			errs = append(errs, fmt.Errorf("remove peer %s: %w", ip, err))
		}
	}
	for _, p := range peers {
		if have[p] {
			continue
		}
		n := &netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: netlink.NUD_PERMANENT, HardwareAddr: zeroMAC, IP: net.IP(p.AsSlice())}
		if err := netlink.NeighAppend(n); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("add peer %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// SetFabricPeers sets the underlay addresses of the other nodes, which
// every VXLAN device of this node floods to, now and for devices made later.
// Invalid addresses are skipped.
func SetFabricPeers(peers []string) error {
	var ps []netip.Addr
	for _, p := range peers {
		if a, err := netip.ParseAddr(p); err == nil && a.Is4() {
			ps = append(ps, a)
		}
	}
	slices.SortFunc(ps, func(a, b netip.Addr) int { return a.Compare(b) })
	ps = slices.Compact(ps)
	fabrics.Lock()
	defer fabrics.Unlock()
	if slices.Equal(ps, fabrics.peers) {
		return nil
	}
	fabrics.peers = ps
	var errs []error
	for vni := range fabrics.done {
		l, err := netlink.LinkByName(VXLANName(vni))
		if err != nil {
			continue
		}
		if err := syncFDB(l, ps); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errdefs.Wrap(errdefs.Internal, errors.Join(errs...), "update VXLAN peers")
	}
	return nil
}

// ensureRouter makes the router namespace of f.VNI with its gateways and NAT.
func ensureRouter(f Fabric, br netlink.Link) error {
	nsName := RouterNetNSName(f.VNI)
	ns, err := ensureNamedNetNS(nsName)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", nsName, err)
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		h.LinkSetUp(lo)
	}
	gw0, err := ensureRouterVeth(h, ns, routerVethName(f.VNI), "gw0", br)
	if err != nil {
		return err
	}
	for _, n := range f.Networks {
		if !n.Gateway.IsValid() {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(n.Gateway.AsSlice()), Mask: net.CIDRMask(n.Subnet.Bits(), 32)}}
		if err := h.AddrReplace(gw0, addr); err != nil {
			return fmt.Errorf("gateway %s on gw0: %w", addr, err)
		}
	}
	if err := nsSysctl(nsName, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	nat := false
	for _, n := range f.Networks {
		nat = nat || n.NAT && n.Gateway.IsValid()
	}
	if !nat {
		return nil
	}
	hostEnd, routerEnd := uplinkAddrs(f.VNI)
	up, err := ensureRouterVeth(h, ns, uplinkVethName(f.VNI), "up0", nil)
	if err != nil {
		return err
	}
	if err := h.AddrReplace(up, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(routerEnd.AsSlice()), Mask: net.CIDRMask(31, 32)}}); err != nil {
		return fmt.Errorf("uplink address: %w", err)
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: net.IP(hostEnd.AsSlice())}); err != nil {
		return fmt.Errorf("router default route: %w", err)
	}
	host, err := netlink.LinkByName(uplinkVethName(f.VNI))
	if err != nil {
		return err
	}
	if err := netlink.AddrReplace(host, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(hostEnd.AsSlice()), Mask: net.CIDRMask(31, 32)}}); err != nil {
		return fmt.Errorf("host uplink address: %w", err)
	}
	if err := EnableNAT(uplinkVethName(f.VNI), netip.PrefixFrom(hostEnd, 31).String()); err != nil {
		return err
	}
	for _, n := range f.Networks {
		if !n.NAT || !n.Gateway.IsValid() {
			continue
		}
		if err := nsIptablesEnsure(nsName, "nat", "POSTROUTING", "-s", n.Subnet.String(), "-o", "up0", "-j", "MASQUERADE"); err != nil {
			return err
		}
	}
	return nil
}

// ensureRouterVeth makes a veth pair whose host end hostName is up (and on
// br, when br is set) and whose other end is inName inside the router
// namespace, up.
func ensureRouterVeth(h *netlink.Handle, ns netns.NsHandle, hostName, inName string, br netlink.Link) (netlink.Link, error) {
	inside, inErr := h.LinkByName(inName)
	host, hostErr := netlink.LinkByName(hostName)
	if inErr != nil || hostErr != nil {
		if hostErr == nil {
			netlink.LinkDel(host)
		}
		if inErr == nil {
			h.LinkDel(inside)
		}
		peer := fmt.Sprintf("%sq%s", Prefix, shortID(hostName+hostNSID()))
		attrs := netlink.LinkAttrs{Name: hostName}
		if br != nil {
			attrs.MTU, attrs.MasterIndex = br.Attrs().MTU, br.Attrs().Index
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: peer}); err != nil {
			return nil, fmt.Errorf("create veth %s: %w", hostName, err)
		}
		p, err := netlink.LinkByName(peer)
		if err != nil {
			return nil, err
		}
		if err := netlink.LinkSetNsFd(p, int(ns)); err != nil {
			DeleteLink(hostName)
			return nil, fmt.Errorf("move %s into the router namespace: %w", peer, err)
		}
		if inside, err = h.LinkByName(peer); err != nil {
			return nil, err
		}
		if err := h.LinkSetName(inside, inName); err != nil {
			return nil, err
		}
		if host, err = netlink.LinkByName(hostName); err != nil {
			return nil, err
		}
	}
	if br != nil && host.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(host, br); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, err
	}
	inside, err := h.LinkByName(inName)
	if err != nil {
		return nil, err
	}
	if err := h.LinkSetUp(inside); err != nil {
		return nil, err
	}
	return inside, nil
}

// nsSysctl writes a sysctl inside the named namespace.
func nsSysctl(nsName, key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return inNamedNetNS(nsName, func() error {
		b, err := os.ReadFile(path)
		if err == nil && strings.TrimSpace(string(b)) == value {
			return nil
		}
		return os.WriteFile(path, []byte(value+"\n"), 0o644)
	})
}

// nsIptablesEnsure appends a rule to chain of table in the named namespace
// unless it is there.
func nsIptablesEnsure(nsName, table, chain string, rule ...string) error {
	base := []string{"netns", "exec", nsName, "iptables", "-w", "5", "-t", table}
	if _, err := runCmd("ip", append(append(slices.Clone(base), "-C", chain), rule...)...); err == nil {
		return nil
	}
	_, err := runCmd("ip", append(append(slices.Clone(base), "-A", chain), rule...)...)
	return err
}

// DeleteFabric removes what EnsureFabric made for vni on this node: the
// router namespace (and with it gw0 and up0, whose host ends go too), the
// host's NAT rules for the uplink, the VXLAN device and the bridge. Missing
// pieces are not an error.
func DeleteFabric(vni int) error {
	fabrics.Lock()
	defer fabrics.Unlock()
	delete(fabrics.done, vni)
	var errs []error
	if err := DeleteBridge(uplinkVethName(vni)); err != nil {
		errs = append(errs, err)
	}
	for _, l := range []string{routerVethName(vni), VXLANName(vni)} {
		if err := DeleteLink(l); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeBridgeForwarding(FabricBridgeName(vni)); err != nil {
		errs = append(errs, err)
	}
	if err := DeleteLink(FabricBridgeName(vni)); err != nil {
		errs = append(errs, err)
	}
	if err := TeardownInstanceNetNS(RouterNetNSName(vni), ""); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errdefs.Wrap(errdefs.Internal, errors.Join(errs...), "delete fabric %d", vni)
	}
	return nil
}

// inNamedNetNS runs fn on a thread inside the named namespace. If the
// thread cannot return to its namespace it stays locked and dies with the
// goroutine, so no other goroutine ever runs in the wrong namespace.
func inNamedNetNS(name string, fn func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err)
			return // the thread stays locked and exits with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func runCmd(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

// ensureBridgeForwarding accepts frames bridged between ports of a fabric
// bridge where br_netfilter passes them through the host's FORWARD chain.
func ensureBridgeForwarding(br string) error {
	if _, ok := installed.Load("fwd|" + br); ok {
		return nil
	}
	iptablesMu.Lock()
	defer iptablesMu.Unlock()
	if err := errors.Join(
		ensureChain("filter", chainForward, "FORWARD", false),
		ensureRule("filter", chainForward, "-i", br, "-o", br, "-j", "ACCEPT"),
	); err != nil {
		return err
	}
	installed.Store("fwd|"+br, true)
	return nil
}

// ensureFabricsUnNATed keeps the host's own NAT rules off frames bridged
// within a fabric bridge. br_netfilter passes those frames through the
// host's nat table, where a rule meant for a host network (docker0's
// "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", or any bridge of the host
// on a subnet a tenant also uses) would rewrite a tenant's traffic between
// its instances and its gateway. Tenant traffic leaves a fabric only
// through its router, which NATs it on its own uplink.
func ensureFabricsUnNATed() error {
	if _, ok := installed.Load("fabric-nat-bypass"); ok {
		return nil
	}
	iptablesMu.Lock()
	defer iptablesMu.Unlock()
	bridges := Prefix + "f+"
	for _, r := range []struct{ chain, dir string }{{"PREROUTING", "-i"}, {"POSTROUTING", "-o"}} {
		rule := []string{r.dir, bridges, "-m", "comment", "--comment", "flt:fabric-bridged", "-j", "ACCEPT"}
		if _, err := iptables(append([]string{"-t", "nat", "-C", r.chain}, rule...)...); err == nil {
			continue
		}
		if _, err := iptables(append([]string{"-t", "nat", "-I", r.chain, "1"}, rule...)...); err != nil {
			return err
		}
	}
	installed.Store("fabric-nat-bypass", true)
	return nil
}

func removeBridgeForwarding(br string) error {
	installed.Delete("fwd|" + br)
	iptablesMu.Lock()
	defer iptablesMu.Unlock()
	return deleteRulesNaming("filter", chainForward, br)
}

// ReleaseFabric removes VNI vni's fabric from this node when no instance
// is attached to its bridge any more (only the VXLAN device and the
// router's veth remain). It returns whether it removed it.
func ReleaseFabric(vni int) (bool, error) {
	fabricUse.Lock()
	defer fabricUse.Unlock()
	br, err := netlink.LinkByName(FabricBridgeName(vni))
	if err != nil {
		if isLinkNotFound(err) {
			return false, nil
		}
		return false, errdefs.Wrap(errdefs.Internal, err, "look up fabric bridge for VNI %d", vni)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return false, errdefs.Wrap(errdefs.Internal, err, "list links")
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index && l.Attrs().Name != VXLANName(vni) && l.Attrs().Name != routerVethName(vni) {
			return false, nil
		}
	}
	return true, DeleteFabric(vni)
}

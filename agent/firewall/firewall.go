// Package firewall enforces a node's firewall with nftables: per-NIC
// anti-spoofing for every instance, and for instances whose firewall is
// enabled, default-deny inbound with the account's rules resolved to
// addresses. It owns one bridge-family table per agent and replaces its
// whole content atomically on every Apply, so that what the kernel holds is
// always one complete, consistent rule set.
//
// Bridge-family chains see traffic between ports of a bridge (instance to
// instance) on the forward hook and traffic the node routes or sends into a
// bridge (from the gateway, the outside world, the host) on the output hook,
// by the instance's host-side interface (veth or tap), whether or not the
// host's br_netfilter is loaded. Rules match interfaces by name, so an
// instance's rules can be in place before its interface exists.
//
// Imports: github.com/google/nftables, fwrule, api/errdefs.
package firewall

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"flotilla/api/errdefs"
	"flotilla/fwrule"
)

// NIC is one network interface of an instance: its host-side interface
// names (a veth end or a tap; several when the driver cannot tell which),
// and the only MAC and IPv4 address it may send from.
type NIC struct {
	Ifaces []string
	MAC    net.HardwareAddr
	IP     netip.Addr
}

// Instance is what the firewall enforces for one instance.
type Instance struct {
	ID      string
	NICs    []NIC
	Enabled bool
	// Entries are the instance's resolved rules, in enforcement order
	// (fwrule.SortEntries); they apply only when Enabled.
	Entries []fwrule.Entry
}

// Firewall is one node's table.
type Firewall struct {
	mu    sync.Mutex
	table *nftables.Table
}

// New returns the firewall that owns table name (bridge family). Nothing is
// installed until Apply.
func New(name string) (*Firewall, error) {
	if name == "" || len(name) > 64 {
		return nil, errdefs.InvalidArgument("firewall table name %q must be 1 to 64 characters", name)
	}
	return &Firewall{table: &nftables.Table{Name: name, Family: nftables.TableFamilyBridge}}, nil
}

// Name is the table's name.
func (f *Firewall) Name() string { return f.table.Name }

// Ethernet types and IP protocol numbers, as they appear on the wire.
const (
	etherIPv4 = 0x0800
	etherARP  = 0x0806
)

var protoNumbers = map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "icmp": unix.IPPROTO_ICMP}

// Apply replaces the table's content with the rules for ins in one netlink
// transaction. It returns Invalid for a NIC without a valid MAC or IPv4
// address and Internal when the kernel refuses.
func (f *Firewall) Apply(ins []Instance) error {
	for _, in := range ins {
		for _, n := range in.NICs {
			if len(n.MAC) != 6 || !n.IP.Is4() {
				return errdefs.InvalidArgument("instance %s: NIC %s/%s needs a 6-byte MAC and an IPv4 address", in.ID, n.MAC, n.IP)
			}
			for _, name := range n.Ifaces {
				if name == "" || len(name) >= unix.IFNAMSIZ {
					return errdefs.InvalidArgument("instance %s: interface name %q is not valid", in.ID, name)
				}
			}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open nftables")
	}
	t := f.table
	// Add (a no-op when it exists), delete and add again: the table is
	// replaced as a whole in one transaction.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	b := &builder{c: c, t: t}
	b.base()
	for _, in := range ins {
		for _, n := range in.NICs {
			for _, iface := range n.Ifaces {
				b.nic(in, n, iface)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "install nftables table %s", t.Name)
	}
	return nil
}

// Close removes the table. A table that is not there is not an error.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "open nftables")
	}
	c.AddTable(f.table)
	c.DelTable(f.table)
	if err := c.Flush(); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "remove nftables table %s", f.table.Name)
	}
	return nil
}

type builder struct {
	c                   *nftables.Conn
	t                   *nftables.Table
	spoof, fwd, out     *nftables.Chain
	chains              int
	accept, drop, estab []expr.Any
}

func (b *builder) base() {
	prio := nftables.ChainPriorityRef(-200)
	policy := nftables.ChainPolicyAccept
	mk := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return b.c.AddChain(&nftables.Chain{Name: name, Table: b.t, Type: nftables.ChainTypeFilter,
			Hooknum: hook, Priority: prio, Policy: &policy})
	}
	b.spoof = mk("prerouting", nftables.ChainHookPrerouting)
	b.fwd = mk("forward", nftables.ChainHookForward)
	b.out = mk("output", nftables.ChainHookOutput)
}

func (b *builder) chain(prefix string) *nftables.Chain {
	b.chains++
	return b.c.AddChain(&nftables.Chain{Name: fmt.Sprintf("%s-%d", prefix, b.chains), Table: b.t})
}

func (b *builder) rule(ch *nftables.Chain, exprs ...[]expr.Any) {
	var all []expr.Any
	for _, e := range exprs {
		all = append(all, e...)
	}
	b.c.AddRule(&nftables.Rule{Table: b.t, Chain: ch, Exprs: all})
}

// nic installs iface's anti-spoofing and, when the instance's firewall is
// on, its inbound and outbound chains.
func (b *builder) nic(in Instance, n NIC, iface string) {
	// Frames from the instance: only its own MAC; only IPv4 from its own
	// address and ARP for its own address and MAC; nothing else (no IPv6,
	// no VLAN tags).
	spoof := b.chain("from")
	b.rule(b.spoof, iifname(iface), jump(spoof.Name))
	b.rule(spoof, cmpPayload(expr.PayloadBaseLLHeader, 6, n.MAC, expr.CmpOpNeq), verdict(expr.VerdictDrop))
	b.rule(spoof, etherType(etherIPv4), cmpPayload(expr.PayloadBaseNetworkHeader, 12, n.IP.AsSlice(), expr.CmpOpNeq), verdict(expr.VerdictDrop))
	b.rule(spoof, etherType(etherARP), cmpPayload(expr.PayloadBaseNetworkHeader, 8, n.MAC, expr.CmpOpNeq), verdict(expr.VerdictDrop))
	b.rule(spoof, etherType(etherARP), cmpPayload(expr.PayloadBaseNetworkHeader, 14, n.IP.AsSlice(), expr.CmpOpNeq), verdict(expr.VerdictDrop))
	if !in.Enabled {
		b.rule(spoof, etherType(etherIPv4), verdict(expr.VerdictReturn))
		b.rule(spoof, etherType(etherARP), verdict(expr.VerdictReturn))
		b.rule(spoof, verdict(expr.VerdictDrop))
		return
	}
	// The kernel may lack connection tracking for bridges, so replies are
	// recognised without it: TCP segments that do not open a connection,
	// ICMP replies and errors, and UDP from an address the instance has
	// sent UDP to in the last two minutes (a set the instance's own
	// datagrams keep fresh).
	b.chains++
	udpPeers := &nftables.Set{Table: b.t, Name: fmt.Sprintf("udp-peers-%d", b.chains), KeyType: nftables.TypeIPAddr,
		HasTimeout: true, Timeout: udpReplyWindow, Dynamic: true}
	b.c.AddSet(udpPeers, nil)
	b.rule(spoof, etherType(etherIPv4), ipProto(unix.IPPROTO_UDP),
		[]expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Dynset{SrcRegKey: 1, SetName: udpPeers.Name, SetID: udpPeers.ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: udpReplyWindow}})
	b.rule(spoof, etherType(etherIPv4), verdict(expr.VerdictReturn))
	b.rule(spoof, etherType(etherARP), verdict(expr.VerdictReturn))
	b.rule(spoof, verdict(expr.VerdictDrop))

	// To the instance: ARP and replies pass, then the rules, then drop.
	inbound := b.chain("to")
	b.rule(b.fwd, oifname(iface), jump(inbound.Name))
	b.rule(b.out, oifname(iface), jump(inbound.Name))
	b.rule(inbound, etherType(etherARP), verdict(expr.VerdictAccept))
	b.rule(inbound, etherType(etherIPv4), ipProto(unix.IPPROTO_TCP), tcpNotOpening(), verdict(expr.VerdictAccept))
	for _, typ := range []byte{0, 3, 11} { // echo reply, unreachable, time exceeded
		b.rule(inbound, etherType(etherIPv4), ipProto(unix.IPPROTO_ICMP),
			cmpPayload(expr.PayloadBaseTransportHeader, 0, []byte{typ}, expr.CmpOpEq), verdict(expr.VerdictAccept))
	}
	b.rule(inbound, etherType(etherIPv4), ipProto(unix.IPPROTO_UDP),
		[]expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: udpPeers.Name, SetID: udpPeers.ID}}, verdict(expr.VerdictAccept))
	var outbound *nftables.Chain
	for _, e := range in.Entries {
		if e.Inbound {
			b.entry(inbound, e)
			continue
		}
		if outbound == nil {
			outbound = b.chain("out")
			b.rule(b.fwd, iifname(iface), jump(outbound.Name))
			b.rule(b.out, iifname(iface), jump(outbound.Name))
			b.rule(outbound, etherType(etherIPv4), ipProto(unix.IPPROTO_TCP), tcpNotOpening(), verdict(expr.VerdictAccept))
		}
		b.entry(outbound, e)
	}
	b.rule(inbound, verdict(expr.VerdictDrop))
}

// udpReplyWindow is how long an address the instance sent UDP to may answer.
const udpReplyWindow = 2 * time.Minute

func ipProto(p byte) []expr.Any {
	return cmpPayload(expr.PayloadBaseNetworkHeader, 9, []byte{p}, expr.CmpOpEq)
}

// tcpNotOpening matches TCP segments other than a connection's first SYN.
func tcpNotOpening() []expr.Any {
	const syn, ack = 0x02, 0x10
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{syn | ack}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{syn}},
	}
}

// entry adds the rules of one resolved entry: one per peer and port range.
func (b *builder) entry(ch *nftables.Chain, e fwrule.Entry) {
	proto, ok := protoNumbers[e.Protocol]
	if !ok {
		return
	}
	v := verdict(expr.VerdictAccept)
	if e.Action == fwrule.Block {
		v = verdict(expr.VerdictDrop)
	}
	// Inbound rules name sources, outbound rules destinations.
	peerOffset := uint32(12)
	if !e.Inbound {
		peerOffset = 16
	}
	var peers [][]expr.Any
	if e.AnyPeer {
		peers = [][]expr.Any{nil}
	}
	for _, p := range e.Peers {
		if p.Addr().Is4() {
			peers = append(peers, matchPrefix(peerOffset, p))
		}
	}
	var ports [][]expr.Any
	switch {
	case e.AllPorts:
		ports = [][]expr.Any{nil}
	case e.Protocol == "icmp":
		m := cmpPayload(expr.PayloadBaseTransportHeader, 0, []byte{byte(e.ICMPType)}, expr.CmpOpEq)
		if e.ICMPCode >= 0 {
			m = append(m, cmpPayload(expr.PayloadBaseTransportHeader, 1, []byte{byte(e.ICMPCode)}, expr.CmpOpEq)...)
		}
		ports = [][]expr.Any{m}
	default:
		for _, r := range e.Ports {
			ports = append(ports, portRange(r))
		}
	}
	for _, peer := range peers {
		for _, port := range ports {
			b.rule(ch, etherType(etherIPv4), ipProto(proto), peer, port, v)
		}
	}
}

func iifname(name string) []expr.Any { return ifname(expr.MetaKeyIIFNAME, name) }
func oifname(name string) []expr.Any { return ifname(expr.MetaKeyOIFNAME, name) }

func ifname(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

func cmpPayload(base expr.PayloadBase, offset uint32, data []byte, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: offset, Len: uint32(len(data))},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

// etherType matches the frame's Ethernet type as it is on the wire (a
// VLAN-tagged frame shows its tag's type).
func etherType(t uint16) []expr.Any {
	return cmpPayload(expr.PayloadBaseLLHeader, 12, binaryutil.BigEndian.PutUint16(t), expr.CmpOpEq)
}

func matchPrefix(offset uint32, p netip.Prefix) []expr.Any {
	addr := p.Masked().Addr().AsSlice()
	if p.Bits() == 32 {
		return cmpPayload(expr.PayloadBaseNetworkHeader, offset, addr, expr.CmpOpEq)
	}
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
	}
}

func portRange(r fwrule.PortRange) []expr.Any {
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	if r.Lo == r.Hi {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(r.Lo))}}
	}
	return []expr.Any{load, &expr.Range{Op: expr.CmpOpEq, Register: 1,
		FromData: binaryutil.BigEndian.PutUint16(uint16(r.Lo)), ToData: binaryutil.BigEndian.PutUint16(uint16(r.Hi))}}
}

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

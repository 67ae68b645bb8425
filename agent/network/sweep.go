package network

import (
	"strings"

	"github.com/vishvananda/netlink"

	"flotilla/api/errdefs"
)

// Bridges lists the host's Flotilla bridges ("flt-" names) with the number
// of links attached to each.
func Bridges() (map[string]int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "list links")
	}
	out := map[string]int{}
	index := map[int]string{}
	for _, l := range links {
		if l.Type() == "bridge" && strings.HasPrefix(l.Attrs().Name, Prefix+"-") {
			out[l.Attrs().Name] = 0
			index[l.Attrs().Index] = l.Attrs().Name
		}
	}
	for _, l := range links {
		if name, ok := index[l.Attrs().MasterIndex]; ok && l.Attrs().MasterIndex != 0 {
			out[name]++
		}
	}
	return out, nil
}

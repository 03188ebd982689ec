package gateway

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Listener is one of the data plane's own listeners. An upstream target
// there would send the data plane's traffic back to itself (the traffic
// listeners) or put the admin API (/config, /metrics, pprof) behind a
// public route (the admin listener), so a snapshot with one is refused.
type Listener struct {
	// Name says what it serves, for messages: "traffic", "admin".
	Name string
	// Addr is the host:port it is bound to, as net.Listener.Addr says.
	Addr string
}

// SetListeners replaces Options.Listeners, for listeners opened after
// New. Snapshots applied from then on are checked against them; the live
// one is not re-checked.
func (g *Gateway) SetListeners(ls []Listener) {
	g.mu.Lock()
	g.self = slices.Clone(ls)
	g.mu.Unlock()
}

// localHost is what the data plane knows of its own addresses without
// resolving names.
type localHost struct {
	hostname string              // "" when unknown
	addrs    func() []netip.Addr // interface addresses, asked for at most once per check
}

// thisHost is the machine's localHost.
func thisHost() localHost {
	h, _ := os.Hostname()
	return localHost{hostname: h, addrs: interfaceAddrs}
}

func interfaceAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// boundAddr is a Listener's address, parsed.
type boundAddr struct {
	Listener
	ip   netip.Addr
	port uint16
}

// checkSelfTargets refuses upstream targets at one of self. A target
// matches a listener on the same port when its host is the listener's
// IP, or a local address when the listener is bound to all of them
// (0.0.0.0 for IPv4, :: for both families, as Go listens); "localhost"
// (and *.localhost) is loopback, 0.0.0.0 and :: reach the local host, and
// the machine's host name counts for listeners bound to all addresses.
// Other names are not resolved: applying must not wait on DNS, and a name
// that leads back here is caught at run time by loop detection (508).
func checkSelfTargets(rs []*meridianv1.Resource, self []Listener, local localHost) error {
	if len(self) == 0 {
		return nil
	}
	bound := make([]boundAddr, 0, len(self))
	for _, l := range self {
		host, port, err := net.SplitHostPort(l.Addr)
		if err != nil {
			continue
		}
		ip, err := netip.ParseAddr(host)
		p, perr := strconv.ParseUint(port, 10, 16)
		if err != nil || perr != nil {
			continue
		}
		bound = append(bound, boundAddr{Listener: l, ip: ip.Unmap().WithZone(""), port: uint16(p)})
	}
	// Interface addresses are listed only when a target could need them.
	ifaces := sync.OnceValue(func() []netip.Addr {
		if local.addrs == nil {
			return nil
		}
		return local.addrs()
	})
	var errs config.ErrorList
	for _, r := range rs {
		u := r.GetUpstream()
		if u == nil {
			continue
		}
		for i, t := range u.GetSpec().GetTargets() {
			l, ok := selfTarget(t.GetAddress(), bound, local.hostname, ifaces)
			if !ok {
				continue
			}
			errs = append(errs, &config.FieldError{
				Kind: config.KindUpstream, Name: u.GetMetadata().GetName(),
				Path: fmt.Sprintf("spec.targets[%d].address", i),
				Msg:  fmt.Sprintf("%q is this data plane's own %s listener (%s)", t.GetAddress(), l.Name, l.Addr),
			})
		}
	}
	return errs.Err()
}

// selfTarget returns the listener the target address reaches, if any.
func selfTarget(addr string, bound []boundAddr, hostname string, ifaces func() []netip.Addr) (Listener, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return Listener{}, false
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return Listener{}, false
	}
	ip, ipErr := netip.ParseAddr(host)
	ip = ip.Unmap().WithZone("")
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	for _, b := range bound {
		if b.port != uint16(p) {
			continue
		}
		all := b.ip.IsUnspecified()
		switch {
		case ipErr == nil:
			if all {
				// 0.0.0.0 takes IPv4 only; Go's :: takes both families.
				if (b.ip.Is6() || ip.Is4()) && (ip.IsLoopback() || ip.IsUnspecified() || slices.Contains(ifaces(), ip)) {
					return b.Listener, true
				}
			} else if ip == b.ip || ip.IsUnspecified() && b.ip.IsLoopback() && ip.Is4() == b.ip.Is4() {
				// Connecting to 0.0.0.0 or :: reaches the loopback address.
				return b.Listener, true
			}
		case name == "localhost" || strings.HasSuffix(name, ".localhost"):
			if all || b.ip == netip.IPv6Loopback() || b.ip == netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
				return b.Listener, true
			}
		case all && hostname != "" && name == strings.ToLower(hostname):
			return b.Listener, true
		}
	}
	return Listener{}, false
}

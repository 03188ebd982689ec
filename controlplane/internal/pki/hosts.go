package pki

import (
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
)

// hostSet is a list of hosts split the way a certificate holds them.
type hostSet struct {
	dns []string
	ips []net.IP
}

func (h hostSet) empty() bool { return len(h.dns) == 0 && len(h.ips) == 0 }

// parseHosts splits hosts into DNS names (lower case) and IPs, dropping
// empty entries and duplicates. It accepts "[::1]" and a zone ("fe80::1%eth0"),
// which a certificate cannot hold, so the zone is dropped.
func parseHosts(hosts []string) (hostSet, error) {
	var h hostSet
	for _, s := range hosts {
		s = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "["), "]")
		if s == "" {
			continue
		}
		if ip := parseIP(s); ip != nil {
			if !slices.ContainsFunc(h.ips, ip.Equal) {
				h.ips = append(h.ips, ip)
			}
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(s, "."))
		if !validDNSName(name) {
			return hostSet{}, fmt.Errorf("host %q is neither an IP address nor a DNS name", s)
		}
		if !slices.Contains(h.dns, name) {
			h.dns = append(h.dns, name)
		}
	}
	return h, nil
}

func parseIP(s string) net.IP {
	if i := strings.IndexByte(s, '%'); i >= 0 {
		s = s[:i]
	}
	return net.ParseIP(s)
}

// validDNSName accepts lower-case names of letters, digits, '-' and '_'
// labels, with an optional leading "*." wildcard.
func validDNSName(name string) bool {
	name = strings.TrimPrefix(name, "*.")
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 || strings.ContainsFunc(label, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
		}) {
			return false
		}
	}
	return true
}

// coveredBy reports whether cert names every host in h exactly; a wildcard
// in the certificate does not count, so what was asked for is what is there.
func (h hostSet) coveredBy(cert *x509.Certificate) bool {
	for _, name := range h.dns {
		if !slices.ContainsFunc(cert.DNSNames, func(n string) bool { return strings.EqualFold(n, name) }) {
			return false
		}
	}
	for _, ip := range h.ips {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

// LocalHosts returns the names this machine can be reached by: localhost,
// 127.0.0.1, ::1, the hostname and the addresses of every up interface.
// IPv6 link-local addresses are left out: they are only reachable with a
// zone, which neither a certificate nor hostname verification can carry.
func LocalHosts() []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if name, err := os.Hostname(); err == nil && validDNSName(strings.ToLower(name)) {
		hosts = append(hosts, strings.ToLower(name))
	}
	for _, ip := range interfaceIPs() {
		if s := ip.String(); !slices.Contains(hosts, s) {
			hosts = append(hosts, s)
		}
	}
	return hosts
}

// interfaceIPs lists the addresses of the up interfaces. It is best
// effort: when the interfaces cannot be read the loopback names still work.
func interfaceIPs() []net.IP {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var ips []net.IP
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip := addrIP(a); ip != nil && !(ip.To4() == nil && ip.IsLinkLocalUnicast()) {
				ips = append(ips, ip)
			}
		}
	}
	return ips
}

func addrIP(a net.Addr) net.IP {
	switch a := a.(type) {
	case *net.IPNet:
		return a.IP
	case *net.IPAddr:
		return a.IP
	}
	return nil
}

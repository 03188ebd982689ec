package pki

import (
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseHosts(t *testing.T) {
	tests := []struct {
		in      []string
		dns     []string
		ips     []string
		wantErr bool
	}{
		{in: []string{"localhost", "127.0.0.1", "::1"}, dns: []string{"localhost"}, ips: []string{"127.0.0.1", "::1"}},
		{in: []string{"CP.Example.Test.", "cp.example.test", "[::1]", "0:0::1", " ", ""}, dns: []string{"cp.example.test"}, ips: []string{"::1"}},
		{in: []string{"fe80::1%eth0"}, ips: []string{"fe80::1"}},
		{in: []string{"*.example.test", "my_host"}, dns: []string{"*.example.test", "my_host"}},
		{in: []string{"host:7400"}, wantErr: true},
		{in: []string{"a..b"}, wantErr: true},
		{in: []string{"exa mple"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.in, ","), func(t *testing.T) {
			h, err := parseHosts(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			var ips []string
			for _, ip := range h.ips {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(h.dns, tt.dns) || !slices.Equal(ips, tt.ips) {
				t.Errorf("dns %v ips %v, want %v %v", h.dns, ips, tt.dns, tt.ips)
			}
		})
	}
}

func TestLocalHosts(t *testing.T) {
	hosts := LocalHosts()
	if !slices.Equal(hosts[:3], []string{"localhost", "127.0.0.1", "::1"}) {
		t.Errorf("LocalHosts starts %v", hosts[:3])
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if seen[h] {
			t.Errorf("%s listed twice", h)
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil && ip.To4() == nil && ip.IsLinkLocalUnicast() {
			t.Errorf("IPv6 link-local %s listed", h)
		}
	}
	// Everything listed must be usable as a SAN.
	f := mustLoad(t, t.TempDir(), time.Now())
	if _, err := f.ServerCert(hosts, time.Now()); err != nil {
		t.Fatalf("ServerCert(LocalHosts()): %v", err)
	}
}

package gateway

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/meridian-gw/meridian/proto/config"
)

func TestSelfTargetRefused(t *testing.T) {
	g := New(Options{Logger: discardLogger(), Listeners: []Listener{
		{Name: "traffic", Addr: "[::]:18080"},
		{Name: "admin", Addr: "127.0.0.1:19901"},
	}})
	defer g.Close()
	ctx := context.Background()

	err := g.Apply(ctx, snapshot(1, upstreamRes("x", targets("192.0.2.7:19901", "127.0.0.1:19901")), routeRes("r", "x", prefix("/"))), SourceControlPlane)
	want := `Upstream "x": spec.targets[1].address: "127.0.0.1:19901" is this data plane's own admin listener (127.0.0.1:19901)`
	if err == nil || err.Error() != want {
		t.Fatalf("Apply = %v\nwant %s", err, want)
	}
	var list config.ErrorList
	if !asList(err, &list) || len(list) != 1 || list[0].Path != "spec.targets[1].address" || list[0].Kind != config.KindUpstream || list[0].Name != "x" {
		t.Errorf("error %#v does not name the field", err)
	}
	if g.Current() != nil {
		t.Error("a refused snapshot went live")
	}

	// Every way of writing the traffic listener's address, in one go.
	err = g.Apply(ctx, snapshot(2, upstreamRes("y", targets("localhost:18080", "[::1]:18080", "0.0.0.0:18080")), routeRes("r", "y", prefix("/"))), SourceControlPlane)
	if err == nil || strings.Count(err.Error(), "own traffic listener ([::]:18080)") != 3 {
		t.Errorf("Apply = %v, want three targets refused as the traffic listener", err)
	}

	// Other ports, and other addresses on the admin port, are fine.
	if err := g.Apply(ctx, snapshot(3, upstreamRes("z", targets("127.0.0.1:19902", "localhost:18081", "192.0.2.7:19901", "127.0.0.2:19901")), routeRes("r", "z", prefix("/"))), SourceControlPlane); err != nil {
		t.Fatalf("Apply: %v", err)
	}

	// Listeners set later apply to the next snapshot.
	g.SetListeners([]Listener{{Name: "admin", Addr: "127.0.0.1:19902"}})
	err = g.Apply(ctx, snapshot(4, upstreamRes("z", targets("127.0.0.1:19902")), routeRes("r", "z", prefix("/"))), SourceControlPlane)
	if err == nil || !strings.Contains(err.Error(), `spec.targets[0].address: "127.0.0.1:19902" is this data plane's own admin listener`) {
		t.Errorf("after SetListeners: Apply = %v", err)
	}
	if v, _ := g.Applied(); v != 3 {
		t.Errorf("applied version %d, want 3 kept", v)
	}
}

func asList(err error, list *config.ErrorList) bool {
	l, ok := err.(config.ErrorList)
	*list = l
	return ok
}

func TestSelfTarget(t *testing.T) {
	local := localHost{hostname: "gw-1.example", addrs: func() []netip.Addr {
		return []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("2001:db8::5")}
	}}
	listeners := func(addrs ...string) []Listener {
		var ls []Listener
		for _, a := range addrs {
			ls = append(ls, Listener{Name: "traffic", Addr: a})
		}
		return ls
	}
	tests := []struct {
		listener string
		target   string
		want     bool
	}{
		// Bound to every address of both families (Go's ":8080").
		{"[::]:8080", "127.0.0.1:8080", true},
		{"[::]:8080", "127.9.9.9:8080", true},
		{"[::]:8080", "[::1]:8080", true},
		{"[::]:8080", "localhost:8080", true},
		{"[::]:8080", "LocalHost.:8080", true},
		{"[::]:8080", "app.localhost:8080", true},
		{"[::]:8080", "0.0.0.0:8080", true},
		{"[::]:8080", "[::]:8080", true},
		{"[::]:8080", "10.1.2.3:8080", true},
		{"[::]:8080", "[2001:db8::5]:8080", true},
		{"[::]:8080", "[::ffff:10.1.2.3]:8080", true},
		{"[::]:8080", "GW-1.example:8080", true},
		{"[::]:8080", "10.1.2.4:8080", false},
		{"[::]:8080", "127.0.0.1:8081", false},
		{"[::]:8080", "other.example:8080", false},
		// IPv4 only.
		{"0.0.0.0:8080", "10.1.2.3:8080", true},
		{"0.0.0.0:8080", "[::1]:8080", false},
		{"0.0.0.0:8080", "localhost:8080", true},
		// One address.
		{"127.0.0.1:9901", "127.0.0.1:9901", true},
		{"127.0.0.1:9901", "localhost:9901", true},
		{"127.0.0.1:9901", "0.0.0.0:9901", true},
		{"127.0.0.1:9901", "[::]:9901", false},
		{"127.0.0.1:9901", "127.0.0.2:9901", false},
		{"127.0.0.1:9901", "10.1.2.3:9901", false},
		{"127.0.0.1:9901", "gw-1.example:9901", false}, // not resolved
		{"10.1.2.3:8080", "10.1.2.3:8080", true},
		{"10.1.2.3:8080", "localhost:8080", false},
		{"[::1]:9901", "localhost:9901", true},
		{"[::1]:9901", "[::]:9901", true},
	}
	for _, tc := range tests {
		rs := snapshot(1, upstreamRes("u", targets(tc.target))).GetResources()
		err := checkSelfTargets(rs, listeners(tc.listener), local)
		if got := err != nil; got != tc.want {
			t.Errorf("listener %s, target %s: refused = %v (%v), want %v", tc.listener, tc.target, got, err, tc.want)
		}
	}
	// No interface address is listed unless a target needs it.
	asked := false
	local.addrs = func() []netip.Addr { asked = true; return nil }
	checkSelfTargets(snapshot(1, upstreamRes("u", targets("10.1.2.3:9000", "127.0.0.1:8080"))).GetResources(), listeners("[::]:8080", "127.0.0.1:9901"), local)
	if asked {
		t.Error("interface addresses listed for targets on no listener's port, or loopback ones")
	}
}

package upstream

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func targets(ws map[string]uint32, order ...string) []*meridianv1.Target {
	var ts []*meridianv1.Target
	for _, a := range order {
		ts = append(ts, &meridianv1.Target{Address: a, Weight: ws[a]})
	}
	return ts
}

func TestBalance(t *testing.T) {
	tests := []struct {
		name    string
		targets []*meridianv1.Target
		want    string
	}{
		{"equal weights", targets(nil, "a", "b", "c"), "abcabc"},
		{"zero weight means 1", targets(map[string]uint32{"a": 0, "b": 1}, "a", "b"), "abab"},
		{"smooth weighted", targets(map[string]uint32{"a": 5, "b": 1, "c": 1}, "a", "b", "c"), "aabacaa" + "aabacaa"},
		{"single", targets(nil, "a"), "aaa"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New("u", &meridianv1.UpstreamSpec{Targets: tt.targets}, nil)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			for range len(tt.want) {
				a, ok := p.Next()
				if !ok {
					t.Fatal("no target")
				}
				b.WriteString(a)
			}
			if b.String() != tt.want {
				t.Errorf("sequence = %s, want %s", b.String(), tt.want)
			}
		})
	}
}

func TestNoTargets(t *testing.T) {
	p, err := New("u", &meridianv1.UpstreamSpec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Next(); ok {
		t.Error("Next on an empty pool returned a target")
	}
}

func TestTransportSettings(t *testing.T) {
	spec := &meridianv1.UpstreamSpec{
		Targets: targets(nil, "127.0.0.1:1"),
		ConnectionPool: &meridianv1.ConnectionPool{
			MaxIdleConns: 7, MaxIdleConnsPerHost: 3,
			IdleConnTimeout:     durationpb.New(11 * time.Second),
			TlsHandshakeTimeout: durationpb.New(2 * time.Second),
		},
	}
	p, err := New("u", spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := p.Transport()
	if tr.MaxIdleConns != 7 || tr.MaxIdleConnsPerHost != 3 || tr.IdleConnTimeout != 11*time.Second || tr.TLSHandshakeTimeout != 2*time.Second {
		t.Errorf("transport = %d %d %v %v", tr.MaxIdleConns, tr.MaxIdleConnsPerHost, tr.IdleConnTimeout, tr.TLSHandshakeTimeout)
	}
	if tr.Proxy != nil {
		t.Error("transport uses an environment proxy")
	}

	d, err := New("d", &meridianv1.UpstreamSpec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Transport().MaxIdleConnsPerHost != DefaultMaxIdleConnsPerHost {
		t.Errorf("default MaxIdleConnsPerHost = %d", d.Transport().MaxIdleConnsPerHost)
	}
}

func TestReuse(t *testing.T) {
	spec := &meridianv1.UpstreamSpec{Targets: targets(nil, "a:1", "b:1")}
	p1, err := New("u", spec, nil)
	if err != nil {
		t.Fatal(err)
	}

	same, err := New("u", &meridianv1.UpstreamSpec{Targets: targets(nil, "a:1", "b:1")}, p1)
	if err != nil {
		t.Fatal(err)
	}
	if same != p1 {
		t.Error("equal spec did not reuse the pool")
	}

	moreTargets, err := New("u", &meridianv1.UpstreamSpec{Targets: targets(nil, "a:1", "b:1", "c:1")}, p1)
	if err != nil {
		t.Fatal(err)
	}
	if moreTargets == p1 || moreTargets.Transport() != p1.Transport() {
		t.Error("a target change should make a new pool sharing the transport")
	}

	newPool, err := New("u", &meridianv1.UpstreamSpec{
		Targets:        targets(nil, "a:1"),
		ConnectionPool: &meridianv1.ConnectionPool{MaxIdleConns: 1},
	}, p1)
	if err != nil {
		t.Fatal(err)
	}
	if newPool.Transport() == p1.Transport() {
		t.Error("a connection-pool change should make a new transport")
	}
}

func TestBadCA(t *testing.T) {
	_, err := New("u", &meridianv1.UpstreamSpec{
		Scheme: meridianv1.Scheme_SCHEME_HTTPS,
		Tls:    &meridianv1.UpstreamTLS{CaPem: "not a pem"},
	}, nil)
	var fe *config.FieldError
	if !errors.As(err, &fe) || fe.Path != "spec.tls.caPEM" || fe.Name != "u" {
		t.Fatalf("err = %v, want FieldError on spec.tls.caPEM", err)
	}
}

func TestH2C(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(r.Proto))
	}))
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &protos
	srv.Start()
	defer srv.Close()

	p, err := New("u", &meridianv1.UpstreamSpec{Scheme: meridianv1.Scheme_SCHEME_H2C}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Transport().CloseIdleConnections()
	resp, err := (&http.Client{Transport: p.Transport()}).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Errorf("proto = %s, want HTTP/2", resp.Proto)
	}
}

func TestCloseUnused(t *testing.T) {
	closed := make(chan struct{}, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.Start()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	keep, err := New("keep", &meridianv1.UpstreamSpec{Targets: targets(nil, addr)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	gone, err := New("gone", &meridianv1.UpstreamSpec{Targets: targets(nil, addr), ConnectionPool: &meridianv1.ConnectionPool{MaxIdleConns: 9}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Transport().CloseIdleConnections()
	for _, p := range []*Pool{keep, gone} {
		resp, err := (&http.Client{Transport: p.Transport()}).Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	CloseUnused(map[string]*Pool{"keep": keep, "gone": gone}, map[string]*Pool{"keep": keep})
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("idle connection of the removed upstream was not closed")
	}
	select {
	case <-closed:
		t.Error("idle connection of the kept upstream was closed")
	case <-time.After(100 * time.Millisecond):
	}
}

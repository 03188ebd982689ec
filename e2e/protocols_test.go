package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// serve runs handler on a loopback listener for the test's lifetime.
func serve(t *testing.T, handler http.Handler) string {
	t.Helper()
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv.Protocols = &protocols
	return serveServer(t, srv)
}

// serveServer runs srv on a loopback listener for the test's lifetime
// and returns its address.
func serveServer(t *testing.T, srv *http.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// gatewayFor starts a control plane and one data plane (with extra flags)
// serving config, and waits until it is applied.
func gatewayFor(t *testing.T, config string, extra ...string) *dataplane {
	t.Helper()
	cp := startControlplane(t, "cp", t.TempDir(), "")
	dp := startDataplaneArgs(t, "dp-1", t.TempDir(), nil, []string{cp.addr}, extra)
	v := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", writeFile(t, "g.yaml", config)))
	waitSynced(t, cp.addr, v, "dp-1")
	return dp
}

// oneRoute is an upstream of targets (with extra upstream spec lines) and
// a catch-all route to it.
func oneRoute(scheme string, targets []string, upstreamExtra string) string {
	var ts []string
	for _, t := range targets {
		ts = append(ts, fmt.Sprintf("{address: %q}", t))
	}
	return fmt.Sprintf(`apiVersion: meridian/v1
kind: Upstream
metadata: {name: up}
spec:
  scheme: %s
  targets: [%s]
%s---
apiVersion: meridian/v1
kind: Route
metadata: {name: all}
spec:
  match: {paths: [{prefix: /}]}
  upstream: up
  timeout: 2s
`, scheme, strings.Join(ts, ", "), upstreamExtra)
}

func TestWebSocketThroughGateway(t *testing.T) {
	skipShort(t)
	up := serve(t, websocket.Handler(func(ws *websocket.Conn) { _, _ = io.Copy(ws, ws) }))
	dp := gatewayFor(t, oneRoute("http", []string{up}, ""))

	ws, err := websocket.Dial("ws://"+dp.addr+"/ws", "", "http://"+dp.addr)
	if err != nil {
		t.Fatalf("WebSocket dial through the gateway: %v", err)
	}
	defer ws.Close()
	for i, msg := range []string{"hello", "world", strings.Repeat("x", 100_000)} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		// The echo server writes back what each read returned, so a long
		// message may come back in several frames.
		var got string
		for len(got) < len(msg) {
			var part string
			if err := websocket.Message.Receive(ws, &part); err != nil {
				t.Fatal(err)
			}
			got += part
		}
		if got != msg {
			t.Fatalf("message %d: echoed %d bytes, want %d", i, len(got), len(msg))
		}
	}
}

func TestServerSentEventsStream(t *testing.T) {
	skipShort(t)
	release := make(chan struct{})
	up := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: last\n\n")
	}))
	dp := gatewayFor(t, oneRoute("http", []string{up}, ""))

	resp, err := http.Get("http://" + dp.addr + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() {
		line, _ := lines.ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		if line != "data: first\n" {
			t.Fatalf("first line = %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first event did not arrive while the upstream held the stream open: the gateway buffers")
	}
	close(release)
	rest, _ := io.ReadAll(lines)
	if !strings.Contains(string(rest), "data: last") {
		t.Errorf("rest of stream = %q", rest)
	}
}

func TestGRPCThroughGateway(t *testing.T) {
	skipShort(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("users", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	dp := gatewayFor(t, oneRoute("h2c", []string{ln.Addr().String()}, ""))

	conn, err := grpc.NewClient(dp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Unary.
	resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "users"})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("unary Check through the gateway: %v %v", resp, err)
	}
	// A status carried in trailers.
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("Check of an unknown service: err = %v, want NotFound from trailers", err)
	}
	// Server streaming: the first message, then a change pushed by the
	// server, past the route's 2s timeout.
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: "users"})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Recv()
	if err != nil || msg.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first streamed message: %v %v", msg, err)
	}
	time.Sleep(2500 * time.Millisecond)
	hs.SetServingStatus("users", healthpb.HealthCheckResponse_NOT_SERVING)
	msg, err = stream.Recv()
	if err != nil || msg.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("second streamed message: %v %v", msg, err)
	}
}

// selfSigned writes a certificate and key for host into dir.
func selfSigned(t *testing.T, dir, host string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, host+".crt"), filepath.Join(dir, host+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestHTTP2OverTLSWithSNI(t *testing.T) {
	skipShort(t)
	echo := startEcho(t, "echo-1")
	dir := t.TempDir()
	certA, keyA, poolA := selfSigned(t, dir, "a.example.test")
	certB, keyB, poolB := selfSigned(t, dir, "b.example.test")
	tlsAddr := freeAddr(t)
	dp := gatewayFor(t, oneRoute("http", []string{echo}, ""),
		"--tls-listen", tlsAddr, "--tls-cert", certA+","+certB, "--tls-key", keyA+","+keyB)
	dp.waitFor("dataplane TLS listening on")

	for _, tc := range []struct {
		host string
		pool *x509.CertPool
	}{{"a.example.test", poolA}, {"b.example.test", poolB}} {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			ForceAttemptHTTP2: true,
			TLSClientConfig:   &tls.Config{RootCAs: tc.pool, ServerName: tc.host},
		}}
		resp, err := client.Get("https://" + tlsAddr + "/tls")
		if err != nil {
			t.Fatalf("%s: %v (the certificate for this SNI name was not chosen?)", tc.host, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" {
			t.Errorf("%s: %s %d, want HTTP/2.0 200", tc.host, resp.Proto, resp.StatusCode)
		}
		if !strings.Contains(string(body), `"path":"/tls"`) || !strings.Contains(string(body), `"X-Forwarded-Proto":["https"]`) {
			t.Errorf("%s: upstream saw %s", tc.host, body)
		}
		client.CloseIdleConnections()
	}
}

// TestDeadUpstreamIsEjected: one of two targets dies mid-test; passive
// outlier detection ejects it and traffic continues on the other.
func TestDeadUpstreamIsEjected(t *testing.T) {
	skipShort(t)
	alive := startEcho(t, "echo-alive")
	doomedAddr := freeAddr(t)
	doomed := start(t, "echo-doomed", built.echo, nil, "--listen", doomedAddr, "--name", "echo-doomed")
	doomed.waitFor("echo listening on")
	dp := gatewayFor(t, oneRoute("http", []string{alive, doomedAddr},
		"  healthCheck: {passive: {consecutiveFailures: 2, ejectionTime: 30s, maxEjectionPercent: 50}}\n"))

	seen := map[string]int{}
	for range 10 {
		code, body, err := dp.get("/before")
		if err != nil || code != 200 {
			t.Fatalf("before the kill: %d %v %s", code, err, body)
		}
		seen[upstreamName(body)]++
	}
	if seen["echo-alive"] == 0 || seen["echo-doomed"] == 0 {
		t.Fatalf("traffic did not reach both targets before the kill: %v", seen)
	}

	doomed.stop()
	failures := 0
	for range 10 {
		if code, _, _ := dp.get("/during"); code != 200 {
			failures++
		}
	}
	if failures > 2 {
		t.Errorf("%d requests failed after the kill; passive ejection after 2 failures should bound that at 2", failures)
	}
	for i := range 100 {
		code, body, err := dp.get("/after")
		if err != nil || code != 200 || upstreamName(body) != "echo-alive" {
			t.Fatalf("request %d after ejection: %d %v %s", i, code, err, body)
		}
	}
}

func upstreamName(body string) string {
	_, rest, ok := strings.Cut(body, `"upstream":"`)
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, `"`)
	return name
}

// TestGracefulShutdownLosesNoRequest: SIGTERM while requests are in flight;
// every one of them completes and the data plane exits cleanly.
func TestGracefulShutdownLosesNoRequest(t *testing.T) {
	skipShort(t)
	const inFlight = 20
	arrived := make(chan struct{}, inFlight)
	up := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		time.Sleep(time.Second)
		fmt.Fprint(w, "done")
	}))
	dp := gatewayFor(t, oneRoute("http", []string{up}, ""), "--drain-timeout", "10s")

	var wg sync.WaitGroup
	results := make(chan string, inFlight)
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body, err := dp.get("/slow")
			results <- fmt.Sprintf("%d %s %v", code, body, err)
		}()
	}
	for range inFlight {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("requests did not reach the upstream")
		}
	}
	if err := dp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r != "200 done <nil>" {
			t.Errorf("an in-flight request was lost on SIGTERM: %s", r)
		}
	}
	select {
	case <-dp.done:
		if dp.err != nil {
			t.Errorf("data plane exited with %v after draining", dp.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("data plane did not exit after draining")
	}
}

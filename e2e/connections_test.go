package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMaxConnections: a data plane with --max-connections 20 holds under
// 40 idle keep-alive clients (each made one request): it keeps at most 20
// connections, closing the longest-idle ones, and a fresh client is served
// promptly. MERIDIAN_MAX_HEADERS reaches the traffic handler too.
func TestMaxConnections(t *testing.T) {
	skipShort(t)
	const max, idle = 20, 40
	echo := startEcho(t, "echo")
	cp := startControlplane(t, "cp", t.TempDir(), "")
	dp := startDataplaneArgs(t, "dp-1", t.TempDir(), []string{"MERIDIAN_MAX_HEADERS=10"}, []string{cp.addr},
		[]string{"--max-connections", strconv.Itoa(max)})
	v := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", writeFile(t, "g.yaml", oneRoute("http", []string{echo}, ""))))
	waitSynced(t, cp.addr, v, "dp-1")

	for i := range idle {
		c, err := net.Dial("tcp", dp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(c, "GET /idle HTTP/1.1\r\nHost: gw.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("idle client %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("idle client %d: status %d", i, resp.StatusCode)
		}
	}

	// Bounds are generous: the machine may be busy; what matters is that
	// the fresh client is not left waiting for an idle timeout (120 s).
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	start := time.Now()
	resp, err := client.Get("http://" + dp.addr + "/fresh")
	if err != nil {
		t.Fatalf("fresh client: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("fresh client: status %d", resp.StatusCode)
	}
	t.Logf("fresh client served in %v", time.Since(start))

	metrics := "http://" + dp.admin + "/metrics"
	if open := scrapeValue(t, metrics, "meridian_dataplane_connections_open"); open > max {
		t.Errorf("connections_open = %v, want at most %d", open, max)
	}
	if n := scrapeValue(t, metrics, `meridian_dataplane_connections_rejected_total{reason="idle_reclaimed"}`); n < idle-max+1 {
		t.Errorf("idle_reclaimed = %v, want at least %d", n, idle-max+1)
	}
	if !strings.Contains(dp.out.String(), "connection limit reached") {
		t.Error("no warning in the log")
	}

	req, _ := http.NewRequest("GET", "http://"+dp.addr+"/headers", nil)
	for i := range 11 {
		req.Header.Set(fmt.Sprintf("X-H%d", i), "v")
	}
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("13 header fields with MERIDIAN_MAX_HEADERS=10: status %d, want 431", resp.StatusCode)
	}
}

// scrapeValue scrapes url and returns the value of the sample series
// (name and labels exactly as exposed); it fails t when there is none.
func scrapeValue(t *testing.T, url, series string) float64 {
	t.Helper()
	v, ok := seriesValue(t, scrape(t, url), series)
	if !ok {
		t.Fatalf("%s not in %s", series, url)
	}
	return v
}

// scrape returns the exposition text url serves.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// seriesValue finds the sample series (name and labels exactly as
// exposed) in an exposition text.
func seriesValue(t *testing.T, text, series string) (float64, bool) {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f, true
		}
	}
	return 0, false
}

package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestConnectionsRecords(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := New(reg).Connections()
	c.SetOpen(7)
	c.Reclaimed()
	c.Reclaimed()
	c.Refused()

	want := `
# HELP meridian_dataplane_connections_open Client connections open on the traffic listeners. Upgraded connections (WebSocket) leave the count once their handshake is answered.
# TYPE meridian_dataplane_connections_open gauge
meridian_dataplane_connections_open 7
# HELP meridian_dataplane_connections_rejected_total Client connections closed because --max-connections was reached, by reason: idle_reclaimed (the longest-idle keep-alive connection, closed to admit a new one) or at_capacity (a new connection, closed at once because none was idle).
# TYPE meridian_dataplane_connections_rejected_total counter
meridian_dataplane_connections_rejected_total{reason="at_capacity"} 1
meridian_dataplane_connections_rejected_total{reason="idle_reclaimed"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"meridian_dataplane_connections_open", "meridian_dataplane_connections_rejected_total"); err != nil {
		t.Error(err)
	}
}

func TestNilConnectionsRecordNothing(t *testing.T) {
	var m *Metrics
	c := m.Connections()
	if c != nil {
		t.Fatal("a nil Metrics handed out a recorder")
	}
	c.SetOpen(1)
	c.Reclaimed()
	c.Refused()
}

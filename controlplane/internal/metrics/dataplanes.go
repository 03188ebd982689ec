package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// DataplaneLister reads the status of the whole fleet, with each data
// plane's state derived against the current version.
type DataplaneLister interface {
	ListDataplanes(ctx context.Context) ([]*meridianv1.DataplaneStatus, uint64, error)
}

// DataplaneCollector reports how many data planes are in each state. It
// reads the fleet from the store at scrape time, so every replica reports
// the whole fleet, the same way `gatewayctl dataplanes` does.
type DataplaneCollector struct {
	lister  DataplaneLister
	timeout time.Duration
	desc    *prometheus.Desc
}

// NewDataplaneCollector returns a collector reading the fleet from lister,
// waiting at most timeout for it during a scrape.
func NewDataplaneCollector(lister DataplaneLister, timeout time.Duration) *DataplaneCollector {
	return &DataplaneCollector{
		lister:  lister,
		timeout: timeout,
		desc: prometheus.NewDesc(namespace+"_dataplanes",
			"Data planes the fleet has seen, by state as `gatewayctl dataplanes` shows it; every replica reports the whole fleet.",
			[]string{"state"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *DataplaneCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector. When the store cannot answer,
// it reports an error for this metric alone rather than zeros, which would
// look like a fleet that vanished.
func (c *DataplaneCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	dps, _, err := c.lister.ListDataplanes(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, fmt.Errorf("list data planes: %w", err))
		return
	}
	counts := make(map[meridianv1.DataplaneState]int, 4)
	for _, d := range dps {
		counts[d.GetState()]++
	}
	// Every state is reported, zeros included, spelled as `gatewayctl
	// dataplanes` shows it.
	states := []struct {
		state meridianv1.DataplaneState
		label string
	}{
		{meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED, "SYNCED"},
		{meridianv1.DataplaneState_DATAPLANE_STATE_STALE, "STALE"},
		{meridianv1.DataplaneState_DATAPLANE_STATE_NACKED, "NACKED"},
		{meridianv1.DataplaneState_DATAPLANE_STATE_DISCONNECTED, "DISCONNECTED"},
	}
	for _, s := range states {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s.state]), s.label)
	}
}

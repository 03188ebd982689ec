// Package metricstest reads samples out of a Prometheus registry for
// tests.
package metricstest

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value returns the sample of the metric family name whose labels include
// labels, given as name, value pairs: a counter's or gauge's value, or a
// histogram's count. It fails t unless exactly one sample matches.
func Value(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	v, n := find(t, g, name, labels)
	if n != 1 {
		t.Fatalf("%s%v: %d samples match, want 1", name, labels, n)
	}
	return v
}

// Lookup is Value for a sample that may be absent, as a labelled counter
// is until it first counts: ok is false when none matches.
func Lookup(t testing.TB, g prometheus.Gatherer, name string, labels ...string) (v float64, ok bool) {
	t.Helper()
	v, n := find(t, g, name, labels)
	if n > 1 {
		t.Fatalf("%s%v: %d samples match, want at most 1", name, labels, n)
	}
	return v, n == 1
}

func find(t testing.TB, g prometheus.Gatherer, name string, labels []string) (float64, int) {
	t.Helper()
	if len(labels)%2 != 0 {
		t.Fatalf("labels %v are not name, value pairs", labels)
	}
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var v float64
	n := 0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !matches(m, labels) {
				continue
			}
			n++
			switch {
			case m.GetCounter() != nil:
				v = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				v = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				v = float64(m.GetHistogram().GetSampleCount())
			default:
				t.Fatalf("%s: unsupported metric type %v", name, f.GetType())
			}
		}
	}
	return v, n
}

// matches reports whether m has labels; a label m lacks has the value "",
// as in PromQL.
func matches(m *dto.Metric, labels []string) bool {
	for i := 0; i < len(labels); i += 2 {
		value := ""
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] {
				value = lp.GetValue()
				break
			}
		}
		if value != labels[i+1] {
			return false
		}
	}
	return true
}

// Names returns the names of the families g gathers whose name starts with
// prefix.
func Names(t testing.TB, g prometheus.Gatherer, prefix string) []string {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var out []string
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), prefix) {
			out = append(out, f.GetName())
		}
	}
	return out
}

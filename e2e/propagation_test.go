package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// BenchmarkPropagation measures how long a change takes to reach the fleet:
// from Apply returning to (a) every data plane serving the new version
// (its /config) and (b) every data plane's ACK being visible in the fleet
// status (ListDataplanes). Run with bench/propagation.sh (100 applies, 5
// data planes); it reports p50 and p99 of both.
func BenchmarkPropagation(b *testing.B) {
	const dataplanes = 5
	echo := startEcho(b, "echo")
	// Secure, as in production: TLS, tokens, enrolled data planes.
	cp := startSecureControlplane(b, "cp", b.TempDir(), "")
	token := joinToken(b, cp.ctlTarget(), "--uses", fmt.Sprint(dataplanes))
	var admins []string
	for i := range dataplanes {
		admins = append(admins, enrolled(b, fmt.Sprintf("dp-%d", i), token, cp.addr).admin)
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: caPool(b, cp), ServerName: "127.0.0.1"})
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	admin := meridianv1.NewAdminServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+readCtl(b, cp.ctlTarget()).Token)
	httpc := &http.Client{Timeout: 2 * time.Second}

	docs, err := config.Decode("bench.yaml", []byte(baseConfig(echo)))
	if err != nil {
		b.Fatal(err)
	}
	resources := config.Resources(docs)
	route := resources[1].GetRoute()

	var served, acked []time.Duration
	b.ResetTimer()
	for i := range b.N {
		// Each apply changes one header value, so each makes a new version.
		route.GetSpec().GetHeaders().GetRequest().GetSet()["X-Gateway"] = fmt.Sprintf("meridian-%d", i)
		resp, err := admin.Apply(ctx, &meridianv1.ApplyRequest{Resources: resources, Author: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		want := resp.GetVersion()
		pending := slices.Clone(admins)
		servedDone, ackedDone := false, false
		for !servedDone || !ackedDone {
			if !servedDone {
				pending = slices.DeleteFunc(pending, func(a string) bool { return appliedVersion(httpc, a) >= want })
				if len(pending) == 0 {
					served = append(served, time.Since(start))
					servedDone = true
				}
			}
			if !ackedDone {
				fl, err := admin.ListDataplanes(ctx, &meridianv1.ListDataplanesRequest{})
				if err != nil {
					b.Fatal(err)
				}
				n := 0
				for _, d := range fl.GetDataplanes() {
					if d.GetConnected() && d.GetAppliedVersion() >= want {
						n++
					}
				}
				if n == dataplanes {
					acked = append(acked, time.Since(start))
					ackedDone = true
				}
			}
			if time.Since(start) > 10*time.Second {
				b.Fatalf("version %d did not reach the fleet in 10s", want)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	b.StopTimer()
	report := func(name string, ds []time.Duration) {
		slices.Sort(ds)
		q := func(p float64) float64 {
			return float64(ds[min(len(ds)-1, int(p*float64(len(ds))))].Microseconds()) / 1000
		}
		b.ReportMetric(q(0.50), name+"-p50-ms")
		b.ReportMetric(q(0.99), name+"-p99-ms")
	}
	report("served", served)
	report("acked", acked)
}

func appliedVersion(c *http.Client, admin string) uint64 {
	resp, err := c.Get("http://" + admin + "/config")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var cfg appliedConfig
	if json.NewDecoder(resp.Body).Decode(&cfg) != nil {
		return 0
	}
	return cfg.Version
}

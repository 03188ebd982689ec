// Command gatewayctl is the operator's CLI for a Meridian API gateway: it
// talks to the control plane's AdminService.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meridian-gw/meridian/gatewayctl/internal/cmd"
)

// version is the build version, set with -ldflags "-X main.version=v1.2.3"
// (make stamps git describe); empty, gatewayctl reports the module version
// the Go toolchain recorded.
var version string

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmd.Run(ctx, os.Args[1:], &cmd.Options{
		In:        os.Stdin,
		Out:       os.Stdout,
		Err:       os.Stderr,
		LookupEnv: os.LookupEnv,
		Hostname:  os.Hostname,
		Now:       time.Now,
		Version:   version,
	})
	stop()
	os.Exit(code)
}

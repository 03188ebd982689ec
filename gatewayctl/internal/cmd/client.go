package cmd

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Message size limits of the connection. An apply may be up to
// config.MaxApplyBytes; sendHeadroom lets one just under it go out, so the
// control plane, not the transport, decides. Answers carry up to a whole
// configuration, and diffs up to two (old and new lines).
const (
	sendHeadroom   = 1 << 20
	maxSendMsgSize = config.MaxApplyBytes + sendHeadroom
	maxRecvMsgSize = 4 * config.MaxApplyBytes
)

// admin returns the AdminService client, connecting on first use so that
// commands which fail locally (validation, usage) never touch the network.
func (o *Options) admin() (meridianv1.AdminServiceClient, error) {
	if o.conn == nil {
		conn, err := grpc.NewClient(o.Server,
			grpc.WithTransportCredentials(o.transportCredentials()),
			grpc.WithUnaryInterceptor(bearer(o.Token)),
			grpc.WithDefaultCallOptions(
				grpc.MaxCallSendMsgSize(maxSendMsgSize),
				grpc.MaxCallRecvMsgSize(maxRecvMsgSize),
			),
		)
		if err != nil {
			return nil, usageErrorf("invalid --server %q: %w", o.Server, err)
		}
		o.conn = conn
	}
	return meridianv1.NewAdminServiceClient(o.conn), nil
}

// transportCredentials is TLS 1.2 or later, verified against o.roots (the
// system's when nil) for the --server host; plaintext with --insecure.
func (o *Options) transportCredentials() credentials.TransportCredentials {
	if o.Insecure {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    o.roots,
		ServerName: serverName(o.Server),
	})
}

// serverName is the host of a host:port address, which the control
// plane's certificate must name. For other target forms (dns:///...) it
// is "", and gRPC uses the target's authority.
func serverName(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || strings.Contains(host, "/") {
		return ""
	}
	return host
}

// Close closes the connection to the control plane, if one was made.
func (o *Options) Close() error {
	if o.conn == nil {
		return nil
	}
	err := o.conn.Close()
	o.conn = nil
	return err
}

// rpcContext bounds one call by --timeout.
func (o *Options) rpcContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, o.Timeout)
}

// bearer sends token as `authorization: Bearer <token>` on every call.
func bearer(token string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if token != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// author names who makes a change, $USER@hostname. Only a control plane
// started with --insecure records it (marked unauthenticated); a secure one
// records the principal of the token instead.
func (o *Options) author() string {
	user := ""
	if o.LookupEnv != nil {
		for _, key := range []string{"USER", "LOGNAME", "USERNAME"} {
			if v, ok := o.LookupEnv(key); ok && v != "" {
				user = v
				break
			}
		}
	}
	if user == "" {
		user = "unknown"
	}
	host := ""
	if o.Hostname != nil {
		if h, err := o.Hostname(); err == nil {
			host = strings.TrimSpace(h)
		}
	}
	if host == "" {
		return user
	}
	return fmt.Sprintf("%s@%s", user, host)
}

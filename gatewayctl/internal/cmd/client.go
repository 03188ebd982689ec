package cmd

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// admin returns the AdminService client, connecting on first use so that
// commands which fail locally (validation, usage) never touch the network.
func (o *Options) admin() (meridianv1.AdminServiceClient, error) {
	if o.conn == nil {
		// Plaintext for now: the control plane serves no TLS yet.
		conn, err := grpc.NewClient(o.Server,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithUnaryInterceptor(bearer(o.Token)),
		)
		if err != nil {
			return nil, usageErrorf("invalid --server %q: %w", o.Server, err)
		}
		o.conn = conn
	}
	return meridianv1.NewAdminServiceClient(o.conn), nil
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

// author names who makes a change, $USER@hostname; the control plane
// replaces it with the token's principal when tokens are on.
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

package admin

import (
	"bufio"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// TokenAuth checks bearer tokens on AdminService calls. Tokens never
// appear in logs or errors.
type TokenAuth struct {
	entries []tokenEntry
}

type tokenEntry struct {
	principal string
	token     []byte
}

// LoadTokens reads a tokens file: one "<principal> <token>" per line;
// empty lines and lines starting with # are ignored.
func LoadTokens(path string) (*TokenAuth, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("admin tokens: %w", err)
	}
	defer f.Close()
	a, err := ParseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("admin tokens %s: %w", path, err)
	}
	return a, nil
}

// ParseTokens reads the tokens file format from r.
func ParseTokens(r io.Reader) (*TokenAuth, error) {
	a := &TokenAuth{}
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want \"<principal> <token>\" (%d fields)", n, len(fields))
		}
		if prev, dup := seen[fields[1]]; dup {
			return nil, fmt.Errorf("line %d: same token as line %d", n, prev)
		}
		seen[fields[1]] = n
		a.entries = append(a.entries, tokenEntry{principal: fields[0], token: []byte(fields[1])})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(a.entries) == 0 {
		return nil, errors.New("no tokens (every admin call would be refused)")
	}
	return a, nil
}

// Authenticate returns the principal owning token.
func (a *TokenAuth) Authenticate(token string) (string, bool) {
	principal, found := "", 0
	for _, e := range a.entries {
		// Check every entry so the time taken does not say which matched.
		if subtle.ConstantTimeCompare(e.token, []byte(token)) == 1 {
			principal, found = e.principal, 1
		}
	}
	return principal, found == 1
}

type principalKey struct{}

// PrincipalFrom returns the authenticated principal of a call.
func PrincipalFrom(ctx context.Context) (string, bool) {
	p, ok := ctx.Value(principalKey{}).(string)
	return p, ok
}

func (a *TokenAuth) check(ctx context.Context, method string) (context.Context, error) {
	// Only the admin API takes tokens; data-plane streams are not
	// token-authenticated.
	if !strings.HasPrefix(method, "/"+meridianv1.AdminService_ServiceDesc.ServiceName+"/") {
		return ctx, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	if len(values) == 0 {
		return nil, status.Error(codes.Unauthenticated, "missing bearer token (authorization: Bearer <token>)")
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || token == "" {
		return nil, status.Error(codes.Unauthenticated, "authorization must be \"Bearer <token>\"")
	}
	principal, ok := a.Authenticate(strings.TrimSpace(token))
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "invalid token")
	}
	return context.WithValue(ctx, principalKey{}, principal), nil
}

// UnaryInterceptor authenticates unary AdminService calls.
func (a *TokenAuth) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.check(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor authenticates streaming AdminService calls.
func (a *TokenAuth) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.check(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &authedStream{ServerStream: ss, ctx: ctx})
	}
}

type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *authedStream) Context() context.Context { return s.ctx }

package cmd

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meridian-gw/meridian/gatewayctl/internal/printer"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// report prints err for a person and returns the exit code. Every line
// starts with "error: " so scripts can tell it from output.
func report(o *Options, c *cobra.Command, err error) int {
	if err == nil {
		return ExitOK
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	code := ExitFailure
	lines := describe(err, o)
	var ue usageError
	if errors.As(err, &ue) {
		code = ExitUsage
		if c != nil {
			lines[len(lines)-1] += fmt.Sprintf("; see '%s --help'", c.CommandPath())
		}
	}
	for _, line := range lines {
		// Server messages (a NACK relayed, an echo of our input) must not
		// drive the terminal.
		fmt.Fprintf(o.Err, "error: %s\n", printer.Text(redact(line, o.Token)))
	}
	return code
}

// describe turns err into lines a person can act on: gRPC status codes
// become plain words, configuration problems one line each.
func describe(err error, o *Options) []string {
	var list config.ErrorList
	if errors.As(err, &list) && len(list) > 0 {
		return list.Lines(config.MaxReported)
	}
	st, ok := grpcStatus(err)
	if !ok {
		if errors.Is(err, context.Canceled) {
			return []string{"interrupted"}
		}
		return strings.Split(err.Error(), "\n")
	}
	msg, server := st.Message(), o.Server
	switch st.Code() {
	case codes.Unavailable:
		return []string{connectionProblem(server, transportCause(msg), o.Insecure)}
	case codes.DeadlineExceeded:
		return []string{fmt.Sprintf("control plane at %s did not answer within %s; check it is healthy or raise --timeout", server, o.Timeout)}
	case codes.Canceled:
		return []string{"interrupted"}
	case codes.Unauthenticated:
		return []string{"not authenticated" + colon(msg) + "; check --token, MERIDIAN_TOKEN or the token in --config"}
	case codes.PermissionDenied:
		return []string{"permission denied" + colon(msg)}
	case codes.ResourceExhausted:
		return []string{"the control plane refused the request" + colon(msg)}
	case codes.Aborted:
		return []string{"conflict: " + msg + "; re-run diff and apply again"}
	case codes.Unimplemented:
		return []string{fmt.Sprintf("control plane at %s does not support this command (is it older than gatewayctl?): %s", server, msg)}
	case codes.InvalidArgument, codes.FailedPrecondition:
		if list := configErrors(st); len(list) > 0 {
			return list.Lines(config.MaxReported)
		}
		return strings.Split(msg, "\n")
	case codes.NotFound, codes.AlreadyExists, codes.OutOfRange:
		return strings.Split(msg, "\n")
	}
	return []string{fmt.Sprintf("control plane error (%s): %s", st.Code(), msg)}
}

// grpcStatus finds a gRPC status in err's chain. status.FromError would
// fold the wrapping text into the message; the status itself is cleaner.
func grpcStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus(), true
	}
	return nil, false
}

// configErrors returns the ConfigError details of st, when the server
// sent them.
func configErrors(st *status.Status) config.ErrorList {
	var list config.ErrorList
	for _, d := range st.Details() {
		if ce, ok := d.(*meridianv1.ConfigError); ok {
			list = append(list, config.FieldErrorFromProto(ce))
		}
	}
	return list
}

// transportCause shortens grpc-go's connection error, `connection error:
// desc = "transport: Error while dialing: dial tcp ...: connection
// refused"`, to its cause.
func transportCause(msg string) string {
	if i := strings.LastIndex(msg, "desc = "); i >= 0 {
		msg = strings.Trim(msg[i+len("desc = "):], `"`)
	}
	msg = strings.TrimPrefix(msg, "transport: ")
	msg = strings.TrimPrefix(msg, "Error while dialing: ")
	msg = strings.TrimPrefix(msg, "error while dialing: ")
	return msg
}

// connectionProblem explains why no connection came up: most often TLS
// on one side only, or a certificate gatewayctl cannot verify.
func connectionProblem(server, cause string, insecure bool) string {
	const handshake = "authentication handshake failed: "
	switch {
	case insecure && strings.Contains(cause, "server preface"):
		// A TLS server closes the connection on our plaintext preface.
		return fmt.Sprintf("the control plane at %s requires TLS: drop --insecure and pass --config or --ca", server)
	case insecure || !strings.HasPrefix(cause, handshake):
		return fmt.Sprintf("cannot reach control plane at %s: %s", server, cause)
	case strings.Contains(cause, "certificate signed by unknown authority"):
		return fmt.Sprintf("the control plane at %s presented a certificate gatewayctl does not trust: "+
			"pass --config <data-dir>/gatewayctl.yaml (the control plane writes it on first start) or --ca FILE", server)
	case strings.Contains(cause, "x509: certificate is valid for"), strings.Contains(cause, "x509: certificate is not valid for any names"),
		strings.Contains(cause, "x509: cannot validate certificate for"):
		return fmt.Sprintf("the control plane at %s presented a certificate for other names (%s): "+
			"connect by one of its names, or add this one to its --tls-san", server, x509Cause(cause))
	case strings.Contains(cause, "first record does not look like a TLS handshake"),
		// A plaintext server that closes first gives no TLS record at all.
		strings.HasSuffix(cause, ": EOF"), strings.Contains(cause, "connection reset"):
		return fmt.Sprintf("the control plane at %s does not speak TLS (started with --insecure?): pass --insecure", server)
	}
	return fmt.Sprintf("the TLS handshake with the control plane at %s failed: %s", server, strings.TrimPrefix(cause, handshake))
}

// x509Cause is the part of a handshake error from "x509: " on.
func x509Cause(cause string) string {
	if i := strings.Index(cause, "x509: "); i >= 0 {
		return cause[i:]
	}
	return cause
}

// colon is ": msg" with msg folded into one line, or "" for no message.
func colon(msg string) string {
	if msg = strings.Join(strings.Fields(msg), " "); msg == "" {
		return ""
	}
	return ": " + msg
}

// redact hides the token should anything (a server echoing it back, say)
// put it in a message.
func redact(s, token string) string {
	if token == "" {
		return s
	}
	return strings.ReplaceAll(s, token, "[redacted]")
}

package cmd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	lines := describe(err, o.Server, o.Timeout)
	var ue usageError
	if errors.As(err, &ue) {
		code = ExitUsage
		if c != nil {
			lines[len(lines)-1] += fmt.Sprintf("; see '%s --help'", c.CommandPath())
		}
	}
	for _, line := range lines {
		fmt.Fprintf(o.Err, "error: %s\n", redact(line, o.Token))
	}
	return code
}

// describe turns err into lines a person can act on: gRPC status codes
// become plain words, configuration problems one line each.
func describe(err error, server string, timeout time.Duration) []string {
	var list config.ErrorList
	if errors.As(err, &list) && len(list) > 0 {
		lines := make([]string, len(list))
		for i, e := range list {
			lines[i] = e.Error()
		}
		return lines
	}
	st, ok := grpcStatus(err)
	if !ok {
		if errors.Is(err, context.Canceled) {
			return []string{"interrupted"}
		}
		return strings.Split(err.Error(), "\n")
	}
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		return []string{fmt.Sprintf("cannot reach control plane at %s: %s", server, transportCause(msg))}
	case codes.DeadlineExceeded:
		return []string{fmt.Sprintf("control plane at %s did not answer within %s; check it is healthy or raise --timeout", server, timeout)}
	case codes.Canceled:
		return []string{"interrupted"}
	case codes.Unauthenticated:
		return []string{"not authorized: check --token or MERIDIAN_TOKEN"}
	case codes.PermissionDenied:
		return []string{"permission denied: " + msg}
	case codes.Aborted:
		return []string{"conflict: " + msg + "; re-run diff and apply again"}
	case codes.Unimplemented:
		return []string{fmt.Sprintf("control plane at %s does not support this command (is it older than gatewayctl?): %s", server, msg)}
	case codes.InvalidArgument, codes.FailedPrecondition:
		if lines := configErrorDetails(st); len(lines) > 0 {
			return lines
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

// configErrorDetails renders ConfigError details, when the server sent
// them, one per line.
func configErrorDetails(st *status.Status) []string {
	var lines []string
	for _, d := range st.Details() {
		if ce, ok := d.(*meridianv1.ConfigError); ok {
			lines = append(lines, config.FieldErrorFromProto(ce).Error())
		}
	}
	return lines
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

// redact hides the token should anything (a server echoing it back, say)
// put it in a message.
func redact(s, token string) string {
	if token == "" {
		return s
	}
	return strings.ReplaceAll(s, token, "[redacted]")
}

// Package cmd holds gatewayctl's commands: one file per command, each with
// a New<Verb>Command constructor, sharing the global Options.
package cmd

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/meridian-gw/meridian/gatewayctl/internal/printer"
)

// Exit codes, as DESIGN.md §6 promises.
const (
	ExitOK      = 0
	ExitFailure = 1 // a failure, or a difference found by diff
	ExitUsage   = 2 // unknown command or flag, wrong arguments
)

// envPrefix is prepended to a flag's upper-snake name to find its
// environment variable: --dry-run reads MERIDIAN_DRY_RUN.
const envPrefix = "MERIDIAN_"

// Options are the global flags and the surroundings a command runs in.
// Commands read the flags only after the root's PersistentPreRunE has
// merged the environment in.
type Options struct {
	Server  string
	Token   string
	Output  string
	Timeout time.Duration
	// Config is the gatewayctl.yaml to read; see applyConfig.
	Config string
	// CA is a PEM bundle that verifies the control plane's certificate.
	CA string
	// Insecure dials plaintext, for a control plane started with --insecure.
	Insecure bool
	// Version is what `gatewayctl version` reports as the client's version;
	// empty means the Go build information's.
	Version string

	In        io.Reader
	Out       io.Writer
	Err       io.Writer
	LookupEnv func(key string) (string, bool)
	Hostname  func() (string, error)
	Now       func() time.Time

	format printer.Format
	// roots verifies the control plane; nil means the system's roots.
	roots *x509.CertPool
	conn  *grpc.ClientConn
}

// Run builds the root command, executes args, prints any error to o.Err
// and returns the process exit code. It is all main does.
func Run(ctx context.Context, args []string, o *Options) int {
	root := NewRootCommand(o)
	root.SetArgs(args)
	c, err := root.ExecuteContextC(ctx)
	// Closing a client connection reports nothing worth acting on.
	_ = o.Close()
	return report(o, c, err)
}

// NewRootCommand returns the gatewayctl command with every subcommand.
func NewRootCommand(o *Options) *cobra.Command {
	root := &cobra.Command{
		Use:   "gatewayctl",
		Short: "Operate a Meridian API gateway through its control plane",
		Long: "gatewayctl applies, inspects and rolls back Meridian configuration and reports\n" +
			"the state of the data-plane fleet. Every flag also reads MERIDIAN_<FLAG_NAME>\n" +
			"from the environment (for example MERIDIAN_SERVER, MERIDIAN_TOKEN). A flag on the\n" +
			"command line wins over the environment, which wins over the config file.\n\n" +
			"The config file (--config, default $XDG_CONFIG_HOME/meridian/gatewayctl.yaml or\n" +
			"~/.config/meridian/gatewayctl.yaml when it exists) holds server, ca (PEM) or caFile,\n" +
			"token and insecure. A secure control plane writes one to <data-dir>/gatewayctl.yaml\n" +
			"on first start, with its address, CA and an admin token.",
		SilenceErrors: true,
		SilenceUsage:  true,
		// Cobra applies its default of 2 only on its own unknown-command
		// path, which unknownCommand replaces.
		SuggestionsMinimumDistance: 2,
		Args:                       unknownCommand,
		// No command is a usage error: the usage goes to stderr, so a
		// script that lost its command fails rather than printing help on
		// stdout; --help and `gatewayctl help` print it on stdout, exit 0.
		RunE: func(c *cobra.Command, _ []string) error {
			if _, err := io.WriteString(o.Err, c.UsageString()); err != nil {
				return err
			}
			return usageErrorf("no command given")
		},
		PersistentPreRunE: func(c *cobra.Command, _ []string) error {
			if err := bindEnv(c.Flags(), o.LookupEnv); err != nil {
				return err
			}
			if err := o.applyConfig(c.Flags()); err != nil {
				return err
			}
			return o.validate()
		},
	}
	root.SetIn(o.In)
	root.SetOut(o.Out)
	root.SetErr(o.Err)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageError{err}
	})

	f := root.PersistentFlags()
	f.StringVar(&o.Server, "server", "127.0.0.1:7400", "control-plane admin address (host:port)")
	f.StringVar(&o.Token, "token", "", "bearer token sent to the control plane (prefer MERIDIAN_TOKEN or --config: flags show up in ps)")
	f.StringVarP(&o.Output, "output", "o", "table", "output format: table, json or yaml")
	f.DurationVar(&o.Timeout, "timeout", 10*time.Second, "how long to wait for the control plane")
	f.StringVar(&o.Config, "config", "", "gatewayctl.yaml with server, CA and token (default $XDG_CONFIG_HOME/meridian/gatewayctl.yaml when it exists)")
	f.StringVar(&o.CA, "ca", "", "PEM CA bundle that verifies the control plane (default: the config file's, else the system's)")
	f.BoolVar(&o.Insecure, "insecure", false, "plaintext, no TLS: for a control plane started with --insecure")

	root.AddCommand(
		NewApplyCommand(o),
		NewDiffCommand(o),
		NewGetCommand(o),
		NewDeleteCommand(o),
		NewHistoryCommand(o),
		NewRollbackCommand(o),
		NewDataplanesCommand(o),
		NewTokensCommand(o),
		NewAuditCommand(o),
		NewVersionCommand(o),
	)
	return root
}

// validate checks the global flags once flags and environment are merged.
func (o *Options) validate() error {
	format, err := printer.ParseFormat(o.Output)
	if err != nil {
		return usageError{err}
	}
	o.format = format
	// A token read from a file often ends in a newline; it is not part of it.
	o.Token = strings.TrimSpace(o.Token)
	if strings.TrimSpace(o.Server) == "" {
		return usageError{errors.New("--server is empty: pass host:port of the control plane")}
	}
	if o.Timeout <= 0 {
		return usageError{fmt.Errorf("--timeout must be positive, got %s", o.Timeout)}
	}
	return nil
}

// applyConfig reads the config file, if there is one, into every
// connection setting that neither a flag nor the environment gave, then
// loads the CA bundle that verifies the control plane.
func (o *Options) applyConfig(flags *pflag.FlagSet) error {
	path := o.Config
	if !flags.Changed("config") && o.LookupEnv != nil {
		path = defaultConfigPath(o.LookupEnv, os.Stat)
	}
	cfg := &fileConfig{}
	if path != "" {
		c, err := loadConfig(path)
		if err != nil {
			return usageError{err}
		}
		cfg = c
	}
	if !flags.Changed("server") && cfg.Server != "" {
		o.Server = cfg.Server
	}
	if !flags.Changed("token") && cfg.Token != "" {
		o.Token = cfg.Token
	}
	if !flags.Changed("insecure") && cfg.Insecure {
		o.Insecure = true
	}
	return o.loadRoots(flags.Changed("ca"), cfg)
}

// loadRoots sets o.roots from --ca, else the config file's ca or caFile;
// with none, the system's roots verify the control plane.
func (o *Options) loadRoots(caFlag bool, cfg *fileConfig) error {
	if o.Insecure {
		if caFlag {
			return usageErrorf("--ca verifies TLS, but --insecure (or insecure: true in the config file) dials plaintext: drop one")
		}
		return nil
	}
	var (
		pem    []byte
		source string
	)
	switch {
	case caFlag:
		data, err := os.ReadFile(o.CA)
		if err != nil {
			return usageErrorf("--ca: %w", err)
		}
		pem, source = data, o.CA
	case cfg.CA != "":
		pem, source = []byte(cfg.CA), "the ca of the config file"
	case cfg.CAFile != "":
		data, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return usageErrorf("caFile of the config file: %w", err)
		}
		pem, source = data, cfg.CAFile
	default:
		return nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return usageErrorf("%s holds no PEM certificate", source)
	}
	o.roots = pool
	return nil
}

// printer returns the printer for the -o format, writing to o.Out.
func (o *Options) printer() *printer.Printer {
	return printer.New(o.Out, o.format)
}

// now is the clock the commands read.
func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// bindEnv sets every flag not given on the command line from its
// MERIDIAN_ environment variable. Doing it after parsing, rather than as a
// flag default, keeps environment values (the token above all) out of
// --help output. A flag set from the environment counts as Changed, so
// the config file, read next, fills in only what neither gave.
func bindEnv(flags *pflag.FlagSet, lookup func(string) (string, bool)) error {
	if lookup == nil {
		return nil
	}
	var err error
	flags.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "help" {
			return
		}
		name := EnvName(f.Name)
		v, ok := lookup(name)
		if !ok || v == "" {
			return
		}
		if serr := flags.Set(f.Name, v); serr != nil {
			// The value is not repeated: it could be a secret in the wrong variable.
			err = usageError{fmt.Errorf("invalid %s: not a valid --%s (%s)", name, f.Name, f.Value.Type())}
		}
	})
	return err
}

// EnvName is the environment variable a flag reads: --dry-run reads
// MERIDIAN_DRY_RUN.
func EnvName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// unknownCommand is the root's argument check: any positional argument is
// an unknown command. Cobra's own check for this cannot be told apart from
// other errors, so the root does it and marks it a usage error.
func unknownCommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usageError{errors.New(msg)}
}

// usageArgs marks the errors of a positional-argument check as usage errors.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// usageError is a mistake in how gatewayctl was called; it exits with 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usageErrorf formats a usage error.
func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// exitError ends the command with code and prints nothing more: the
// command has already said what there is to say (diff found differences).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

package cmd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// fileConfig is gatewayctl.yaml, which the control plane writes into its
// data dir on first start, like a kubeconfig.
type fileConfig struct {
	Server string `yaml:"server"`
	// CA is the PEM bundle that verifies the control plane.
	CA string `yaml:"ca"`
	// CAFile is a path to such a bundle, relative to the config file.
	CAFile   string `yaml:"caFile"`
	Token    string `yaml:"token"`
	Insecure bool   `yaml:"insecure"`
}

// maxConfigBytes bounds what --config reads: the file holds a few
// certificates at most.
const maxConfigBytes = 1 << 20

// defaultConfigPath is $XDG_CONFIG_HOME/meridian/gatewayctl.yaml, or
// ~/.config/meridian/gatewayctl.yaml without XDG_CONFIG_HOME, when that
// file exists; "" otherwise.
func defaultConfigPath(lookup func(string) (string, bool), stat func(string) (fs.FileInfo, error)) string {
	dir := ""
	if v, ok := lookup("XDG_CONFIG_HOME"); ok && v != "" {
		dir = v
	} else if home, ok := lookup("HOME"); ok && home != "" {
		dir = filepath.Join(home, ".config")
	}
	if dir == "" {
		return ""
	}
	path := filepath.Join(dir, "meridian", "gatewayctl.yaml")
	if _, err := stat(path); errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	// Any other outcome, a directory or no permission, shows up when
	// reading it, with its name.
	return path
}

// loadConfig reads and strictly decodes the config file at path. Its errors
// name the file (and the line, when there is one) but never repeat a
// value, which could be the token.
func loadConfig(path string) (*fileConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("config file %s: larger than %d bytes", path, maxConfigBytes)
	}
	cfg, err := decodeConfig(path, data)
	if err != nil {
		return nil, err
	}
	if cfg.CA != "" && cfg.CAFile != "" {
		return nil, fmt.Errorf("config file %s: set ca or caFile, not both", path)
	}
	if cfg.CAFile != "" && !filepath.IsAbs(cfg.CAFile) {
		cfg.CAFile = filepath.Join(filepath.Dir(path), cfg.CAFile)
	}
	return cfg, nil
}

// decodeConfig decodes one YAML document, rejecting unknown fields.
func decodeConfig(path string, data []byte) (*fileConfig, error) {
	var cfg fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(&cfg)
	switch {
	case errors.Is(err, io.EOF):
		return &cfg, nil // an empty file sets nothing
	case err != nil:
		return nil, yamlError(path, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: want one YAML document, found more", path)
	}
	return &cfg, nil
}

var (
	// yamlLine finds "line N: " in yaml.v3's messages.
	yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	// yamlUnknown is yaml.v3's message for an unknown field.
	yamlUnknown = regexp.MustCompile(`^field (.+?) not found in type `)
	// yamlValue is the quoted value some yaml.v3 messages repeat.
	yamlValue = regexp.MustCompile("\\s*`[^`]*`")
)

// yamlError rewrites yaml.v3's errors as "FILE:LINE: problem", the form
// gatewayctl uses for resource files too, one problem (the first) only.
func yamlError(path string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	// A value could be the token; the line number says enough.
	msg = yamlValue.ReplaceAllString(msg, "")
	m := yamlLine.FindStringSubmatch(msg)
	if m == nil {
		return fmt.Errorf("config file %s: %s", path, msg)
	}
	line, problem := m[1], m[2]
	if u := yamlUnknown.FindStringSubmatch(problem); u != nil {
		problem = fmt.Sprintf("unknown field %q (want server, ca, caFile, token or insecure)", u[1])
	}
	return fmt.Errorf("%s:%s: %s", path, line, problem)
}

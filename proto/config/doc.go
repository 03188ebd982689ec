// Package config is the one place that turns the user-facing YAML resources
// into the API's protobuf messages and decides whether a set of them is
// valid. The control plane, the data plane and gatewayctl all use it, so a
// configuration that one of them accepts, the others accept too.
//
// The YAML form follows DESIGN.md §2: kubectl-style documents with
// apiVersion, kind, metadata and spec; field names are the protobuf JSON
// names; enums are lower-case words; durations are Go duration strings.
package config

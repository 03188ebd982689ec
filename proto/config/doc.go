// Package config is the one place that turns the user-facing YAML resources
// into the API's protobuf messages and decides whether a set of them is
// valid. The control plane, the data plane and gatewayctl all use it, so a
// configuration that one of them accepts, the others accept too.
//
// The YAML form follows DESIGN.md §2: kubectl-style documents with
// apiVersion, kind, metadata and spec; field names are the protobuf JSON
// names; enums are lower-case words; durations are Go duration strings.
package config

// MaxApplyBytes is the one size limit of a configuration change: the
// encoded size of an apply request and of the whole configuration that
// results from it. gatewayctl checks it before sending and the control
// plane enforces it; a change past it is rejected with an error naming the
// limit. Twice this fits in one etcd transaction (the changed resources plus
// the history record holding the whole configuration).
const MaxApplyBytes = 8 << 20

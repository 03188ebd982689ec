// Package proxy forwards requests to upstreams. Handler is the data plane's
// traffic entry point: it reads the live configuration once per request,
// finds the route and hands over to that route's handler. Route is one
// route's forwarding step (rewrite, header edits, timeout, reverse proxy),
// built once per configuration.
package proxy

import (
	"net/http"
	"path"
	"strings"
)

// Routes resolves a request to the handler of the route it matches. The
// compiled configuration implements it.
type Routes interface {
	// Route returns the handler for r, or nil when no route matches. It may
	// record template parameters on r (r.SetPathValue).
	Route(r *http.Request) http.Handler
}

// Handler is the traffic http.Handler.
type Handler struct {
	current func() Routes
}

// NewHandler returns a Handler that calls current once per request to get
// the live configuration; current returns nil while none is applied.
func NewHandler(current func() Routes) *Handler {
	return &Handler{current: current}
}

// Canned JSON bodies, allocated once.
var (
	bodyNoRoute     = []byte(`{"error":"no route"}` + "\n")
	bodyNoConfig    = []byte(`{"error":"no configuration applied"}` + "\n")
	bodyBadPath     = []byte(`{"error":"invalid request path"}` + "\n")
	bodyNoTargets   = []byte(`{"error":"upstream has no targets"}` + "\n")
	bodyBadGateway  = []byte(`{"error":"upstream error"}` + "\n")
	bodyGatewayTime = []byte(`{"error":"upstream timeout"}` + "\n")
)

// ServeHTTP routes r with the configuration live when it arrived; the
// request finishes on that configuration even if a new one is swapped in.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	routes := h.current()
	if routes == nil {
		writeJSON(w, http.StatusServiceUnavailable, bodyNoConfig)
		return
	}
	if !normalizePath(r) {
		writeJSON(w, http.StatusBadRequest, bodyBadPath)
		return
	}
	next := routes.Route(r)
	if next == nil {
		writeJSON(w, http.StatusNotFound, bodyNoRoute)
		return
	}
	next.ServeHTTP(w, r)
}

// normalizePath resolves "." and ".." segments and merges slashes, so that
// /public/../admin cannot match a /public route and then reach /admin on
// an upstream that normalises. It reports false for a path that is not
// absolute (CONNECT authority or "*" forms).
func normalizePath(r *http.Request) bool {
	p := r.URL.Path
	if !strings.HasPrefix(p, "/") {
		return false
	}
	if !strings.Contains(p, "/.") && !strings.Contains(p, "//") {
		return true
	}
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	if clean != p {
		r.URL.Path = clean
		r.URL.RawPath = ""
	}
	return true
}

// Header values shared by every error response; net/http never mutates them.
var (
	jsonContentType = []string{"application/json"}
	nosniff         = []string{"nosniff"}
)

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Content-Type-Options"] = nosniff
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client may be gone; nothing to do
}

package proxy

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"slices"
	"strings"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// RouteConfig is what NewRoute needs to build one route's handler.
type RouteConfig struct {
	Name string
	Spec *meridianv1.RouteSpec
	// Pool is the route's upstream.
	Pool *upstream.Pool
	// Buffers is shared by every route.
	Buffers *BufferPool
	// Log receives upstream errors.
	Log *slog.Logger
	// ErrorLog receives net/http's own proxy messages; nil uses Log.
	ErrorLog *log.Logger
}

// Route forwards the requests of one route to its upstream. It is
// immutable; a new configuration builds new Routes.
type Route struct {
	name        string
	pool        *upstream.Pool
	timeout     time.Duration
	stripPrefix string
	addPrefix   string
	path        []pathPart // rewrite.path, nil when unset
	host        string
	request     headerOps
	response    headerOps
	rp          *httputil.ReverseProxy
	log         *slog.Logger
}

// NewRoute builds the handler of one route. Errors are *config.FieldError.
func NewRoute(c RouteConfig) (*Route, error) {
	spec := c.Spec
	rw := spec.GetRewrite()
	rt := &Route{
		name:        c.Name,
		pool:        c.Pool,
		timeout:     spec.GetTimeout().AsDuration(),
		stripPrefix: rw.GetStripPrefix(),
		addPrefix:   rw.GetPrefix(),
		host:        rw.GetHost(),
		request:     compileHeaderOps(spec.GetHeaders().GetRequest()),
		response:    compileHeaderOps(spec.GetHeaders().GetResponse()),
		log:         c.Log,
	}
	if p := rw.GetPath(); p != "" {
		parts, err := parsePathRewrite(p)
		if err != nil {
			return nil, &config.FieldError{Kind: config.KindRoute, Name: c.Name, Path: "spec.rewrite.path", Msg: err.Error()}
		}
		rt.path = parts
	}
	errorLog := c.ErrorLog
	if errorLog == nil {
		errorLog = slog.NewLogLogger(c.Log.Handler(), slog.LevelWarn)
	}
	rt.rp = &httputil.ReverseProxy{
		Rewrite:      rt.rewrite,
		Transport:    c.Pool.Transport(),
		BufferPool:   c.Buffers,
		ErrorHandler: rt.proxyError,
		ErrorLog:     errorLog,
	}
	if !rt.response.empty() {
		rt.rp.ModifyResponse = rt.modifyResponse
	}
	return rt, nil
}

// Name returns the route's name.
func (rt *Route) Name() string { return rt.name }

// Upstream returns the route's upstream pool.
func (rt *Route) Upstream() *upstream.Pool { return rt.pool }

// ServeHTTP forwards r to the next target of the route's upstream.
func (rt *Route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(rt.pool.Targets()) == 0 {
		writeJSON(w, http.StatusServiceUnavailable, bodyNoTargets)
		return
	}
	if rt.timeout > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), rt.timeout)
		defer cancel()
		r = r.WithContext(ctx)
	}
	rt.rp.ServeHTTP(w, r)
}

func (rt *Route) rewrite(pr *httputil.ProxyRequest) {
	out := pr.Out
	addr, _ := rt.pool.Next() // ServeHTTP checked there are targets
	out.URL.Scheme = rt.pool.Scheme()
	out.URL.Host = addr
	rt.rewritePath(pr)
	// The client's Host is kept (as Envoy and Traefik do) unless rewritten.
	if rt.host != "" {
		out.Host = rt.host
	}
	// Append to the client's X-Forwarded-For chain like nginx's
	// $proxy_add_x_forwarded_for; Rewrite starts from a clean slate.
	if prior := pr.In.Header["X-Forwarded-For"]; prior != nil {
		out.Header["X-Forwarded-For"] = prior
	}
	pr.SetXForwarded()
	rt.request.apply(out.Header)
}

func (rt *Route) rewritePath(pr *httputil.ProxyRequest) {
	u := pr.Out.URL
	if rt.path != nil {
		u.Path = expandPath(rt.path, pr.In)
		u.RawPath = ""
		return
	}
	if rt.stripPrefix == "" && rt.addPrefix == "" {
		return
	}
	u.Path = rt.editPath(u.Path)
	if u.RawPath != "" {
		// Keep escapes such as %2F when the prefix is plain on both forms.
		u.RawPath = rt.editPath(u.RawPath)
	}
}

func (rt *Route) editPath(p string) string {
	if rt.stripPrefix != "" {
		if rest, ok := strings.CutPrefix(p, rt.stripPrefix); ok {
			p = rest
			if !strings.HasPrefix(p, "/") {
				p = "/" + p
			}
		}
	}
	if rt.addPrefix != "" {
		if strings.HasSuffix(rt.addPrefix, "/") {
			p = rt.addPrefix + p[1:]
		} else {
			p = rt.addPrefix + p
		}
	}
	return p
}

func (rt *Route) modifyResponse(resp *http.Response) error {
	rt.response.apply(resp.Header)
	return nil
}

func (rt *Route) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	status, body := http.StatusBadGateway, bodyBadGateway
	if errors.Is(err, context.DeadlineExceeded) {
		status, body = http.StatusGatewayTimeout, bodyGatewayTime
	}
	level := slog.LevelWarn
	if errors.Is(r.Context().Err(), context.Canceled) {
		level = slog.LevelDebug // the client went away
	}
	rt.log.LogAttrs(r.Context(), level, "upstream error",
		slog.String("route", rt.name), slog.String("upstream", rt.pool.Name()),
		slog.Int("status", status), slog.String("error", err.Error()))
	writeJSON(w, status, body)
}

// headerOps are applied in the order remove, set, add.
type headerOps struct {
	remove []string
	set    []headerValue
	add    []headerValue
}

type headerValue struct {
	key    string
	values []string // one value, capacity 1 so an append elsewhere copies
}

func compileHeaderOps(ops *meridianv1.HeaderOps) headerOps {
	var h headerOps
	for _, k := range ops.GetRemove() {
		h.remove = append(h.remove, http.CanonicalHeaderKey(k))
	}
	h.set = sortedValues(ops.GetSet())
	h.add = sortedValues(ops.GetAdd())
	return h
}

func sortedValues(m map[string]string) []headerValue {
	var out []headerValue
	for k, v := range m {
		out = append(out, headerValue{key: http.CanonicalHeaderKey(k), values: []string{v}[:1:1]})
	}
	slices.SortFunc(out, func(a, b headerValue) int { return strings.Compare(a.key, b.key) })
	return out
}

func (h *headerOps) empty() bool {
	return len(h.remove) == 0 && len(h.set) == 0 && len(h.add) == 0
}

func (h *headerOps) apply(hdr http.Header) {
	for _, k := range h.remove {
		delete(hdr, k)
	}
	for _, kv := range h.set {
		hdr[kv.key] = kv.values
	}
	for _, kv := range h.add {
		hdr[kv.key] = append(hdr[kv.key], kv.values[0])
	}
}

// pathPart is a literal segment or a {param} of rewrite.path.
type pathPart struct {
	text  string
	param bool
}

func parsePathRewrite(s string) ([]pathPart, error) {
	t, err := config.ParseTemplate(s)
	if err != nil {
		return nil, err
	}
	parts := make([]pathPart, len(t.Segments))
	for i, seg := range t.Segments {
		if seg.Param != "" {
			parts[i] = pathPart{text: seg.Param, param: true}
		} else {
			parts[i] = pathPart{text: seg.Literal}
		}
	}
	return parts, nil
}

// expandPath fills rewrite.path's {params} from the route's template match;
// a parameter the match did not bind expands to "".
func expandPath(parts []pathPart, in *http.Request) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteByte('/')
		if p.param {
			b.WriteString(in.PathValue(p.text))
		} else {
			b.WriteString(p.text)
		}
	}
	return b.String()
}

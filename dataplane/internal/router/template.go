package router

import (
	"slices"
	"strings"

	"github.com/meridian-gw/meridian/proto/config"
)

// template is a parsed path template such as /users/{id}/files/{path...}.
// Every segment is either literal or a whole-segment parameter; a
// catch-all parameter must be last and also matches an empty rest.
type template struct {
	segs   []tseg
	params int
}

type tseg struct {
	literal  string
	name     string
	param    bool
	catchAll bool
}

// parseTemplate uses the parser the validator uses, so both agree on the
// syntax.
func parseTemplate(s string) (*template, error) {
	ct, err := config.ParseTemplate(s)
	if err != nil {
		return nil, err
	}
	t := &template{}
	for _, seg := range ct.Segments {
		switch {
		case seg.CatchAll:
			t.segs = append(t.segs, tseg{name: seg.Param, catchAll: true})
		case seg.Param != "":
			t.segs = append(t.segs, tseg{name: seg.Param, param: true})
		default:
			t.segs = append(t.segs, tseg{literal: seg.Literal})
		}
		if seg.Param != "" {
			t.params++
		}
	}
	return t, nil
}

// tnode is a segment trie of templates.
type tnode[T any] struct {
	static   map[string]*tnode[T]
	param    *tnode[T]
	routes   []*route[T] // templates ending at this node
	catchAll []*route[T] // templates whose {rest...} starts below this node
}

func (n *tnode[T]) insert(r *route[T]) {
	cur := n
	for _, s := range r.tmpl.segs {
		switch {
		case s.catchAll:
			cur.catchAll = append(cur.catchAll, r)
			return
		case s.param:
			if cur.param == nil {
				cur.param = &tnode[T]{}
			}
			cur = cur.param
		default:
			if cur.static == nil {
				cur.static = map[string]*tnode[T]{}
			}
			next := cur.static[s.literal]
			if next == nil {
				next = &tnode[T]{}
				cur.static[s.literal] = next
			}
			cur = next
		}
	}
	cur.routes = append(cur.routes, r)
}

func (n *tnode[T]) finish() {
	slices.SortFunc(n.routes, compareRoutes[T])
	slices.SortFunc(n.catchAll, compareRoutes[T])
	for _, c := range n.static {
		c.finish()
	}
	if n.param != nil {
		n.param.finish()
	}
}

// find matches rest, the path after the slash that leads to this node's
// children. Literal beats parameter beats catch-all, with backtracking so a
// filtered-out candidate lets the next one try.
func (n *tnode[T]) find(rest string, q *query) *route[T] {
	seg, after, more := strings.Cut(rest, "/")
	if c := n.static[seg]; c != nil {
		if r := c.descend(after, more, q); r != nil {
			return r
		}
	}
	if n.param != nil && seg != "" {
		if r := n.param.descend(after, more, q); r != nil {
			return r
		}
	}
	return firstAccepting(n.catchAll, q)
}

func (n *tnode[T]) descend(after string, more bool, q *query) *route[T] {
	if !more {
		return firstAccepting(n.routes, q)
	}
	return n.find(after, q)
}

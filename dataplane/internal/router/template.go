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
	segs     []tseg
	names    []string // parameter names in order
	paramSeg []int    // segment index of each parameter
	catchAll bool     // the last parameter is a catch-all
}

type tseg struct {
	literal  string
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
	for i, seg := range ct.Segments {
		switch {
		case seg.CatchAll:
			t.segs = append(t.segs, tseg{catchAll: true})
			t.catchAll = true
		case seg.Param != "":
			t.segs = append(t.segs, tseg{param: true})
		default:
			t.segs = append(t.segs, tseg{literal: seg.Literal})
		}
		if seg.Param != "" {
			t.names = append(t.names, seg.Param)
			t.paramSeg = append(t.paramSeg, i)
		}
	}
	return t, nil
}

// smallStatic is the child count up to which comparing each key beats
// hashing the segment: string comparisons of equal length call memequal,
// so only a couple are cheaper than one hash.
const smallStatic = 2

// tnode is a segment trie of templates and exact paths.
type tnode struct {
	// Static children: up to smallStatic in keys/kids, scanned linearly;
	// beyond that also in static.
	keys     []string
	kids     []*tnode
	static   *segTable
	building map[string]*tnode // static children while inserting; nil after finish
	param    *tnode
	exact    []*route // exact paths ending at this node
	routes   []*route // templates ending at this node
	catchAll []*route // templates whose {rest...} starts below this node
}

func (n *tnode) child(seg string) *tnode {
	if n.static != nil {
		return n.static.get(seg)
	}
	for i, k := range n.keys {
		if k == seg {
			return n.kids[i]
		}
	}
	return nil
}

// insert adds a template or exact route.
func (n *tnode) insert(r *route) {
	if r.kind == kindExact {
		cur := n
		for _, lit := range strings.Split(r.path[1:], "/") {
			cur = cur.add(lit)
		}
		cur.exact = append(cur.exact, r)
		return
	}
	cur := n
	for _, s := range r.tmpl.segs {
		switch {
		case s.catchAll:
			cur.catchAll = append(cur.catchAll, r)
			return
		case s.param:
			if cur.param == nil {
				cur.param = &tnode{}
			}
			cur = cur.param
		default:
			cur = cur.add(s.literal)
		}
	}
	cur.routes = append(cur.routes, r)
}

// add returns the static child for literal, creating it if needed.
func (n *tnode) add(literal string) *tnode {
	if next := n.building[literal]; next != nil {
		return next
	}
	if n.building == nil {
		n.building = map[string]*tnode{}
	}
	next := &tnode{}
	n.building[literal] = next
	n.keys = append(n.keys, literal)
	n.kids = append(n.kids, next)
	return next
}

// finish sorts candidates and moves large child sets into a map. No insert
// may follow.
func (n *tnode) finish() {
	slices.SortFunc(n.exact, compareRoutes)
	slices.SortFunc(n.routes, compareRoutes)
	slices.SortFunc(n.catchAll, compareRoutes)
	n.building = nil
	if len(n.keys) > smallStatic {
		n.static = newSegTable(n.keys, n.kids)
	}
	for _, c := range n.kids {
		c.finish()
	}
	if n.param != nil {
		n.param.finish()
	}
}

// find matches rest, the path after the slash that leads to this node's
// children. Literal beats parameter beats catch-all, with backtracking so a
// filtered-out candidate lets the next one try. The all-literal branch is
// walked first, so exact paths come before every template.
func (n *tnode) find(rest string, q *query) *route {
	for {
		seg, after, more := rest, "", false
		if i := slash(rest); i >= 0 {
			seg, after, more = rest[:i], rest[i+1:], true
		}
		c := n.child(seg)
		if n.param != nil || len(n.catchAll) > 0 {
			return n.findOrBacktrack(c, seg, after, more, q)
		}
		// Only a literal can match here, so there is nothing to come back
		// to: walk down without recursing.
		if c == nil {
			return nil
		}
		if !more {
			return c.end(q)
		}
		n, rest = c, after
	}
}

// findOrBacktrack is find at a node with alternatives to the literal child c.
func (n *tnode) findOrBacktrack(c *tnode, seg, after string, more bool, q *query) *route {
	if c != nil {
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

func (n *tnode) descend(after string, more bool, q *query) *route {
	if !more {
		return n.end(q)
	}
	return n.find(after, q)
}

// end picks among the routes whose path ends at n.
func (n *tnode) end(q *query) *route {
	if r := firstAccepting(n.exact, q); r != nil {
		return r
	}
	return firstAccepting(n.routes, q)
}

// each calls fn with every template route matching rest.
func (n *tnode) each(rest string, fn func(*route)) {
	seg, after, more := strings.Cut(rest, "/")
	visit := func(c *tnode) {
		if !more {
			for _, r := range c.exact {
				fn(r)
			}
			for _, r := range c.routes {
				fn(r)
			}
			return
		}
		c.each(after, fn)
	}
	if c := n.child(seg); c != nil {
		visit(c)
	}
	if n.param != nil && seg != "" {
		visit(n.param)
	}
	for _, r := range n.catchAll {
		fn(r)
	}
}

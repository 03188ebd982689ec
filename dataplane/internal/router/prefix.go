package router

import (
	"bytes"
	"slices"
	"strings"
)

// pnode is a byte-wise radix tree of path prefixes. Prefixes are plain
// string prefixes, so the tree cannot be keyed by segments.
type pnode struct {
	label    string   // the bytes leading into this node
	routes   []*route // prefixes ending at this node
	first    []byte   // first byte of each child's label
	children []*pnode
}

// insert adds r under key, the part of its prefix below n.
func (n *pnode) insert(key string, r *route) {
	for key != "" {
		i := slices.Index(n.first, key[0])
		if i < 0 {
			n.first = append(n.first, key[0])
			n.children = append(n.children, &pnode{label: key, routes: []*route{r}})
			return
		}
		c := n.children[i]
		l := commonPrefix(key, c.label)
		if l < len(c.label) {
			split := &pnode{label: c.label[:l], first: []byte{c.label[l]}, children: []*pnode{c}}
			c.label = c.label[l:]
			n.children[i] = split
			c = split
		}
		key = key[l:]
		n = c
	}
	n.routes = append(n.routes, r)
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

func (n *pnode) finish() {
	slices.SortFunc(n.routes, compareRoutes)
	for _, c := range n.children {
		c.finish()
	}
}

// find returns the route of the longest prefix of rest (the path below n)
// that accepts q; a shorter prefix is tried when a longer one's routes all
// reject q.
func (n *pnode) find(rest string, q *query) *route {
	if rest != "" {
		if i := bytes.IndexByte(n.first, rest[0]); i >= 0 {
			if c := n.children[i]; strings.HasPrefix(rest, c.label) {
				if r := c.find(rest[len(c.label):], q); r != nil {
					return r
				}
			}
		}
	}
	return firstAccepting(n.routes, q)
}

// each calls fn with the routes of every prefix of rest.
func (n *pnode) each(rest string, fn func(*route)) {
	for _, r := range n.routes {
		fn(r)
	}
	if rest == "" {
		return
	}
	if i := slices.Index(n.first, rest[0]); i >= 0 {
		if c := n.children[i]; strings.HasPrefix(rest, c.label) {
			c.each(rest[len(c.label):], fn)
		}
	}
}

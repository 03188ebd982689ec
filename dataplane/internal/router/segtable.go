package router

// segTable is an immutable open-addressing hash table from path segment to
// value. It replaces a Go map for trie nodes with many static children:
// segments are short, and FNV-1a over a few bytes with one probe is about
// twice as fast as a map lookup, which matters because it runs once per
// segment of every request.
//
// The keys come from configuration and the table is at most half full, so
// however a request picks its segment, a lookup probes a bounded run.
type segTable struct {
	mask  uint64
	slots []segSlot
}

type segSlot struct {
	used bool
	key  string
	val  *tnode
}

// newSegTable builds a table of distinct keys.
func newSegTable(keys []string, vals []*tnode) *segTable {
	size := uint64(1)
	for size < 2*uint64(len(keys)) {
		size <<= 1
	}
	t := &segTable{mask: size - 1, slots: make([]segSlot, size)}
	for i, k := range keys {
		j := fnv1a(k) & t.mask
		for t.slots[j].used {
			j = (j + 1) & t.mask
		}
		t.slots[j] = segSlot{used: true, key: k, val: vals[i]}
	}
	return t
}

func (t *segTable) get(key string) *tnode {
	for j := fnv1a(key) & t.mask; ; j = (j + 1) & t.mask {
		s := &t.slots[j]
		if !s.used {
			return nil
		}
		if s.key == key {
			return s.val
		}
	}
}

func fnv1a(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

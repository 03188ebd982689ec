package server_test

import (
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/meridian-gw/meridian/dataplane/internal/server"
)

// randomConn is a net.Conn whose Read returns in, split at random points.
type randomConn struct {
	scriptConn
	rng *rand.Rand
}

func (c *randomConn) Read(p []byte) (int, error) {
	c.chunk = 1 + c.rng.IntN(24)
	if c.rng.IntN(8) == 0 {
		c.chunk = 1 + c.rng.IntN(4096)
	}
	return c.scriptConn.Read(p)
}

// FuzzGuard checks that any stream, split anywhere, is read without a
// panic, that what Read returns before an error is a prefix of the
// stream (all of it when there is no error), and that the verdict does
// not depend on how the stream was split.
func FuzzGuard(f *testing.F) {
	for _, tc := range guardCases {
		f.Add([]byte(tc.input()), uint64(len(tc.name)))
	}
	f.Add([]byte(strings.Repeat(get, 3)), uint64(1))
	f.Fuzz(func(t *testing.T, in []byte, seed uint64) {
		var wholeRej, splitRej rejects
		whole := guarded(t, &scriptConn{in: in}, server.GuardConfig{Framing: true, Reject: wholeRej.add})
		wholeGot, wholeErr := readUntilError(whole, len(in)+1)
		split := guarded(t, &randomConn{scriptConn: scriptConn{in: in}, rng: rand.New(rand.NewPCG(seed, seed>>1|1))},
			server.GuardConfig{Framing: true, Reject: splitRej.add})
		splitGot, splitErr := readUntilError(split, 4096)

		for _, r := range []struct {
			got     []byte
			err     error
			rejects []string
		}{{wholeGot, wholeErr, wholeRej.list()}, {splitGot, splitErr, splitRej.list()}} {
			if !strings.HasPrefix(string(in), string(r.got)) {
				t.Fatalf("read %q, not a prefix of %q", r.got, in)
			}
			reason := reasonOf(r.err)
			switch {
			case reason == "" && (r.err != io.EOF || len(r.got) != len(in)):
				t.Fatalf("no rejection, but read %d of %d bytes, error %v", len(r.got), len(in), r.err)
			case reason == "" && len(r.rejects) != 0, reason != "" && (len(r.rejects) != 1 || r.rejects[0] != reason):
				t.Fatalf("error %v, rejects %v", r.err, r.rejects)
			}
		}
		if reasonOf(wholeErr) != reasonOf(splitErr) {
			t.Fatalf("in one read: %v; split: %v", wholeErr, splitErr)
		}
		if len(splitGot) < len(wholeGot) {
			t.Fatalf("split reads returned %d bytes, fewer than one read's %d", len(splitGot), len(wholeGot))
		}
	})
}

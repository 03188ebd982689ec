package auth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// Principal is an authenticated admin caller.
type Principal struct {
	Name string
	Role Role
}

type tokenEntry struct {
	Principal
	hash [sha256.Size]byte
}

// TokenFile holds the admin tokens of a tokens file: lines of
// "<principal> <role> <sha256 hex of the token>", so the file never holds
// a usable token. Watch reloads it when it changes; a file that no longer
// parses keeps the tokens last loaded.
type TokenFile struct {
	path string
	log  *slog.Logger

	mu      sync.RWMutex
	entries []tokenEntry
	stamp   fileStamp
}

// fileStamp tells whether a file changed since it was read.
type fileStamp struct {
	mod  time.Time
	size int64
}

// LoadTokenFile reads the tokens file at path. log receives reload
// problems; slog.Default() when nil.
func LoadTokenFile(path string, log *slog.Logger) (*TokenFile, error) {
	if log == nil {
		log = slog.Default()
	}
	f := &TokenFile{path: path, log: log}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *TokenFile) reload() error {
	st, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("admin tokens: %w", err)
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("admin tokens: %w", err)
	}
	entries, err := parseTokens(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("admin tokens %s: %w", f.path, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries, f.stamp = entries, fileStamp{st.ModTime(), st.Size()}
	return nil
}

// changed reports whether the file differs from what was loaded.
func (f *TokenFile) changed() bool {
	st, err := os.Stat(f.path)
	if err != nil {
		return false
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return st.ModTime() != f.stamp.mod || st.Size() != f.stamp.size
}

// Watch reloads the file every interval while it changes, until ctx is
// done.
func (f *TokenFile) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !f.changed() {
			continue
		}
		if err := f.reload(); err != nil {
			f.log.Error("admin tokens not reloaded; keeping the previous ones", "err", err)
			continue
		}
		f.log.Info("admin tokens reloaded", "path", f.path, "tokens", f.count())
	}
}

func (f *TokenFile) count() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.entries)
}

// Authenticate returns the principal whose token this is.
func (f *TokenFile) Authenticate(token string) (Principal, bool) {
	sum := sha256.Sum256([]byte(token))
	f.mu.RLock()
	defer f.mu.RUnlock()
	var found Principal
	ok := 0
	for _, e := range f.entries {
		// Every entry is compared, so the time taken does not say which matched.
		if subtle.ConstantTimeCompare(e.hash[:], sum[:]) == 1 {
			found, ok = e.Principal, 1
		}
	}
	return found, ok == 1
}

// parseTokens reads the tokens file format; empty lines and lines starting
// with # are ignored.
func parseTokens(r io.Reader) ([]tokenEntry, error) {
	var entries []tokenEntry
	seen := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		e, err := parseTokenLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if prev, dup := seen[e.hash]; dup {
			return nil, fmt.Errorf("line %d: same token hash as line %d", n, prev)
		}
		seen[e.hash] = n
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, errors.New("no tokens (every admin call would be refused)")
	}
	return entries, nil
}

func parseTokenLine(line string) (tokenEntry, error) {
	fields := strings.Fields(line)
	if len(fields) != 3 {
		// The line may hold a raw token in the old two-field format: not repeated.
		return tokenEntry{}, fmt.Errorf("want \"<principal> <role> <sha256 of token>\" (%d fields); hash a token with: printf %%s TOKEN | sha256sum", len(fields))
	}
	role, err := ParseRole(fields[1])
	if err != nil {
		return tokenEntry{}, err
	}
	raw, err := hex.DecodeString(strings.TrimPrefix(fields[2], "sha256:"))
	if err != nil || len(raw) != sha256.Size {
		return tokenEntry{}, errors.New("the third field must be the token's SHA-256 as 64 hex digits")
	}
	e := tokenEntry{Principal: Principal{Name: fields[0], Role: role}}
	copy(e.hash[:], raw)
	return e, nil
}

// TokenLine formats a tokens-file line for a raw token.
func TokenLine(principal string, role Role, token string) string {
	sum := sha256.Sum256([]byte(token))
	return fmt.Sprintf("%s %s %s\n", principal, role, hex.EncodeToString(sum[:]))
}

// NewToken returns a fresh random admin token.
func NewToken() string { return "mrd_" + rand.Text() }

package cache

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func snap(version uint64, upstream string) *meridianv1.Snapshot {
	return &meridianv1.Snapshot{
		Version: version,
		Hash:    "h",
		Nonce:   "n",
		Resources: []*meridianv1.Resource{{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
			Metadata: &meridianv1.Metadata{Name: upstream},
			Spec:     &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{{Address: "127.0.0.1:9001"}}},
		}}}},
	}
}

func TestRoundTrip(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), "nested", "cache"))
	want := snap(3, "users")
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("Load = %v, want %v", got, want)
	}
	info, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", info.Mode().Perm())
	}
}

func TestOverwrite(t *testing.T) {
	dir := t.TempDir()
	s := New(dir)
	for v := uint64(1); v <= 3; v++ {
		if err := s.Save(snap(v, "u")); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Load()
	if err != nil || got.GetVersion() != 3 {
		t.Fatalf("Load = %v, %v; want version 3", got, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != FileName {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("cache dir holds %v, want only %s (no temp files left)", names, FileName)
	}
}

func TestOverwriteIsAtomicForReaders(t *testing.T) {
	s := New(t.TempDir())
	if err := s.Save(snap(1, "u")); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		for v := uint64(2); v < 60; v++ {
			if err := s.Save(snap(v, strings.Repeat("u", int(v)*100))); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for reads := 0; ; reads++ {
		select {
		case <-done:
			wg.Wait()
			return
		default:
		}
		if _, err := s.Load(); err != nil {
			t.Fatalf("read %d during overwrite: %v", reads, err)
		}
	}
}

func TestCorrupt(t *testing.T) {
	tests := []struct {
		name   string
		damage func(b []byte) []byte
	}{
		{"flip payload byte", func(b []byte) []byte { b[len(b)-5] ^= 0xff; return b }},
		{"flip checksum byte", func(b []byte) []byte { b[len(magic)+1] ^= 0x01; return b }},
		{"truncate payload", func(b []byte) []byte { return b[:len(b)-3] }},
		{"truncate header", func(b []byte) []byte { return b[:10] }},
		{"empty", func([]byte) []byte { return nil }},
		{"bad magic", func(b []byte) []byte { b[0] = 'X'; return b }},
		{"appended bytes", func(b []byte) []byte { return append(b, 0) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(t.TempDir())
			if err := s.Save(snap(1, "u")); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(s.Path())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(s.Path(), tt.damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = s.Load()
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load err = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestMissing(t *testing.T) {
	_, err := New(t.TempDir()).Load()
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load err = %v, want fs.ErrNotExist", err)
	}
	if errors.Is(err, ErrCorrupt) {
		t.Error("a missing file is not corrupt")
	}
}

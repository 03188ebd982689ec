// Package cache keeps the last applied snapshot on disk, so a data plane
// can boot and serve while no control plane answers.
//
// The file is a fixed header followed by the snapshot's protobuf encoding:
//
//	magic "MERIDIAN-SNAPSHOT-1\n" | sha256(payload) 32 bytes | len(payload) uint64 BE | payload
//
// It is replaced atomically: write a temporary file in the same directory,
// fsync it, rename it over the old one, fsync the directory.
package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// FileName is the snapshot file inside the cache directory.
const FileName = "snapshot.bin"

const magic = "MERIDIAN-SNAPSHOT-1\n"

const headerLen = len(magic) + sha256.Size + 8

// ErrCorrupt means the cache file exists but is truncated, has a bad
// checksum or does not decode.
var ErrCorrupt = errors.New("snapshot cache is corrupt")

// Store reads and writes the snapshot file of one directory.
type Store struct {
	dir string
}

// New returns a Store for dir. The directory is created on first Save.
func New(dir string) *Store { return &Store{dir: dir} }

// Path returns the snapshot file's path.
func (s *Store) Path() string { return filepath.Join(s.dir, FileName) }

// Save replaces the cached snapshot with snap, atomically.
func (s *Store) Save(snap *meridianv1.Snapshot) error {
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(snap)
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	sum := sha256.Sum256(payload)
	buf := make([]byte, 0, headerLen+len(payload))
	buf = append(buf, magic...)
	buf = append(buf, sum[:]...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(len(payload)))
	buf = append(buf, payload...)

	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("cache dir: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, FileName+".tmp-*")
	if err != nil {
		return fmt.Errorf("cache temp file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(buf); err != nil {
		tmp.Close()
		return fmt.Errorf("write cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.Path()); err != nil {
		return fmt.Errorf("replace cache: %w", err)
	}
	// The rename is durable only once the directory entry is.
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("open cache dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync cache dir: %w", err)
	}
	return nil
}

// Load returns the cached snapshot. The error wraps fs.ErrNotExist when
// there is none, and ErrCorrupt when the file cannot be trusted.
func (s *Store) Load() (*meridianv1.Snapshot, error) {
	data, err := os.ReadFile(s.Path())
	if err != nil {
		return nil, fmt.Errorf("read cache: %w", err)
	}
	if len(data) < headerLen || !bytes.Equal(data[:len(magic)], []byte(magic)) {
		return nil, fmt.Errorf("%s: %w: bad header", s.Path(), ErrCorrupt)
	}
	sum := data[len(magic) : len(magic)+sha256.Size]
	n := binary.BigEndian.Uint64(data[len(magic)+sha256.Size : headerLen])
	payload := data[headerLen:]
	if uint64(len(payload)) != n {
		return nil, fmt.Errorf("%s: %w: %d payload bytes, header says %d", s.Path(), ErrCorrupt, len(payload), n)
	}
	if got := sha256.Sum256(payload); !bytes.Equal(got[:], sum) {
		return nil, fmt.Errorf("%s: %w: checksum mismatch", s.Path(), ErrCorrupt)
	}
	snap := &meridianv1.Snapshot{}
	if err := proto.Unmarshal(payload, snap); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", s.Path(), ErrCorrupt, err)
	}
	return snap, nil
}

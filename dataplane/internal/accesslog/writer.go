package accesslog

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Writer defaults; see WriterOptions.
const (
	DefaultFlushSize     = 64 << 10
	DefaultFlushInterval = time.Second
	DefaultMaxPending    = 4 << 20
)

// WriterOptions tune a Writer; zero values take the defaults.
type WriterOptions struct {
	// FlushSize is how many buffered bytes make the flusher write at once
	// rather than at the next tick (default 64 KiB).
	FlushSize int
	// FlushInterval is the longest a line waits in the buffer (default 1s).
	FlushInterval time.Duration
	// MaxPending bounds the buffer while the output is slow or stuck
	// (default 4 MiB); lines past it are dropped and counted, so requests
	// never wait for the log.
	MaxPending int
	// OnError is told, from the flusher goroutine, when writing to the
	// output fails and when lines were dropped; nil: nobody is told.
	OnError func(error)
}

// Writer buffers lines in memory for an output (stdout, a file) and
// writes them from its own goroutine: when FlushSize bytes are pending,
// every FlushInterval, and on Close. A request appending its line only
// takes a mutex and copies; it never waits on the output's I/O.
type Writer struct {
	out     io.Writer
	size    int
	max     int
	onError func(error)

	mu      sync.Mutex
	pending []byte
	dropped int
	closed  bool

	spare []byte // the flusher's: the buffer the next swap hands back
	kick  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

// NewWriter returns a Writer for out and starts its flusher; Close stops
// it.
func NewWriter(out io.Writer, o WriterOptions) *Writer {
	if o.FlushSize <= 0 {
		o.FlushSize = DefaultFlushSize
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	w := &Writer{
		out: out, size: o.FlushSize, max: max(o.MaxPending, o.FlushSize), onError: o.OnError,
		pending: make([]byte, 0, o.FlushSize),
		spare:   make([]byte, 0, o.FlushSize),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go w.run(o.FlushInterval)
	return w
}

// Write buffers p, a whole line. It never fails: a line that does not
// fit under MaxPending, or comes after Close, is dropped and counted.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed || len(w.pending)+len(p) > w.max {
		w.dropped++
		w.mu.Unlock()
		return len(p), nil
	}
	w.pending = append(w.pending, p...)
	full := len(w.pending) >= w.size
	w.mu.Unlock()
	if full {
		select {
		case w.kick <- struct{}{}:
		default: // the flusher is already due
		}
	}
	return len(p), nil
}

// Close writes what is pending and stops the flusher. It does not close
// the output. Later writes are dropped.
func (w *Writer) Close() error {
	w.once.Do(func() {
		close(w.stop)
		<-w.done
	})
	return nil
}

func (w *Writer) run(interval time.Duration) {
	defer close(w.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			w.mu.Lock()
			w.closed = true
			w.mu.Unlock()
			w.flush()
			return
		case <-t.C:
		case <-w.kick:
		}
		w.flush()
	}
}

// flush swaps the pending buffer for the spare one and writes it out, so
// requests append to the other buffer meanwhile.
func (w *Writer) flush() {
	w.mu.Lock()
	p := w.pending
	w.pending = w.spare[:0]
	dropped := w.dropped
	w.dropped = 0
	w.mu.Unlock()
	if len(p) > 0 {
		if _, err := w.out.Write(p); err != nil {
			w.report(fmt.Errorf("access log: %w", err))
		}
	}
	if dropped > 0 {
		w.report(fmt.Errorf("access log: %d lines dropped: the output is too slow", dropped))
	}
	// A buffer a burst grew well past a flush's worth is let go, so a
	// spike does not pin memory.
	if cap(p) > 16*w.size {
		p = make([]byte, 0, w.size)
	}
	w.spare = p[:0]
}

func (w *Writer) report(err error) {
	if w.onError != nil {
		w.onError(err)
	}
}

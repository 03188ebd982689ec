package proxy

import "sync"

// bufferSize is the copy buffer size ReverseProxy streams bodies through.
const bufferSize = 32 << 10

// BufferPool is an httputil.BufferPool of 32 KiB buffers. It pools array
// pointers, so neither Get nor Put allocates.
type BufferPool struct {
	pool sync.Pool
}

// NewBufferPool returns an empty pool.
func NewBufferPool() *BufferPool {
	return &BufferPool{pool: sync.Pool{New: func() any { return new([bufferSize]byte) }}}
}

// Get returns a buffer of 32 KiB.
func (b *BufferPool) Get() []byte {
	return b.pool.Get().(*[bufferSize]byte)[:]
}

// Put returns buf to the pool; buffers of another size are dropped.
func (b *BufferPool) Put(buf []byte) {
	if cap(buf) < bufferSize {
		return
	}
	b.pool.Put((*[bufferSize]byte)(buf[:bufferSize]))
}

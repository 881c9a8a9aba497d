package agentwire

import (
	"errors"
	"io"
	"sync"
)

// pipeChunks is how many chunks a Pipe holds: its two sides run up to this far apart.
const pipeChunks = 8

// Pipe is an in-memory pipe like io.Pipe, except that it holds up to pipeChunks writes of at
// most ChunkSize bytes, so that the writer (reading a file, receiving from the network) and
// the reader (sending, writing a file) work at the same time instead of in turns. Memory
// stays bounded by pipeChunks × ChunkSize.
type Pipe struct {
	full, free chan []byte
	done       chan struct{} // closed by CloseRead
	closeOnce  sync.Once
	mu         sync.Mutex
	werr       error // set by CloseWrite; read once full is drained
	rerr       error // set by CloseRead
	cur        []byte
	curBuf     []byte
}

// NewPipe returns an empty Pipe.
func NewPipe() *Pipe { return newPipe(pipeChunks, ChunkSize) }

// NewCopyPipe returns an empty Pipe for a file copy's tar stream: fewer, larger chunks than
// NewPipe's (the same memory), so a copy goes through the socket in CopyChunkSize writes.
func NewCopyPipe() *Pipe { return newPipe(copyPipeChunks, CopyChunkSize) }

// CopyChunkSize is the chunk size of a copy's Pipe, and copyPipeChunks how many it holds.
const (
	CopyChunkSize  = 1 << 20
	copyPipeChunks = 2
)

func newPipe(chunks, size int) *Pipe {
	p := &Pipe{full: make(chan []byte, chunks), free: make(chan []byte, chunks), done: make(chan struct{})}
	for range chunks {
		p.free <- make([]byte, 0, size)
	}
	return p
}

// Write copies b into the pipe, blocking while it is full.
func (p *Pipe) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		var buf []byte
		select {
		case buf = <-p.free:
		case <-p.done:
			return n, p.readErr()
		}
		k := min(len(b), cap(buf))
		buf = append(buf[:0], b[:k]...)
		select {
		case p.full <- buf:
		case <-p.done:
			return n, p.readErr()
		}
		n += k
		b = b[k:]
	}
	return n, nil
}

// CloseWrite ends the writing side: the reader gets err (io.EOF when nil) after the data.
func (p *Pipe) CloseWrite(err error) {
	if err == nil {
		err = io.EOF
	}
	p.mu.Lock()
	if p.werr == nil {
		p.werr = err
	}
	p.mu.Unlock()
	p.closeOnce.Do(func() { close(p.full) })
}

// Read reads what was written, blocking while the pipe is empty.
func (p *Pipe) Read(b []byte) (int, error) {
	if len(p.cur) == 0 {
		if _, err := p.next(); err != nil {
			return 0, err
		}
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// next makes the next written chunk current (returning the previous one to the free list)
// and returns it; bytes a Read left of the current chunk come first.
func (p *Pipe) next() ([]byte, error) {
	if len(p.cur) > 0 {
		return p.cur, nil
	}
	for {
		if p.curBuf != nil {
			p.free <- p.curBuf
			p.curBuf = nil
		}
		buf, ok := <-p.full
		if !ok {
			p.mu.Lock()
			defer p.mu.Unlock()
			return nil, p.werr
		}
		p.curBuf = buf
		if len(buf) > 0 {
			p.cur = buf
			return buf, nil
		}
	}
}

// WriteTo writes what is written to the pipe to w, a chunk at a time and without copying it
// first, until the writing side closes. It returns the writer's error, nil for io.EOF.
func (p *Pipe) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		chunk, err := p.next()
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		n, err := w.Write(chunk)
		total += int64(n)
		p.cur = p.cur[n:]
		if err != nil {
			return total, err
		}
	}
}

// CloseRead ends the reading side: writes fail with err (io.ErrClosedPipe when nil).
func (p *Pipe) CloseRead(err error) {
	if err == nil {
		err = io.ErrClosedPipe
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rerr == nil {
		p.rerr = err
		close(p.done)
	}
}

func (p *Pipe) readErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rerr == nil {
		return errors.New("pipe closed")
	}
	return p.rerr
}

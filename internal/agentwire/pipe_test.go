package agentwire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestPipeFillWriteTo passes messages through Fill and WriteTo, the copy-free paths, mixed
// with Write and Read, and checks the bytes, the end and that grown buffers are not kept.
func TestPipeFillWriteTo(t *testing.T) {
	p := NewPipe()
	big := bytes.Repeat([]byte("x"), 2*ChunkSize)
	var want bytes.Buffer
	go func() {
		for i := range 20 {
			msg := []byte{byte(i)}
			if i%5 == 0 {
				msg = big
			}
			want.Write(msg)
			if err := p.Fill(func(buf []byte) ([]byte, error) { return append(buf, msg...), nil }); err != nil {
				t.Error(err)
			}
			if _, err := p.Write([]byte("w")); err != nil {
				t.Error(err)
			}
			want.WriteString("w")
		}
		// An empty fill queues nothing.
		_ = p.Fill(func(buf []byte) ([]byte, error) { return buf, nil })
		p.CloseWrite(nil)
	}()
	head := make([]byte, 3)
	if _, err := io.ReadFull(p, head); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	got.Write(head)
	if _, err := p.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("got %d bytes, want %d (or different ones)", got.Len(), want.Len())
	}
	for range pipeChunks {
		if b := <-p.free; cap(b) > ChunkSize {
			t.Fatalf("the pipe kept a buffer of %d bytes, more than ChunkSize", cap(b))
		}
	}
}

// TestPipeFillError: a fill error is returned and queues nothing; a closed reader ends Fill.
func TestPipeFillError(t *testing.T) {
	p := NewPipe()
	boom := errors.New("boom")
	if err := p.Fill(func(buf []byte) ([]byte, error) { return append(buf, 1), boom }); err != boom {
		t.Fatalf("Fill: %v, want boom", err)
	}
	p.CloseRead(io.ErrClosedPipe)
	if err := p.Fill(func(buf []byte) ([]byte, error) { return append(buf, 1), nil }); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Fill after CloseRead: %v", err)
	}
}

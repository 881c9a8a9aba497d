package agentwire

import (
	"bytes"
	"io"
	"testing"
)

// TestPipeWriteTo passes writes of all sizes through the pipe, reading some with Read and
// the rest with WriteTo (the copy-free path HTTP transports take), and checks the bytes.
func TestPipeWriteTo(t *testing.T) {
	p := NewPipe()
	var want bytes.Buffer
	go func() {
		for i := range 20 {
			msg := bytes.Repeat([]byte{byte(i)}, 1+i*ChunkSize/7)
			want.Write(msg)
			if _, err := p.Write(msg); err != nil {
				t.Error(err)
			}
		}
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
}

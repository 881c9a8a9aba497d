package agent

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/treetar"
)

// benchAgent serves an agent (not as PID 1) in this process on a Unix socket.
func benchAgent(b *testing.B) *agentwire.Client {
	b.Helper()
	sock := filepath.Join(b.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	srv := newServer(slog.New(slog.DiscardHandler), newReaper(false), "bench")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(done) }()
	dial, err := agentwire.ParseAddr("unix:" + sock)
	if err != nil {
		b.Fatal(err)
	}
	c := agentwire.NewClient(dial)
	b.Cleanup(func() { c.Close(); cancel(); <-done })
	return c
}

// BenchmarkExecTrue is the round trip of running /bin/true through the agent.
func BenchmarkExecTrue(b *testing.B) {
	c := benchAgent(b)
	ctx := context.Background()
	for b.Loop() {
		p, err := c.Exec(ctx, agentwire.ExecStart{Args: []string{"/bin/true"}}, agentwire.ExecIO{})
		if err != nil {
			b.Fatal(err)
		}
		if st, err := p.Wait(); err != nil || st.Code != 0 {
			b.Fatalf("status %+v, err %v", st, err)
		}
	}
}

const copySize = 256 << 20

// copySource writes a file of copySize random bytes.
func copySource(b *testing.B) string {
	b.Helper()
	src := filepath.Join(b.TempDir(), "src.bin")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, copySize); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return src
}

// BenchmarkCopy256MiB uploads a 256 MiB file through the agent (tar stream over Connect);
// compare with BenchmarkRawSocketCopy256MiB, the same bytes from the same file to a file over
// a bare Unix socket.
func BenchmarkCopy256MiB(b *testing.B) {
	c := benchAgent(b)
	src := copySource(b)
	b.SetBytes(copySize)
	for b.Loop() {
		dst := b.TempDir()
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(treetar.Write(pw, src, "copy.bin")) }()
		if _, err := c.Upload(context.Background(), dst, pr); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(dst)
	}
}

func BenchmarkRawSocketCopy256MiB(b *testing.B) {
	src := copySource(b)
	sock := filepath.Join(b.TempDir(), "raw.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	b.SetBytes(copySize)
	for b.Loop() {
		dst := filepath.Join(b.TempDir(), "copy.bin")
		done := make(chan error, 1)
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer conn.Close()
			f, err := os.Create(dst)
			if err != nil {
				done <- err
				return
			}
			_, err = io.CopyBuffer(struct{ io.Writer }{f}, struct{ io.Reader }{conn}, make([]byte, 1<<20))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			done <- err
		}()
		conn, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(src)
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.CopyBuffer(struct{ io.Writer }{conn}, struct{ io.Reader }{f}, make([]byte, 1<<20))
		f.Close()
		conn.Close()
		if err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		os.Remove(dst)
	}
}

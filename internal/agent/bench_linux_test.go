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
	"time"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// benchAgent serves an agent (not as PID 1) in this process on a Unix socket.
func benchAgent(b *testing.B) *agentwire.Client {
	c, _ := benchServer(b)
	return c
}

// benchServer is benchAgent that also returns the server.
func benchServer(b *testing.B) (*agentwire.Client, *Server) {
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
	return c, srv
}

// BenchmarkMainTrue is the round trip of starting a main process (/bin/true, the image's
// command) through a Main call, attached, until its exit status: compare BenchmarkExecTrue.
func BenchmarkMainTrue(b *testing.B) {
	c, srv := benchServer(b)
	ctx := context.Background()
	for b.Loop() {
		srv.main = newMainProc(&InitConfig{Cmd: []string{"/bin/true"}}) // a fresh guest's
		p, err := c.Main(ctx, agentwire.MainStart{}, agentwire.ExecIO{})
		if err != nil {
			b.Fatal(err)
		}
		if st, err := p.Wait(); err != nil || st.Code != 0 {
			b.Fatalf("status %+v, err %v", st, err)
		}
	}
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

// BenchmarkCopy256MiB copies a 256 MiB file into the guest through the agent (a tar stream,
// the body of an HTTP/1.1 POST) and, in the same iteration, the same bytes from the same
// file to a file over a bare Unix socket through a user-space buffer. It reports both rates
// and their ratio (target: 0.8 or more); interleaving them keeps a busy machine from
// favouring either.
func BenchmarkCopy256MiB(b *testing.B) {
	benchCopy(b, func(c *agentwire.Client, src, dst string) error {
		return c.CopyTo(context.Background(), src, dst, agentwire.Limits{})
	})
}

// BenchmarkCopyOut256MiB is BenchmarkCopy256MiB out of the guest (an HTTP/1.1 GET).
func BenchmarkCopyOut256MiB(b *testing.B) {
	benchCopy(b, func(c *agentwire.Client, src, dst string) error {
		return c.CopyFrom(context.Background(), src, dst, false, agentwire.Limits{})
	})
}

func benchCopy(b *testing.B, agentCopy func(c *agentwire.Client, src, dst string) error) {
	c := benchAgent(b)
	src := copySource(b)
	sock := filepath.Join(b.TempDir(), "raw.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var agentTime, rawTime time.Duration
	for b.Loop() {
		dst := b.TempDir()
		t0 := time.Now()
		if err := agentCopy(c, src, dst); err != nil {
			b.Fatal(err)
		}
		agentTime += time.Since(t0)
		os.RemoveAll(dst)

		t0 = time.Now()
		rawCopy(b, ln, sock, src, filepath.Join(b.TempDir(), "copy.bin"))
		rawTime += time.Since(t0)
	}
	mb := float64(copySize) / 1e6 * float64(b.N)
	b.ReportMetric(mb/agentTime.Seconds(), "agent-MB/s")
	b.ReportMetric(mb/rawTime.Seconds(), "raw-MB/s")
	b.ReportMetric(rawTime.Seconds()/agentTime.Seconds(), "agent/raw")
}

// rawCopy sends src over a new connection to ln, whose accepting side writes it to dst.
func rawCopy(b *testing.B, ln net.Listener, sock, src, dst string) {
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

package fcapi

import (
	"path/filepath"
	"testing"

	"github.com/smartvm/smartvm/internal/fakefc"
)

// BenchmarkClientGetInstanceInfo measures one GET / round trip over the Unix socket against
// the in-process fake Firecracker, on a kept-alive connection.
func BenchmarkClientGetInstanceInfo(b *testing.B) {
	sock := filepath.Join(shortDir(b), "api.sock")
	srv, err := fakefc.Listen(sock, fakefc.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	c := New(sock)
	defer c.Close()
	ctx := b.Context()
	if err := WaitReady(ctx, sock, nil); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		info, err := c.GetInstanceInfo(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.State != StateNotStarted {
			b.Fatalf("state %q", info.State)
		}
	}
}

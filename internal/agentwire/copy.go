package agentwire

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/smartvm/smartvm/internal/treetar"
)

// CopyTo copies the local file or directory src into the guest at dst, as cp -a and docker cp
// do: into dst when it is an existing directory (keeping src's name), else to the new name dst,
// whose directory must exist. Modes, ownership and times are kept.
func (c *Client) CopyTo(ctx context.Context, src, dst string) error {
	sfi, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	name := filepath.Base(filepath.Clean(src))
	dir := dst
	dfi, err := c.Stat(ctx, dst)
	switch {
	case err == nil && dfi.Mode.IsDir():
	case err == nil && sfi.IsDir():
		return fmt.Errorf("copy %s to %s: the destination is a file in the guest and the source a directory", src, dst)
	case err == nil, errors.Is(err, fs.ErrNotExist):
		dir, name = path.Dir(path.Clean(dst)), path.Base(path.Clean(dst))
		pfi, perr := c.Stat(ctx, dir)
		switch {
		case errors.Is(perr, fs.ErrNotExist):
			return fmt.Errorf("copy to %s: the directory %s does not exist in the guest (create it first)", dst, dir)
		case perr != nil:
			return perr
		case !pfi.Mode.IsDir():
			return fmt.Errorf("copy to %s: %s is not a directory in the guest", dst, dir)
		}
	default:
		return err
	}
	pipe := NewPipe()
	go func() { pipe.CloseWrite(treetar.Write(pipe, src, name)) }()
	_, err = c.Upload(ctx, dir, pipe)
	pipe.CloseRead(errors.New("upload ended"))
	return err
}

// CopyFrom copies the guest file or directory src to the local path dst, the same way as
// CopyTo. Modes and times are kept; ownership and setuid/setgid bits only with owner (what a
// guest writes is not trusted with them otherwise). Entries go through treetar.Extract, so
// nothing the guest sends lands outside dst.
func (c *Client) CopyFrom(ctx context.Context, src, dst string, owner bool) error {
	if _, err := c.Stat(ctx, src); err != nil {
		return err
	}
	name := path.Base(path.Clean(src))
	if name == "/" {
		return errors.New("copy: copy the guest's root directory by its entries, not as /")
	}
	// The guest writes the stream: it may create src's name in dst and nothing else.
	opts := treetar.Options{Owner: owner, Prefix: name}
	dfi, err := os.Stat(dst)
	if err == nil && dfi.IsDir() {
		return c.downloadInto(ctx, src, dst, opts)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("copy: %w", err)
	}
	// A new name (or a file to replace): extract next to it, then rename into place.
	parent := filepath.Dir(filepath.Clean(dst))
	if pfi, err := os.Stat(parent); err != nil || !pfi.IsDir() {
		return fmt.Errorf("copy to %s: the directory %s does not exist (create it first)", dst, parent)
	}
	tmp, err := os.MkdirTemp(parent, ".smartvm-cp-")
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := c.downloadInto(ctx, src, tmp, opts); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(tmp, name), dst); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	return nil
}

func (c *Client) downloadInto(ctx context.Context, src, dir string, opts treetar.Options) error {
	r, err := c.Download(ctx, src)
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := treetar.Extract(r, dir, opts); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

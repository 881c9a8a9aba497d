package agentwire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/smartvm/smartvm/internal/treetar"
)

// Default copy limits: what one copy may write at most, in bytes of file contents and in
// entries (files, directories, links), unless Limits raise them.
const (
	DefaultMaxBytes int64 = 16 << 30
	DefaultMaxFiles       = 1 << 20
)

// Limits bound what one copy writes: a copy out of a guest is written by the guest, which
// must not be able to fill the host's disk or use up its inodes. A zero field is the default
// (DefaultMaxBytes, DefaultMaxFiles); a negative one is no limit.
type Limits struct {
	MaxBytes int64 `json:"max_bytes,omitempty"`
	MaxFiles int   `json:"max_files,omitempty"`
}

// ExtractOptions returns opts with l's limits.
func (l Limits) ExtractOptions(opts treetar.Options) treetar.Options {
	opts.MaxBytes, opts.MaxEntries = l.MaxBytes, l.MaxFiles
	if l.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if l.MaxFiles == 0 {
		opts.MaxEntries = DefaultMaxFiles
	}
	return opts
}

// LimitMessage explains a treetar.LimitError of a copy of what: which limit, and how to
// raise it.
func LimitMessage(what string, le *treetar.LimitError) string {
	if le.Bytes {
		return fmt.Sprintf("copy %s: more than %d bytes of files (at %s), the copy's size limit: raise it (smartvm cp --max-size, Limits.MaxBytes) if that much is expected", what, le.Limit, le.Entry)
	}
	return fmt.Sprintf("copy %s: more than %d files (at %s), the copy's file limit: raise it (smartvm cp --max-files, Limits.MaxFiles) if that many are expected", what, le.Limit, le.Entry)
}

// CopyTo copies the local file or directory src into the guest at dst, as cp -a and docker cp
// do: into dst when it is an existing directory (keeping src's name), else to the new name dst,
// whose directory must exist. Modes, ownership and times are kept. The agent refuses a tree
// past lim.
func (c *Client) CopyTo(ctx context.Context, src, dst string, lim Limits) error {
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
	pipe := NewCopyPipe()
	go func() { pipe.CloseWrite(treetar.Write(pipe, src, name)) }()
	_, err = c.Upload(ctx, dir, lim, pipe)
	pipe.CloseRead(errors.New("upload ended"))
	return err
}

// CopyFrom copies the guest file or directory src to the local path dst, the same way as
// CopyTo. Modes and times are kept; ownership and setuid/setgid bits only with owner (what a
// guest writes is not trusted with them otherwise). Entries go through treetar.Extract, so
// nothing the guest sends lands outside dst, and a stream past lim is refused; what it
// created is then removed.
func (c *Client) CopyFrom(ctx context.Context, src, dst string, owner bool, lim Limits) error {
	if _, err := c.Stat(ctx, src); err != nil {
		return err
	}
	name := path.Base(path.Clean(src))
	if name == "/" {
		return errors.New("copy: copy the guest's root directory by its entries, not as /")
	}
	// The guest writes the stream: it may create src's name in dst and nothing else.
	opts := lim.ExtractOptions(treetar.Options{Owner: owner, Prefix: name})
	dfi, err := os.Stat(dst)
	if err == nil && dfi.IsDir() {
		return c.downloadInto(ctx, src, dst, opts, true)
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
	if err := c.downloadInto(ctx, src, tmp, opts, false); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(tmp, name), dst); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	return nil
}

// downloadInto extracts src's stream under dir. With clean, a failed copy removes the entry
// it created when none was there before (a temporary directory is removed whole instead).
func (c *Client) downloadInto(ctx context.Context, src, dir string, opts treetar.Options, clean bool) error {
	r, err := c.Download(ctx, src)
	if err != nil {
		return err
	}
	defer r.Close()
	if clean {
		if _, err := os.Lstat(filepath.Join(dir, opts.Prefix)); err == nil {
			clean = false
		}
	}
	_, err = treetar.Extract(r, dir, opts)
	if err == nil {
		return nil
	}
	// A stream cut short by the agent ends with its reason: read on (a little) to it.
	var le *treetar.LimitError
	if _, derr := io.Copy(io.Discard, io.LimitReader(r, 1<<20)); derr != nil && !errors.As(err, &le) {
		err = derr
	}
	if clean {
		if root, rerr := os.OpenRoot(dir); rerr == nil {
			_ = root.RemoveAll(opts.Prefix)
			root.Close()
		}
	}
	if errors.As(err, &le) {
		return fmt.Errorf("%s out of the guest", LimitMessage(src, le))
	}
	return fmt.Errorf("copy %s: %w", src, err)
}

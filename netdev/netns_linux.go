package netdev

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// InNetns runs fn on the calling goroutine's OS thread after moving that thread into the
// network namespace bind-mounted at path (Network.Netns.Path), and moves it back before
// returning. Everything fn starts on that thread is inside the namespace: a process spawned by
// exec.Cmd.Start in fn runs there (its sockets, its TAP lookups), which is how Firecracker is
// started in a VM's namespace. The thread stays locked to the goroutine while fn runs; if the
// caller had locked it already (for Pdeathsig, say), it stays locked afterwards.
//
// If the thread cannot be moved back, InNetns returns an error and leaves the thread locked to
// the goroutine, so it is never reused: end the goroutine and the runtime discards the thread.
func InNetns(path string, fn func() error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer f.Close()
	if err := checkNetns(f); err != nil {
		return err
	}
	return inNetns(f, fn)
}

// inNetns is InNetns with the namespace already open.
func inNetns(ns *os.File, fn func() error) error {
	runtime.LockOSThread()
	orig, err := threadNetns()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", ns.Name(), permErr(err))
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(fnErr, fmt.Errorf("return from network namespace %s: %w (the thread stays locked to the goroutine)", ns.Name(), err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// threadNetns opens the network namespace of the calling OS thread. The caller keeps its
// goroutine on the thread (runtime.LockOSThread) when that matters.
func threadNetns() (*os.File, error) {
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("open the current network namespace: %w", err)
	}
	return f, nil
}

// callerNetns opens the network namespace of the thread the calling goroutine runs on. In a
// program whose threads all share one namespace that is the process's; a goroutine locked to a
// thread that entered another namespace gets that one.
func callerNetns() (*os.File, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return threadNetns()
}

// checkNetns reports an error unless f is a namespace file.
func checkNetns(f *os.File) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("network namespace %s: %w", f.Name(), err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("network namespace %s: not a namespace (no namespace is mounted there)", f.Name())
	}
	return nil
}

// createNetns creates a network namespace and bind-mounts it at path, as `ip netns add` does.
// Errors: ErrExists when path exists.
func createNetns(path string) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create network namespace directory: %w", err)
	}
	if dir == DefaultNetnsDir {
		if err := makeShared(dir); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create network namespace %s: %w; if it is a leftover of an ended VM, reclaim it, or remove it with `ip netns del %s`",
			path, ErrExists, filepath.Base(path))
	}
	if err != nil {
		return fmt.Errorf("create network namespace %s: %w", path, err)
	}
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	errc := make(chan error, 1)
	go func() {
		// The thread moves into the new namespace and is never moved back: the goroutine ends
		// locked, so the runtime discards the thread.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", permErr(err))
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount: %w", permErr(err))
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("create network namespace %s: %w", path, err)
	}
	return nil
}

// makeShared makes dir a shared mount point, as iproute2 does with its run directory, so that
// namespace mounts propagate to (and unmounts from) other mount namespaces.
func makeShared(dir string) error {
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: bind it onto itself, then retry.
		if err = unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
			err = unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", dir, permErr(err))
	}
	return nil
}

// deleteNetns unmounts and removes the namespace bind-mounted at path. The namespace itself
// ends when no process and no open file holds it any more. A missing path is not an error.
func deleteNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount network namespace %s: %w", path, permErr(err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove network namespace %s: %w", path, err)
	}
	return nil
}

package smartvm

import (
	"os"
	"syscall"
)

// fillFileID adds the device, inode and change time of fi to key.
func fillFileID(key *binaryKey, fi os.FileInfo) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.Dev, key.Ino = st.Dev, st.Ino
		key.Ctime = st.Ctim.Sec*1e9 + st.Ctim.Nsec
	}
}

// openPrivate opens path for reading when it is a regular file, not a symbolic link, owned
// by this process's user and not writable by group or others.
func openPrivate(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		f.Close()
		return nil, errNotPrivate
	}
	return f, nil
}

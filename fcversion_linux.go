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

//go:build !linux

package smartvm

import "os"

// fillFileID leaves key as it is: without the inode and change time, the cache across
// processes is off (the key is not cacheable) and only the in-memory one is used.
func fillFileID(*binaryKey, os.FileInfo) {}

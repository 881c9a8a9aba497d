//go:build !unix

package baseimage

import "os"

func isRoot() bool { return false }

func allocated(info os.FileInfo) int64 { return info.Size() }

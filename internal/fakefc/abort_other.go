//go:build !linux

package fakefc

import "os"

// abort ends the process as a Rust panic would; outside Linux the fake exits with the
// status a shell reports for SIGABRT.
func abort() { os.Exit(134) }

//go:build linux && !amd64

package jailer

// guardMachine is 0: there is no guard program for this architecture, and StartGuard clones
// this process instead.
const guardMachine = 0

var guardCode []byte

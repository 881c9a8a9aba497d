// Package lazyre holds regular expressions compiled on first use.
package lazyre

import (
	"regexp"
	"sync"
)

// New returns a function that compiles expr on its first call and returns the same
// *regexp.Regexp on every call. Compiled at package initialisation, a package's patterns
// would cost every process that links it start-up time (a few milliseconds for counted
// repetitions such as {0,127}), also in commands that never use them. expr must compile:
// the first call panics otherwise, as regexp.MustCompile does.
func New(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

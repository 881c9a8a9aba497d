package netdev

import (
	"regexp"
	"sync"
)

// lazyRegexp compiles expr on first use. Compiled at package initialisation, the package's
// patterns would cost every process that links it start-up time (a few milliseconds for
// counted repetitions such as {0,127}), also in commands that never use them.
func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

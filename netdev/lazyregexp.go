package netdev

import "github.com/smartvm/smartvm/internal/lazyre"

// lazyRegexp compiles a pattern on first use (lazyre.New).
var lazyRegexp = lazyre.New

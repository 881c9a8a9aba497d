// Command fakefirecracker runs smartvm's fake Firecracker by hand: it takes Firecracker's
// command line and reads SMARTVM_FAKEFC_VERSION, SMARTVM_FAKEFC_MODE and
// SMARTVM_FAKEFC_SOCKET_DELAY (see package fakefc).
package main

import (
	"os"

	"github.com/smartvm/smartvm/internal/fakefc"
)

func main() { os.Exit(fakefc.Main(os.Args[1:])) }

// Command stagecopy stages one file as smartvm stages a VM's writable drive, for comparing
// that copy with other tools (bench/stage.sh does):
//
//	stagecopy SRC DST
//
// DST must not exist. It prints the method used ("reflink" or "sparse") and the bytes written.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/smartvm/smartvm/internal/stage"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: stagecopy SRC DST")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	res, err := stage.Copy(ctx, os.Args[1], os.Args[2])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "stagecopy: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("%s %d\n", res.Method, res.BytesWritten)
}

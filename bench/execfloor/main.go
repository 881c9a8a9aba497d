// Command execfloor is the least a Go command can do to run a VM: it starts the program its
// arguments name, with its own standard streams, waits for it and exits with its status.
// bench/run.sh times it around a bare firecracker, next to smartvm run, to show how much of
// smartvm's start-up cost any Go command pays on the host (exec, the runtime's start, a fork
// and the exit), before it does anything for the VM.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: execfloor PROGRAM [ARG...]")
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		os.Exit(exit.ExitCode())
	case err != nil:
		fmt.Fprintln(os.Stderr, "execfloor:", err)
		os.Exit(1)
	}
}

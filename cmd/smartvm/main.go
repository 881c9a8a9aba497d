// Command smartvm runs Firecracker microVMs. See internal/cli for the commands.
//
// Run under the name smartvm-agent (a link or a copy with that name, as smartvm installs it
// in guests), it is the guest agent instead: see internal/agent.
package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/smartvm/smartvm/internal/agent"
	"github.com/smartvm/smartvm/internal/cli"
)

func main() {
	if filepath.Base(os.Args[0]) == "smartvm-agent" {
		os.Exit(agent.Main(os.Args[1:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

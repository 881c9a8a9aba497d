// Command smartvm-agent is smartvm's guest agent. See internal/agent.
package main

import (
	"os"

	"github.com/smartvm/smartvm/internal/agent"
)

func main() {
	os.Exit(agent.Main(os.Args[1:]))
}

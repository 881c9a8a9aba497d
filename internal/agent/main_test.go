package agent

import (
	"testing"

	"github.com/smartvm/smartvm/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.Main(m, map[string]func([]string) int{"agent-nsinit": nsInitMain, "agent-ociboot": ociBootMain})
}

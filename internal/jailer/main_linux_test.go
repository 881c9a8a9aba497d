package jailer

import (
	"testing"

	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.Main(m, map[string]func([]string) int{
		"jail-owner":  jailOwnerMain,
		"guard-owner": guardOwnerMain,
		"jail-guard":  guardStandIn,
		"jailer":      fakefc.JailerMain,
		"firecracker": fakefc.Main,
	})
}

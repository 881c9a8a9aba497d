//go:build !linux

package rundir

import (
	"context"

	"github.com/smartvm/smartvm/internal/proc"
)

func killServing(context.Context, []int, proc.Identity) []int { return nil }

func jailServes(string) bool { return false }

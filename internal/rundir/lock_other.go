//go:build !linux

package rundir

import (
	"context"
	"errors"
	"os"

	"github.com/smartvm/smartvm/internal/proc"
)

func flockNB(*os.File) (bool, error) { return false, errors.ErrUnsupported }

func killServing(context.Context, []int, proc.Identity) []int { return nil }

//go:build !linux

package smartvm

import (
	"errors"
	"fmt"
)

// dirAlias needs Linux's mount namespaces.
type dirAlias struct {
	Parent, From, To string
}

// aliasDirs returns a function that fails: mount namespaces need Linux.
func aliasDirs([]dirAlias) func() error {
	return func() error {
		return fmt.Errorf("restore under another name: mount namespaces need Linux: %w", errors.ErrUnsupported)
	}
}

// Package layout holds no code: its test checks that smartvm's packages depend on each other
// only in the directions docs/architecture.md allows.
package layout

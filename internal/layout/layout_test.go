package layout

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/smartvm/smartvm"

type pkg struct {
	ImportPath string
	Imports    []string
}

// listPackages runs `go list -json ./...` from the module root, for the package code only
// (test files may import test helpers from anywhere).
func listPackages(t *testing.T) []pkg {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("the go command is needed to list packages: %v", err)
	}
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func TestDependencyDirection(t *testing.T) {
	// The public subpackages stand alone: they import nothing from the module.
	standalone := map[string]bool{module + "/fcapi": true, module + "/baseimage": true, module + "/netdev": true}
	// The guest agent's packages: they import nothing else from the module.
	agentSide := map[string]bool{module + "/internal/agent": true, module + "/internal/agentwire": true, module + "/internal/treetar": true}
	// Only these packages may use netlink or nftables directly.
	netlinkUsers := map[string]bool{module + "/netdev": true}
	for _, p := range listPackages(t) {
		for _, imp := range p.Imports {
			inModule := imp == module || strings.HasPrefix(imp, module+"/")
			switch {
			case standalone[p.ImportPath] && inModule && !strings.HasPrefix(imp, p.ImportPath+"/internal/") && imp != module+"/internal/safedir":
				t.Errorf("%s imports %s: fcapi, baseimage and netdev must import nothing from the module but internal/safedir", p.ImportPath, imp)
			case (strings.HasPrefix(imp, "github.com/vishvananda/") || strings.HasPrefix(imp, "github.com/google/nftables")) && !netlinkUsers[p.ImportPath]:
				t.Errorf("%s imports %s: only netdev talks to netlink and nftables", p.ImportPath, imp)
			case imp == module+"/internal/cli" && p.ImportPath != module+"/cmd/smartvm":
				t.Errorf("%s imports internal/cli: only cmd/smartvm may", p.ImportPath)
			case p.ImportPath == module && strings.HasPrefix(imp, module+"/internal/") && isTestOnly(imp):
				t.Errorf("the root package imports %s, a test-only package", imp)
			case agentSide[p.ImportPath] && inModule && !agentSide[imp]:
				t.Errorf("%s imports %s: the guest agent and its protocol import only each other (the agent binary stays small and runs in guests)", p.ImportPath, imp)
			case imp == module+"/internal/agent" && p.ImportPath != module+"/cmd/smartvm-agent" && p.ImportPath != module+"/cmd/smartvm":
				t.Errorf("%s imports internal/agent: only the two commands run the agent; the host side uses internal/agentwire", p.ImportPath)
			}
		}
	}
}

// isTestOnly reports the internal packages that exist for tests and must not reach the library.
func isTestOnly(path string) bool {
	for _, p := range []string{"/internal/fakefc", "/internal/testutil", "/internal/layout"} {
		if strings.HasSuffix(path, p) {
			return true
		}
	}
	return false
}

package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeScript writes an executable shell script that prints `Firecracker <version>`.
func writeScript(t *testing.T, path, version string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\necho 'Firecracker "+version+"'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFindFirecrackerOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	flagBin := writeScript(t, filepath.Join(dir, "flag", "firecracker"), "v1.14.2")
	envBin := writeScript(t, filepath.Join(dir, "env", "firecracker"), "v1.14.1")
	home := filepath.Join(dir, "home")
	homeBin := writeScript(t, filepath.Join(home, ".smartvm", "bin", "firecracker"), "v1.13.0")
	pathBin := writeScript(t, filepath.Join(dir, "path", "firecracker"), "v1.7.0")
	pathEnv := filepath.Join(dir, "empty") + ":relative:" + filepath.Dir(pathBin)

	for _, tc := range []struct {
		name       string
		flag       string
		env        cliEnv
		wantPath   string
		wantFrom   string
		wantErr    error
		wantErrMsg string
	}{
		{"flag wins", flagBin, cliEnv{envFirecrackerBin: envBin, "HOME": home, "PATH": pathEnv}, flagBin, "--firecracker-bin", nil, ""},
		{"env next", "", cliEnv{envFirecrackerBin: envBin, "HOME": home, "PATH": pathEnv}, envBin, "$SMARTVM_FIRECRACKER_BIN", nil, ""},
		{"home next", "", cliEnv{"HOME": home, "PATH": pathEnv}, homeBin, "~/.smartvm/bin", nil, ""},
		{"path last", "", cliEnv{"HOME": dir, "PATH": pathEnv}, pathBin, "PATH", nil, ""},
		{"none", "", cliEnv{"HOME": dir, "PATH": filepath.Join(dir, "empty")}, "", "", errNoFirecracker, ""},
		{"flag missing", filepath.Join(dir, "nope"), cliEnv{"HOME": home}, "", "", nil, "from --firecracker-bin"},
		{"env not executable", "", cliEnv{envFirecrackerBin: filepath.Join(dir, "flag"), "HOME": home}, "", "", nil, "is not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &app{lookupEnv: tc.env.lookup, fcBinFlag: tc.flag}
			got, err := a.findFirecracker()
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			case tc.wantErrMsg != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErrMsg) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErrMsg)
				}
			case err != nil:
				t.Fatal(err)
			case got.Path != tc.wantPath || got.From != tc.wantFrom:
				t.Fatalf("found %+v, want %s from %s", got, tc.wantPath, tc.wantFrom)
			}
		})
	}
}

func TestVersionCommand(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	r := env.run(t, "version").ok(t)
	if !strings.HasPrefix(r.stdout, "smartvm ") || !strings.Contains(r.stdout, "firecracker: not found") {
		t.Errorf("version without firecracker:\n%s", r.stdout)
	}
	bin := writeScript(t, filepath.Join(t.TempDir(), "firecracker"), "v1.14.2")
	env[envFirecrackerBin] = bin
	r = env.run(t, "version").ok(t)
	if want := "firecracker v1.14.2 (" + bin + ", from $SMARTVM_FIRECRACKER_BIN)"; !strings.Contains(r.stdout, want) {
		t.Errorf("version does not say %q:\n%s", want, r.stdout)
	}
}

func TestVersionFlag(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	env[envFirecrackerBin] = "/nonexistent/firecracker" // --version never looks for it
	r := env.run(t, "--version").ok(t)
	if r.stdout != versionLine()+"\n" || !strings.HasPrefix(r.stdout, "smartvm ") {
		t.Errorf("--version printed %q", r.stdout)
	}
}

package jailer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/testutil"
)

// The fake jailer and firecracker stand in for the real pair: the command line Config
// builds is what the jailer parses, the layout and path mapping match, and firecracker
// runs in the chroot as the jail's uid, PID 1 of its namespace.
func TestFakeJail(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, newPIDNS := range []bool{true, false} {
		t.Run("new-pid-ns="+strconv.FormatBool(newPIDNS), func(t *testing.T) {
			cfg := Config{ID: "fake-jail", ExecFile: testutil.HardLink(t, "firecracker"), UID: 61003, GID: 61004,
				ChrootBase: t.TempDir(), NewPIDNS: newPIDNS, CgroupVersion: 2,
				Cgroups: []Setting{{"cpu.max", "50000 100000"}, {"memory.max", "1048576"}}, ParentCgroup: "smartvm",
				FSize: 1 << 30, NoFile: 4096, FirecrackerArgs: []string{"--api-sock", "/run/api.sock", "--log-path", "/fc.log"}}
			tr, err := Prepare(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			if err := tr.CreateFile("fc.log"); err != nil {
				t.Fatal(err)
			}
			j := launch(t, testutil.Link(t, "jailer"), cfg)
			defer j.Close()
			sock := tr.Chroot().Host("/run/api.sock")
			if err := fcapi.WaitReady(t.Context(), sock, j.Firecracker.Done()); err != nil {
				t.Fatal(err)
			}
			pid := j.Firecracker.PID()
			if got := statusField(t, pid, "Uid"); got != "61003 61003 61003 61003" {
				t.Errorf("Uid = %s", got)
			}
			if got := statusField(t, pid, "Gid"); got != "61004 61004 61004 61004" {
				t.Errorf("Gid = %s", got)
			}
			var root, want syscall.Stat_t
			syscall.Stat("/proc/"+strconv.Itoa(pid)+"/root/", &root)
			syscall.Stat(tr.Chroot().Root, &want)
			if root.Ino != want.Ino || root.Dev != want.Dev {
				t.Errorf("root is not the chroot")
			}
			if ns := strings.Fields(statusField(t, pid, "NSpid")); newPIDNS != (ns[len(ns)-1] == "1") {
				t.Errorf("NSpid %v with new-pid-ns %v", ns, newPIDNS)
			}
			if err := proc.Check(pid, proc.Identity{UID: cfg.UID, Exe: "", Flag: "--api-sock", Value: "/run/api.sock"}); err != nil {
				t.Error(err)
			}
			if b, _ := os.ReadFile(tr.Chroot().Host("/fc.log")); !strings.Contains(string(b), "Running Firecracker") {
				t.Errorf("log in the chroot: %q", b)
			}
			b, err := os.ReadFile(filepath.Join(tr.Chroot().Dir(), fakefc.FakeJailerFile))
			if err != nil {
				t.Fatal(err)
			}
			var rec fakefc.JailerConfig
			json.Unmarshal(b, &rec)
			want2 := fakefc.JailerConfig{ID: cfg.ID, ExecFile: cfg.ExecFile, UID: 61003, GID: 61004, ChrootBase: cfg.ChrootBase,
				CgroupVersion: 2, Cgroups: []string{"cpu.max=50000 100000", "memory.max=1048576"}, ParentCgroup: "smartvm",
				FSize: 1 << 30, NoFile: 4096, NewPIDNS: newPIDNS, Args: cfg.FirecrackerArgs}
			if diff := cmp.Diff(want2, rec); diff != "" {
				t.Errorf("what the jailer parsed (-want +got):\n%s", diff)
			}
			endJail(t, j, tr)
		})
	}
}

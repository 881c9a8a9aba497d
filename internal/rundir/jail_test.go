package rundir

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestJailState(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	jail := &Jail{UID: 1900000000, GID: 1900000000, Chroot: "/srv/jailer/firecracker/vm1/root", ExecName: "firecracker", APISocket: "/run/api.sock"}
	st := liveState(t, d)
	st.Jail = jail
	d.UseJail(jail)
	if err := d.WriteState(st); err != nil {
		t.Fatal(err)
	}
	_, got, err := r.Lookup("vm1")
	if err != nil {
		t.Fatal(err)
	}
	want := r.Paths("vm1")
	want.APISocket = "/srv/jailer/firecracker/vm1/root/run/api.sock"
	want.Log = "/srv/jailer/firecracker/vm1/root/firecracker.log"
	want.Metrics = "/srv/jailer/firecracker/vm1/root/metrics.json"
	want.Config = "/srv/jailer/firecracker/vm1/root/config.json"
	want.Metadata = "/srv/jailer/firecracker/vm1/root/metadata.json"
	want.Vsock = "/srv/jailer/firecracker/vm1/root/vsock.sock"
	want.Drives = "/srv/jailer/firecracker/vm1/root/drives"
	if diff := cmp.Diff(want, got.Paths); diff != "" {
		t.Errorf("a jailed VM's paths (-want +got):\n%s", diff)
	}
	if id := got.Identity(); id.UID != 1900000000 || id.Flag != "--api-sock" || id.Value != "/run/api.sock" || id.Exe != "" {
		t.Errorf("identity %+v", id)
	}
	// This process is not the jail's: a jailed state never names it alive.
	if got.Alive() {
		t.Error("this process passes for the jail's firecracker")
	}
}

func TestParseJailState(t *testing.T) {
	ok := Jail{UID: 5, GID: 5, Chroot: "/srv/jailer/fc/vm1/root", ExecName: "fc", APISocket: "/run/api.sock"}
	for name, mod := range map[string]func(*Jail){
		"another vm's chroot": func(j *Jail) { j.Chroot = "/srv/jailer/fc/vm2/root" },
		"relative chroot":     func(j *Jail) { j.Chroot = "srv/jailer/fc/vm1/root" },
		"unclean chroot":      func(j *Jail) { j.Chroot = "/srv/jailer/x/../fc/vm1/root" },
		"not root":            func(j *Jail) { j.Chroot = "/srv/jailer/fc/vm1/rootx" },
		"exec mismatch":       func(j *Jail) { j.ExecName = "other" },
		"uid 0":               func(j *Jail) { j.UID = 0 },
		"relative socket":     func(j *Jail) { j.APISocket = "run/api.sock" },
	} {
		j := ok
		mod(&j)
		b, _ := json.Marshal(State{Version: StateVersion, Name: "vm1", Jail: &j})
		if _, err := ParseState(b); !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s: ParseState = %v, want ErrCorruptState", name, err)
		}
	}
	b, _ := json.Marshal(State{Version: StateVersion, Name: "vm1", Jail: &ok})
	if _, err := ParseState(b); err != nil {
		t.Errorf("a good jail record: %v", err)
	}
}

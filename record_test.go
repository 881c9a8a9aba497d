package smartvm

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/testutil"
)

// TestOneRecord: the Info of a VM from the Machine that started it, from a Machine another
// manager attached, from List and from Manager.Info agree field by field, for each way a VM is
// provisioned: an API boot, a config-file boot, and a load of a snapshot. All boot a base image
// with an SSH key; the restored VM's record carries its snapshot's image and key, and where
// and when the snapshot was taken.
func TestOneRecord(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    BootMode
		restore bool
	}{
		{"api", BootModeAPI, false},
		{"config-file", BootModeConfigFile, false},
		{"snapshot", BootModeAPI, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, manifest, images := keyedImage(t)
			ctx := context.Background()
			bin := testutil.Link(t, "firecracker")
			mgr := newManager(t, root, bin, WithBaseImages(images))
			spec := MachineSpec{Name: "rec", BaseImageManifestPath: manifest, MemoryMiB: 32, BootMode: tc.mode, Metrics: true}
			m := start(t, mgr, spec)
			var (
				snap Snapshot
				err  error
			)
			if tc.restore {
				dir := filepath.Join(t.TempDir(), "snap")
				if snap, err = m.Snapshot(ctx, dir); err != nil {
					t.Fatal(err)
				}
				m.Kill()
				wait(t, m)
				if m, err = mgr.Restore(ctx, snap, RestoreSpec{}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
			}

			started := m.Info()
			if started.BaseImage == "" || started.SSHKey == "" || started.SSHKey != images.SSHKeyPath(started.BaseImage) {
				t.Fatalf("the vm has no base image or key: %+v", started)
			}
			if tc.restore {
				if started.BaseImage != snap.BaseImage || started.RestoredFrom != snap.Dir || !started.SnapshotTaken.Equal(snap.Created) {
					t.Errorf("restored vm: image %q from %q at %v; want the snapshot's %q, %q, %v",
						started.BaseImage, started.RestoredFrom, started.SnapshotTaken, snap.BaseImage, snap.Dir, snap.Created)
				}
			} else if started.RestoredFrom != "" || !started.SnapshotTaken.IsZero() {
				t.Errorf("booted vm records a snapshot: %+v", started)
			}
			// What state.json holds is the record the Machine holds.
			b, err := os.ReadFile(filepath.Join(m.Dir(), rundir.StateFile))
			if err != nil {
				t.Fatal(err)
			}
			st, err := rundir.ParseState(b)
			if err != nil {
				t.Fatal(err)
			}
			if st.BaseImage == nil || st.BaseImage.ID != started.BaseImage || st.BaseImage.SSHKey != started.SSHKey || st.RestoredFrom != started.RestoredFrom {
				t.Errorf("state.json records %+v, Info says %+v", st, started)
			}

			other := newManager(t, root, bin, WithBaseImages(images))
			am, err := other.Attach(ctx, m.Name())
			if err != nil {
				t.Fatal(err)
			}
			attached := am.Info()
			if err := am.Release(); err != nil {
				t.Fatal(err)
			}
			infos, err := other.List(ctx)
			if err != nil || len(infos) != 1 {
				t.Fatalf("list: %+v, %v", infos, err)
			}
			listed := infos[0]
			one, err := mgr.Info(ctx, m.Name())
			if err != nil {
				t.Fatal(err)
			}
			// State is the only field that may differ: as last seen, or as asked.
			for _, i := range []*MachineInfo{&started, &attached, &one} {
				i.State = listed.State
			}
			for what, got := range map[string]MachineInfo{"started": started, "attached": attached, "Manager.Info": one} {
				if diff := cmp.Diff(listed, got); diff != "" {
					t.Errorf("List and the %s vm's Info differ (-list +%s):\n%s", what, what, diff)
				}
			}
		})
	}
}

// TestRecordRoundTrip: a record survives state.json; one whose spec or network a different
// smartvm wrote is still read, and writing it back keeps a network it could not decode, so
// that reaping still finds what to tear down.
func TestRecordRoundTrip(t *testing.T) {
	spec := MachineSpec{Name: "rt", Kernel: "/k", MemoryMiB: 64, Metrics: true}.WithDefaults()
	st := &rundir.State{Name: "rt", Mode: ModeDetached, PID: 7, BaseImage: &rundir.BaseImage{ID: "0123456789abcdef", Holder: "vm:rt@x"}}
	st.Spec, _ = json.Marshal(spec)
	r, err := recordOf(st)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(spec, r.spec); diff != "" || r.network != nil || r.baseImage() != "0123456789abcdef" {
		t.Errorf("decoded spec (-want +got):\n%s; network %v, image %q", diff, r.network, r.baseImage())
	}
	back, err := recordOf(r.state())
	if err != nil || !cmp.Equal(r, back, cmp.AllowUnexported(vmRecord{})) {
		t.Errorf("round trip: %v\n%s", err, cmp.Diff(r, back, cmp.AllowUnexported(vmRecord{})))
	}

	foreign := &rundir.State{Name: "rt", Spec: json.RawMessage(`{"vcpus":"two"}`), Network: json.RawMessage(`{"nics":7}`)}
	r, err = recordOf(foreign)
	if err == nil || r.spec.Name != "rt" || r.spec.VCPUs != 0 || r.network != nil {
		t.Errorf("foreign record: %v, %+v", err, r)
	}
	if got := r.state().Network; string(got) != `{"nics":7}` {
		t.Errorf("network written back as %s", got)
	}
}

// TestProvisionerFor: the provisioning is chosen from the spec's boot mode, unless a restore
// plan makes it a snapshot load, whose plan it carries.
func TestProvisionerFor(t *testing.T) {
	plan := &restorePlan{snap: &Snapshot{Dir: "/snap"}}
	for _, tc := range []struct {
		mode BootMode
		plan *restorePlan
		want provisioner
	}{
		{BootModeAPI, nil, apiBoot{}},
		{BootModeConfigFile, nil, configFileBoot{}},
		{BootModeAPI, plan, snapshotLoad{plan}},
	} {
		got := provisionerFor(MachineSpec{BootMode: tc.mode}, tc.plan)
		if got != tc.want || got.restoring() != tc.plan {
			t.Errorf("%s, plan %v: got %#v", tc.mode, tc.plan, got)
		}
	}
}

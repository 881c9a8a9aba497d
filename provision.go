package smartvm

import (
	"context"

	"github.com/smartvm/smartvm/fcapi"
)

// provisioner is how a start gets its VM running, chosen once, in launch, from the spec and
// the restore plan (provisionerFor): apiBoot, configFileBoot or snapshotLoad. Each owns the
// steps in which they differ: its checks, what the VM is made from (base image, kernel,
// drives), the drives it stages, firecracker's arguments, the wait for readiness with the
// configuration or load that follows, and what it adds to the VM's record. starter.run calls
// them in order and never asks which one it has.
type provisioner interface {
	// check refuses, before anything is created, what the spec or the snapshot needs and
	// firecracker (s.version) cannot do. Its error is a *StartError.
	check(s *starter) error
	// inputs marks the base image the VM boots (or its snapshot's VM booted) in use for the
	// VM's life, then checks the kernel and the drives (checkInputs). Its error is a
	// *StartError.
	inputs(ctx context.Context, s *starter) error
	// stage stages the VM's drives and returns them as Firecracker gets them.
	stage(ctx context.Context, s *starter) ([]fcapi.Drive, error)
	// args writes what firecracker reads when it starts and returns the arguments that name
	// it.
	args(s *starter, cfg fcapi.VMConfig) ([]string, error)
	// mountNS is proc.Config.MountNS for the VM.
	mountNS() func() error
	// run waits until the spawned firecracker is ready, then boots the VM as cfg says, or
	// loads the snapshot. A guest that ran to completion once its boot was requested is no
	// error. Its error is a *StartError.
	run(ctx context.Context, s *starter, cfg fcapi.VMConfig) error
	// record adds what the provisioning tells about the VM to its record.
	record(r *vmRecord)
	// restoring is the restore plan of a snapshot load; nil for a boot.
	restoring() *restorePlan
}

// provisionerFor picks how a start of spec (with its defaults) gets its VM running.
func provisionerFor(spec MachineSpec, restore *restorePlan) provisioner {
	switch {
	case restore != nil:
		return snapshotLoad{restore}
	case spec.BootMode == BootModeConfigFile:
		return configFileBoot{}
	}
	return apiBoot{}
}

// boot is what both boots share: they check the whole configuration against the release,
// use the spec's base image, kernel and drives, and stage its ephemeral drives.
type boot struct{}

func (boot) check(s *starter) error {
	if s.spec.Agent {
		if err := checkAgentBinary(s.mgr.agent); err != nil {
			return s.fail("check the guest agent", err)
		}
	}
	drives := make([]fcapi.Drive, 0, len(s.spec.Drives))
	for _, d := range s.spec.Drives {
		drives = append(drives, driveConfig(d, d.Path))
	}
	if err := fcapi.CheckVMConfig(s.version, s.vmConfig(drives)); err != nil {
		return s.fail("check the firecracker version", err)
	}
	return nil
}

func (boot) inputs(ctx context.Context, s *starter) error {
	if s.spec.UsesBaseImage() {
		if err := s.useBaseImage(ctx); err != nil {
			return s.fail("base image", err)
		}
	}
	if err := s.checkInputs(nil); err != nil {
		return s.fail("check the kernel and drives", err)
	}
	return nil
}

func (boot) stage(ctx context.Context, s *starter) ([]fcapi.Drive, error) {
	return s.stageDrives(ctx)
}

func (boot) args(*starter, fcapi.VMConfig) ([]string, error) { return nil, nil }
func (boot) mountNS() func() error                           { return nil }
func (boot) record(*vmRecord)                                {}
func (boot) restoring() *restorePlan                         { return nil }

// apiBoot configures the VM with one API request per item, then sends InstanceStart.
type apiBoot struct{ boot }

// run sends the configuration the moment Firecracker listens: its first request is the
// readiness check. That measurably shortens the boot (an extra GET / first cost about 3 ms
// more to the first serial byte on v1.14.2).
func (apiBoot) run(ctx context.Context, s *starter, cfg fcapi.VMConfig) error {
	if err := fcapi.WaitListening(ctx, s.dir.APISocket, s.proc.Done()); err != nil {
		return s.fail("wait for the API socket", err)
	}
	return s.configure(ctx, cfg)
}

// configFileBoot writes the whole configuration to config.json (and the MMDS data to
// metadata.json) and passes them to firecracker, which boots the VM as it starts.
type configFileBoot struct{ boot }

func (configFileBoot) args(s *starter, cfg fcapi.VMConfig) ([]string, error) {
	return s.configFileArgs(cfg)
}

// run waits until firecracker serves its API, which it does only once the VM is built, so
// this also waits for the boot. The boot was requested with the spawn: a guest that has
// already run to completion is a successful start.
func (configFileBoot) run(ctx context.Context, s *starter, _ fcapi.VMConfig) error {
	var err error
	if s.version.AtLeast(requestFreeReadyBefore) {
		err = fcapi.WaitReady(ctx, s.dir.APISocket, s.proc.Done())
	} else if err = waitBooted(ctx, s.proc); err == nil {
		err = fcapi.WaitListening(ctx, s.dir.APISocket, s.proc.Done())
	}
	if err != nil && !s.ranToCompletion() {
		return s.fail("wait for the API socket", err)
	}
	return nil
}

// snapshotLoad starts the VM from a snapshot: it restages the snapshot's drives, loads the
// snapshot through the API, puts the MMDS data and resumes the VM (snapshot.go).
type snapshotLoad struct{ plan *restorePlan }

func (l snapshotLoad) check(s *starter) error {
	if err := checkSnapshotVersion(l.plan.snap, s.version); err != nil {
		return s.fail("check the snapshot", err)
	}
	if err := l.checkRestore(s.version); err != nil {
		return s.fail("check the snapshot", err)
	}
	return nil
}

func (l snapshotLoad) inputs(ctx context.Context, s *starter) error {
	if id := l.plan.snap.BaseImage; id != "" {
		if err := s.holdSnapshotImage(ctx, id); err != nil {
			return s.fail("base image", err)
		}
	}
	if err := s.checkInputs(l.plan.snap); err != nil {
		return s.fail("check the kernel and drives", err)
	}
	return nil
}

// stage stages the snapshot's copies of the ephemeral drives where the VM had them; the
// snapshot holds the drives' configuration.
func (l snapshotLoad) stage(ctx context.Context, s *starter) ([]fcapi.Drive, error) {
	return nil, s.restageDrives(ctx, l.plan.snap)
}

func (snapshotLoad) args(*starter, fcapi.VMConfig) ([]string, error) { return nil, nil }

// mountNS, for a VM restored under another name, shows it its own files at the paths its
// snapshot names (aliasDirs); nil otherwise.
func (l snapshotLoad) mountNS() func() error {
	if len(l.plan.aliases) == 0 {
		return nil
	}
	return aliasDirs(l.plan.aliases)
}

// run waits only for the socket to listen: the load is the readiness check.
func (l snapshotLoad) run(ctx context.Context, s *starter, _ fcapi.VMConfig) error {
	if err := fcapi.WaitListening(ctx, s.dir.APISocket, s.proc.Done()); err != nil {
		return s.fail("wait for the API socket", err)
	}
	return l.load(ctx, s)
}

func (l snapshotLoad) record(r *vmRecord) {
	r.st.RestoredFrom, r.st.SnapshotTaken = l.plan.snap.Dir, l.plan.snap.Created
}

func (l snapshotLoad) restoring() *restorePlan { return l.plan }

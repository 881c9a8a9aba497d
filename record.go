package smartvm

import (
	"encoding/json"
	"fmt"

	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/netdev"
)

// vmRecord is the one record of a VM's facts: what its state.json holds, with the spec and
// the network decoded. A start builds it (starter.record) and writes it; Attach, List and
// Manager.Info read it back from state.json (recordOf); a Machine holds it and changes it
// only through Machine.update, but for the end of a kept VM, which Dir.Keep writes and
// Machine.finish copies. MachineInfo (Manager.describe) and the VM facts of a
// Snapshot derive from it.
type vmRecord struct {
	// st is the record as state.json holds it; its Spec and Network are the encodings of
	// spec and network once state() has made them.
	st      rundir.State
	spec    MachineSpec
	network *netdev.Network
}

// recordOf decodes the record st holds. A spec that does not parse (written by a different
// smartvm) is left zero, but for its name, and returned as the error; a network that does
// not parse is left nil: the rest still describes the VM.
func recordOf(st *rundir.State) (*vmRecord, error) {
	r := &vmRecord{st: *st}
	var err error
	if len(st.Spec) > 0 {
		if err = json.Unmarshal(st.Spec, &r.spec); err != nil {
			r.spec = MachineSpec{}
			err = fmt.Errorf("spec: %w", err)
		}
	}
	r.spec.Name = st.Name
	if len(st.Network) > 0 {
		n := new(netdev.Network)
		if json.Unmarshal(st.Network, n) == nil {
			r.network = n
		}
	}
	return r, err
}

// state is the record as state.json holds it. A network state.json held but recordOf
// could not decode is kept as it was, so that reaping still finds it.
func (r *vmRecord) state() *rundir.State {
	st := r.st
	st.Spec, _ = json.Marshal(r.spec) // a MachineSpec always marshals
	if r.network != nil {
		st.Network, _ = json.Marshal(r.network) // a Network always marshals
	}
	return &st
}

// baseImage is the ID of the base-image bundle the VM holds in use, if any.
func (r *vmRecord) baseImage() string {
	if r.st.BaseImage == nil {
		return ""
	}
	return r.st.BaseImage.ID
}

// stagedIn reports whether the VM's drives are staged in drives, the staging directory this
// manager gives it: a recorded directory this manager does not accept (isStagingDir) is not
// where it looks.
func (r *vmRecord) stagedIn(drives string) bool {
	return r.st.StagingDir == "" || r.st.StagingDir == drives
}

// describe is the MachineInfo of the VM r records, whose files are at paths: Machine.Info,
// List and Manager.Info all derive theirs from it. A VM kept as exited (Exit) is described
// with StateExited and without what it released; for a live one the caller sets State.
func (mgr *Manager) describe(r *vmRecord, paths rundir.Paths) MachineInfo {
	st := &r.st
	info := MachineInfo{
		Name:               st.Name,
		PID:                st.PID,
		APISocket:          paths.APISocket,
		RuntimeDir:         paths.Dir,
		ConsolePath:        paths.Serial,
		LogPath:            paths.Log,
		FirecrackerBinary:  st.FirecrackerBinary,
		FirecrackerVersion: st.FirecrackerVersion,
		Mode:               st.Mode,
		Created:            st.Created,
		BaseImage:          r.baseImage(),
		Spec:               r.spec,
		RestoredFrom:       st.RestoredFrom,
		SnapshotTaken:      st.SnapshotTaken,
	}
	if e := st.Exit; e != nil {
		// What ran is released: no process, socket, logs, staged drives or network remain.
		info.State, info.PID, info.APISocket, info.LogPath = StateExited, 0, "", ""
		info.Exit = &ExitInfo{Code: e.Code, Signal: e.Signal, Reason: e.Reason, EndedAt: e.At, LogTail: e.LogTail, MainExitCode: e.MainExitCode}
		return info
	}
	if r.stagedIn(paths.Drives) {
		info.StagingDir, info.StagedBytes = paths.Drives, stagedBytes(paths.Drives)
	} // else its drives are under a staging root this manager was not given: not shown
	if info.Spec.Metrics {
		info.MetricsPath = paths.Metrics
	}
	info.VsockSocket = vsockSocketOf(info.Spec, paths)
	if st.BaseImage != nil {
		info.SSHKey = mgr.recordedSSHKey(st.BaseImage)
	}
	info.setNetwork(r.network)
	return info
}

package fakefc

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// The snapshot state file. It starts like Firecracker's: a 64-bit magic for x86_64 and the
// snapshot data format version (a length-prefixed string), so --describe-snapshot reads both
// kinds alike. Then comes the fake's own payload, a marker and JSON, and a CRC-64 of all the
// bytes before it.

const (
	snapshotMagic  = 0x0710_1984_8664_0000
	snapshotMarker = "smartvm-fakefc-snapshot\n"
)

var crcTable = crc64.MakeTable(crc64.ECMA)

// snapshotState is the fake's payload: what a restored process needs.
type snapshotState struct {
	Machine    machineConfig  `json:"machine"`
	Boot       *bootSource    `json:"boot_source"`
	TestGuest  bool           `json:"test_guest"`
	Cmdline    string         `json:"cmdline"`
	Guest      guestState     `json:"guest"`
	Drives     []*driveConfig `json:"drives"`
	Nets       []*netConfig   `json:"network_interfaces"`
	Pmems      []*pmemConfig  `json:"pmem"`
	Vsock      *vsockConfig   `json:"vsock"`
	Balloon    *balloonConfig `json:"balloon"`
	Entropy    *entropyConfig `json:"entropy"`
	MmdsConfig *mmdsConfig    `json:"mmds_config"`
	Hotplug    *hotplugConfig `json:"memory_hotplug"`
}

func encodeSnapshot(format string, st snapshotState) ([]byte, error) {
	payload, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, uint64(snapshotMagic))
	_ = binary.Write(&b, binary.LittleEndian, uint64(len(format)))
	b.WriteString(format)
	b.WriteString(snapshotMarker)
	b.Write(payload)
	_ = binary.Write(&b, binary.LittleEndian, crc64.Checksum(b.Bytes(), crcTable))
	return b.Bytes(), nil
}

// snapshotHeader reads the magic and format version of a state file, with Firecracker's
// messages for what it cannot read.
func snapshotHeader(data []byte, legacy bool) (format string, rest []byte, err error) {
	if legacy && len(data) < 8 {
		return "", nil, errors.New("Snapshot file is smaller than CRC length.")
	}
	if len(data) < 16 {
		if legacy {
			return "", nil, errors.New("An error occured with serialization/deserialization: io error: failed to fill whole buffer")
		}
		return "", nil, fmt.Errorf("An error occured during bincode decoding: UnexpectedEnd { additional: %d }", 16-len(data))
	}
	magic := binary.LittleEndian.Uint64(data)
	if magic != snapshotMagic {
		return "", nil, fmt.Errorf("Magic value does not match arch: %d", magic)
	}
	n := binary.LittleEndian.Uint64(data[8:])
	if n > uint64(len(data)-16) {
		return "", nil, fmt.Errorf("An error occured during bincode decoding: UnexpectedEnd { additional: %d }", n-uint64(len(data)-16))
	}
	return string(data[16 : 16+n]), data[16+n:], nil
}

// compatibleFormat reports whether a release reading format "have" accepts a file in format
// "file": the same major version and a minor version no newer.
func compatibleFormat(have, file string) bool {
	hv, fv := strings.Split(have, "."), strings.Split(file, ".")
	if len(hv) != 3 || len(fv) != 3 {
		return false
	}
	hMinor, err1 := strconv.Atoi(hv[1])
	fMinor, err2 := strconv.Atoi(fv[1])
	return err1 == nil && err2 == nil && hv[0] == fv[0] && fMinor <= hMinor
}

func (v *vm) createSnapshot(c snapshotCreate) (any, *apiError) {
	if v.slowSnapshot {
		time.Sleep(SlowSnapshotDelay)
	}
	start := time.Now()
	kind := "full"
	if c.SnapshotType != nil && *c.SnapshotType == "Diff" {
		kind = "diff"
	}
	if !v.rel.atLeast(13) {
		v.log.info(threadMain, "[DevPreview] Virtual machine snapshots is in development preview.")
	} else if kind == "diff" {
		v.log.info(threadMain, "[DevPreview] Virtual machine diff snapshots is in development preview.")
	}
	if kind == "diff" && !v.rel.atLeast(13) && !v.machine.TrackDirtyPages {
		// Diff snapshots without dirty page tracking (mincore) arrived in v1.13.
		return nil, fault("The requested operation is not supported: Diff snapshots are not allowed on uVMs with dirty page tracking disabled.")
	}
	if v.state != statePaused {
		return nil, fault("Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
	}
	st := snapshotState{
		Machine: v.machine, Boot: v.boot, TestGuest: v.kernel.testGuest, Cmdline: v.guest.spec.cmdline,
		Guest: v.guest.state(), Drives: v.drives, Nets: v.nets, Pmems: v.pmems, Vsock: v.vsock,
		Balloon: v.balloon, Entropy: v.entropy, MmdsConfig: v.mmdsCfg, Hotplug: v.hotplug,
	}
	data, err := encodeSnapshot(v.rel.snapshotFormat(), st)
	if err != nil {
		return nil, fault("Create snapshot error: Cannot save the microVM state: %s", err)
	}
	sf, err := os.OpenFile(c.SnapshotPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fault("Create snapshot error: Cannot perform open on the snapshot backing file: %s", osError(err))
	}
	defer sf.Close()
	mf, err := os.OpenFile(c.MemFilePath, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fault("Create snapshot error: Cannot perform open on the memory backing file: %s", osError(err))
	}
	defer mf.Close()
	if _, err := sf.Write(data); err != nil {
		return nil, fault("Create snapshot error: Cannot write memory file: %s", osError(err))
	}
	// Guest memory: a sparse file of mem_size_mib (the fake's guests never touch it).
	if err := mf.Truncate(0); err == nil {
		err = mf.Truncate(int64(v.machine.MemSizeMib) << 20)
		if err != nil {
			return nil, fault("Create snapshot error: Cannot write memory file: %s", osError(err))
		}
	}
	us := time.Since(start).Microseconds()
	v.log.info(threadMain, "'create %s snapshot' VMM action took %d us.", kind, us)
	return nil, nil
}

// loadSnapshot restores the VM. A failure ends the process after the response, as
// Firecracker treats the process as too dirty to recover.
func (v *vm) loadSnapshot(c snapshotLoad) (any, *apiError) {
	if !v.rel.atLeast(13) {
		v.log.info(threadMain, "[DevPreview] Virtual machine snapshots is in development preview.")
	}
	if v.bootPath {
		msg := "Loading a microVM snapshot not allowed after configuring boot-specific resources."
		v.log.info(threadMain, "%s", msg)
		return nil, fault("Load snapshot error: %s", msg)
	}
	st, msg := v.readSnapshot(c)
	if msg != "" {
		v.afterResponse = append(v.afterResponse, func() {
			v.log.err(threadMain, "RunWithApiError error: Failed to build MicroVM: Loading snapshot failed..")
			v.exit(1)
		})
		return nil, fault("Load snapshot error: Failed to restore from snapshot: %s", msg)
	}
	v.machine, v.boot, v.drives, v.nets, v.pmems = st.Machine, st.Boot, st.Drives, st.Nets, st.Pmems
	v.balloon, v.entropy, v.mmdsCfg, v.hotplug = st.Balloon, st.Entropy, st.MmdsConfig, st.Hotplug
	v.machine.TrackDirtyPages = (c.TrackDirtyPages != nil && *c.TrackDirtyPages) ||
		(c.EnableDiffSnapshots != nil && *c.EnableDiffSnapshots)
	v.kernel.testGuest = st.TestGuest
	v.booted, v.state = true, statePaused
	v.guest = newGuest(v, v.stdout, guestSpec{testGuest: st.TestGuest, cmdline: st.Cmdline})
	v.guest.st, v.guest.resumed, v.guest.paused = st.Guest, true, true
	if v.vsockDev != nil {
		v.vsockDev.setGuest(v.guest)
	}
	v.afterResponse = append(v.afterResponse, v.guest.start)
	if c.ResumeVM {
		v.log.info(threadMain, "Artificially kick devices")
		v.state = stateRunning
		v.guest.paused = false
	}
	return nil, nil
}

// readSnapshot reads and checks the state and memory files; msg is Firecracker's reason for
// a failure.
func (v *vm) readSnapshot(c snapshotLoad) (snapshotState, string) {
	var st snapshotState
	const stateErr = "Failed to get snapshot state from file: "
	data, err := os.ReadFile(c.SnapshotPath)
	if err != nil {
		return st, stateErr + "Failed to open snapshot file: " + osError(err)
	}
	format, rest, err := snapshotHeader(data, v.rel.legacyErrors())
	if err != nil {
		return st, stateErr + "Failed to load snapshot state from file: " + err.Error()
	}
	if !compatibleFormat(v.rel.snapshotFormat(), format) {
		return st, stateErr + "Failed to load snapshot state from file: Invalid data version: " + format
	}
	if len(rest) < 8 || crc64.Checksum(data[:len(data)-8], crcTable) != binary.LittleEndian.Uint64(data[len(data)-8:]) {
		return st, stateErr + "Failed to load snapshot state from file: CRC64 validation failed"
	}
	payload, ok := bytes.CutPrefix(rest[:len(rest)-8], []byte(snapshotMarker))
	if !ok || json.Unmarshal(payload, &st) != nil {
		return st, stateErr + "Failed to load snapshot state from file: An error occured during bincode decoding: " +
			"the state was not written by the fake firecracker"
	}
	for _, o := range c.NetworkOverrides {
		found := false
		for _, n := range st.Nets {
			if n.IfaceID == o.IfaceID {
				n.HostDevName, found = o.HostDevName, true
			}
		}
		if !found {
			return st, stateErr + "Unknown Network Device."
		}
	}
	backend, path := "File", ""
	if c.MemBackend != nil {
		backend, path = c.MemBackend.BackendType, c.MemBackend.BackendPath
	} else if c.MemFilePath != nil {
		path = *c.MemFilePath
	}
	if backend == "Uffd" {
		conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			return st, "Failed to load guest memory: Error creating guest memory from uffd: Failed to connect to UDS Unix stream: " +
				osError(unwrapOpError(err))
		}
		// Fresh guest memory registered with a userfaultfd, whose descriptor goes to the
		// handler with the memory layout, as Firecracker sends them.
		g, err := sendUffd(conn, uint64(st.Machine.MemSizeMib)<<20, v.rel)
		if err != nil {
			conn.Close()
			return st, "Failed to load guest memory: Error creating guest memory from uffd: " + err.Error()
		}
		v.guestMem = g
	} else {
		// Firecracker opens the file read-only and maps it: whoever it runs as must read it.
		f, err := os.Open(path)
		var fi os.FileInfo
		if err == nil {
			fi, err = f.Stat()
			f.Close()
		}
		if err != nil {
			return st, "Failed to load guest memory: Error creating guest memory from file: Failed to load guest memory: " + osError(err)
		}
		if uint64(fi.Size()) < st.Machine.MemSizeMib<<20 {
			return st, "Failed to load guest memory: Error creating guest memory from file: Failed to restore guest memory: " +
				"Total sum of memory regions exceeds largest possible file offset"
		}
	}
	// Block devices reopen their backing files at the paths the state holds.
	for _, d := range st.Drives {
		if d.PathOnHost == nil || d.Socket != nil {
			continue
		}
		flag := os.O_RDWR
		if d.IsReadOnly != nil && *d.IsReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(*d.PathOnHost, flag, 0)
		if err != nil {
			// As v1.14.2 and v1.7.0 say it (releases in between: one of the two forms).
			where := "Failed to restore devices: Error restoring MMIO devices"
			if !v.rel.atLeast(14) {
				where = "Failed to restore MMIO device: Cannot restore devices"
			}
			return st, fmt.Sprintf("Failed to build microVM from snapshot: %s: Block: Virtio backend error: Error manipulating the backing file: %s %s",
				where, osError(unwrapPathError(err)), *d.PathOnHost)
		}
		f.Close()
	}
	if st.Vsock != nil {
		uds := st.Vsock.UDSPath
		if c.VsockOverride != nil {
			uds = c.VsockOverride.UDSPath
		}
		ln, err := listenUnixKeep(uds)
		if err != nil {
			return st, "Failed to build microVM from snapshot: Cannot create backend for vsock device: " +
				"Error binding to the host-side Unix socket: " + osError(err)
		}
		cfg := *st.Vsock
		cfg.UDSPath = uds
		v.vsock, v.vsockDev = &cfg, newVsockDev(uds, ln, v.vsockForward)
	}
	return st, ""
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func unwrapOpError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err
	}
	return err
}

// describeSnapshot prints a state file's format version, as --describe-snapshot does.
func describeSnapshot(path string, legacy bool) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("Unable to open snapshot state file: %s", osError(err))
	}
	format, _, err := snapshotHeader(data, legacy)
	if err != nil {
		return "", fmt.Errorf("Invalid data format version of snapshot file: %w", err)
	}
	return "v" + format, nil
}

package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ErrNotOurs reports that a process is not the one smartvm started: another program, or one
// running as another user, that a recorded pid now (or always) names.
var ErrNotOurs = errors.New("process is not the one smartvm started")

// Identity is what a process smartvm started can be recognised by, beyond its pid and start
// time: the user it runs as, its executable, and an argument pair only it was given (the API
// socket inside the VM's own directory).
type Identity struct {
	// UID is the real user id the process runs as.
	UID uint32
	// Exe is the executable's resolved path (what /proc/<pid>/exe shows), or empty to skip
	// the check. A binary replaced on disk since shows with " (deleted)", which matches.
	Exe string
	// Flag and Value must appear as consecutive arguments (such as --api-sock PATH).
	Flag, Value string
}

// ExePath returns what /proc/<pid>/exe names for a running process.
func ExePath(pid int) (string, error) {
	p, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return "", fmt.Errorf("read executable of process %d: %w", pid, err)
	}
	return p, nil
}

// Check verifies that process pid matches id. It returns an error wrapping ErrNotOurs, which
// says what differs, or os.ErrProcessDone when there is no such process.
func Check(pid int, id Identity) error {
	base := "/proc/" + strconv.Itoa(pid)
	status, err := os.ReadFile(base + "/status")
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("process %d: %w", pid, os.ErrProcessDone)
	}
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	uid, ok := realUID(status)
	if !ok {
		return fmt.Errorf("process %d: no Uid line in its status: %w", pid, ErrNotOurs)
	}
	if uid != id.UID {
		return fmt.Errorf("process %d runs as uid %d, not %d: %w", pid, uid, id.UID, ErrNotOurs)
	}
	cmdline, err := os.ReadFile(base + "/cmdline")
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	if id.Flag != "" && !hasPair(cmdline, id.Flag, id.Value) {
		return fmt.Errorf("process %d was not started with %s %s: %w", pid, id.Flag, id.Value, ErrNotOurs)
	}
	if id.Exe != "" {
		exe, err := ExePath(pid)
		if err != nil {
			return err
		}
		if strings.TrimSuffix(exe, " (deleted)") != id.Exe {
			return fmt.Errorf("process %d runs %s, not %s: %w", pid, exe, id.Exe, ErrNotOurs)
		}
	}
	return nil
}

// FindByArgs returns the pids of the processes running as uid whose arguments contain flag
// followed by value, such as the firecracker that serves a VM's API socket when its
// state.json is unreadable.
func FindByArgs(uid uint32, flag, value string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if Check(pid, Identity{UID: uid, Flag: flag, Value: value}) == nil {
			if _, state, err := readStat(pid); err == nil && !ended(state) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func realUID(status []byte) (uint32, bool) {
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		if rest, ok := bytes.CutPrefix(line, []byte("Uid:")); ok {
			f := bytes.Fields(rest)
			if len(f) == 0 {
				return 0, false
			}
			u, err := strconv.ParseUint(string(f[0]), 10, 32)
			return uint32(u), err == nil
		}
	}
	return 0, false
}

func hasPair(cmdline []byte, flag, value string) bool {
	args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

// Stopped reports whether process pid is stopped (by SIGSTOP or a tracer): it holds what it
// holds, and does nothing, until something continues it.
func Stopped(pid int) bool {
	_, state, err := readStat(pid)
	return err == nil && (state == 'T' || state == 't')
}

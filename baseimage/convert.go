package baseimage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Host tools and the Debian packages that provide them.
var toolPackages = map[string]string{
	"unsquashfs": "squashfs-tools",
	"mkfs.ext4":  "e2fsprogs",
	"e2fsck":     "e2fsprogs",
	"debugfs":    "e2fsprogs",
}

// sbinDirs are the directories searched for host tools after PATH: mkfs.ext4 lives in /sbin
// or /usr/sbin, which are often not in an ordinary user's PATH.
func sbinDirs() []string { return []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} }

// lookTool finds a host tool in PATH, then in dirs, or returns an ErrMissingTool error naming
// its package.
func lookTool(dirs []string, name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", missingTool(name, toolPackages[name])
}

// runTool runs a host tool and returns its standard output. A failure carries the tail of
// its standard error.
func (m *Manager) runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	return m.runToolFiles(ctx, nil, name, args...)
}

// runToolFiles is runTool for a tool that inherits files as its fds 3, 4… (childFd).
func (m *Manager) runToolFiles(ctx context.Context, files []*os.File, name string, args ...string) ([]byte, error) {
	path, err := lookTool(m.toolDirs, name)
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.ExtraFiles = files
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", name, context.Cause(ctx))
		}
		return stdout.Bytes(), &toolError{tool: name, err: err, stderr: tail(stderr.Bytes(), 2048)}
	}
	return stdout.Bytes(), nil
}

// toolError is a host tool that exited with an error.
type toolError struct {
	tool   string
	err    error
	stderr string
}

func (e *toolError) Error() string {
	if e.stderr == "" {
		return fmt.Sprintf("%s: %v", e.tool, e.err)
	}
	return fmt.Sprintf("%s: %v: %s", e.tool, e.err, e.stderr)
}

func (e *toolError) Unwrap() error { return e.err }

func (e *toolError) exitCode() int {
	var ee *exec.ExitError
	if errors.As(e.err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

func tail(b []byte, n int) string {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = append([]byte("…"), b[len(b)-n:]...)
	}
	return string(b)
}

// Tool is a host program that converting a squashfs rootfs to ext4 runs.
type Tool struct {
	// Name is the program's name, such as "mkfs.ext4".
	Name string
	// Package is the Debian package that provides it.
	Package string
	// Path is where it was found; empty when it is missing.
	Path string
}

// HostTools lists the host programs that a squashfs conversion runs in this process
// (debugfs only when the process is not root), each looked up as the conversion looks it up:
// in PATH, then in /usr/sbin, /sbin and /usr/local/sbin. A missing tool has an empty Path;
// pulling a squashfs base image then fails with an error wrapping ErrMissingTool.
func HostTools() []Tool { return convertTools(sbinDirs(), isRoot()) }

// convertTools is HostTools for the given search directories and privileges.
func convertTools(dirs []string, root bool) []Tool {
	names := []string{"unsquashfs", "mkfs.ext4", "e2fsck"}
	if !root {
		names = append(names, "debugfs")
	}
	tools := make([]Tool, len(names))
	for i, n := range names {
		tools[i] = Tool{Name: n, Package: toolPackages[n]}
		tools[i].Path, _ = lookTool(dirs, n)
	}
	return tools
}

// checkConvertTools reports the first missing tool the conversion needs.
func (m *Manager) checkConvertTools() error {
	for _, t := range convertTools(m.toolDirs, m.euidIsRoot) {
		if t.Path == "" {
			return missingTool(t.Name, t.Package)
		}
	}
	return nil
}

// convertSquashfs makes the ext4 image dst from the squashfs src, with pub installed as root's
// authorized_keys. name is the squashfs as progress reports show it. work is a scratch
// directory that must not exist; it is removed.
//
// The image keeps the squashfs's owners, groups and modes. As root, unsquashfs restores them and
// mkfs.ext4 -d copies them. As another user, unsquashfs cannot: files come out owned by that
// user, device nodes are skipped and set-id bits dropped. The squashfs's own listing
// (unsquashfs -lln) then supplies every entry's owner, group and mode, and debugfs writes them
// into the image and creates the device nodes. Either way the result is the same.
func (m *Manager) convertSquashfs(ctx context.Context, name, src, dst, work string, pub []byte) (err error) {
	if err := m.checkConvertTools(); err != nil {
		return err
	}
	if err := os.Mkdir(work, 0o700); err != nil {
		return fmt.Errorf("create work dir: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(work); rerr != nil && err == nil {
			err = fmt.Errorf("remove work dir: %w", rerr)
		}
	}()
	tree := filepath.Join(work, "tree")
	file := name // as the download showed it
	end := m.beginPhase(file, PhaseUnpack)
	defer func() { end(false) }()
	var entries []fsEntry
	if !m.euidIsRoot {
		out, err := m.runTool(ctx, "unsquashfs", "-lln", "-d", listingRoot, src)
		if err != nil {
			return fmt.Errorf("list squashfs: %w", err)
		}
		if entries, err = parseSquashfsListing(out); err != nil {
			return fmt.Errorf("list squashfs: %w", err)
		}
	}
	if _, err := m.runTool(ctx, "unsquashfs", "-no-progress", "-d", tree, src); err != nil {
		// Without root, exit code 2 (non-fatal errors: device nodes, xattrs) is expected;
		// checkTree below verifies everything else came out.
		var te *toolError
		if m.euidIsRoot || !errors.As(err, &te) || te.exitCode() != 2 {
			return fmt.Errorf("unpack squashfs: %w", err)
		}
	}
	if !m.euidIsRoot {
		if err := checkTree(tree, entries); err != nil {
			return fmt.Errorf("unpack squashfs: %w", err)
		}
	}
	end(true)
	end = m.beginPhase(file, PhaseKey)
	fixups, err := installKey(tree, pub, m.euidIsRoot)
	if err != nil {
		return fmt.Errorf("install ssh key: %w", err)
	}
	if m.agentBinary != "" {
		fx, err := installAgentTree(tree, m.agentBinary, m.euidIsRoot)
		if err != nil {
			return fmt.Errorf("install the guest agent: %w", err)
		}
		fixups = append(fixups, fx...)
	}
	usage, err := measureTree(tree, !m.euidIsRoot)
	if err != nil {
		return fmt.Errorf("measure rootfs: %w", err)
	}
	sizeMiB, inodes := usage.imageSize(m.sizeMiB, m.headMiB)
	m.log.Debug("building ext4 rootfs", "size_mib", sizeMiB, "content_bytes", usage.bytes, "files", usage.inodes)
	end(true)
	end = m.beginPhase(file, PhaseMkfs)

	tmp := dst + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Truncate(int64(sizeMiB) << 20); err != nil {
		return fmt.Errorf("size %s: %w", tmp, err)
	}
	if _, err = m.runTool(ctx, "mkfs.ext4", "-q", "-F", "-N", strconv.FormatInt(inodes, 10),
		"-E", "root_owner=0:0", "-d", tree, tmp); err != nil {
		return fmt.Errorf("build ext4: %w", err)
	}
	if err = os.RemoveAll(tree); err != nil { // free the space before the checks
		return fmt.Errorf("remove unpacked tree: %w", err)
	}
	if !m.euidIsRoot {
		if err = m.applyOwnership(ctx, tmp, work, append(entries, fixups...)); err != nil {
			return fmt.Errorf("set owners in ext4: %w", err)
		}
	}
	end(true)
	end = m.beginPhase(file, PhaseCheck)
	if _, err = m.runTool(ctx, "e2fsck", "-fn", tmp); err != nil {
		return fmt.Errorf("check ext4: %w", err)
	}
	end(true)
	if err = f.Close(); err != nil { // install fsyncs it
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err = os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}

// phaseTick is how often a running conversion phase reports its elapsed time.
const phaseTick = time.Second

// beginPhase reports that phase of converting file begins, and then its elapsed time every
// phaseTick. The returned end stops the reports; end(true) also reports the phase's end. Only
// its first call counts.
func (m *Manager) beginPhase(file, phase string) (end func(ok bool)) {
	if m.progress == nil {
		return func(bool) {}
	}
	t0 := time.Now()
	m.progress(Progress{File: file, Phase: phase, Total: 1})
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(phaseTick)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				m.progress(Progress{File: file, Phase: phase, Total: 1, Elapsed: time.Since(t0)})
			}
		}
	}()
	var once sync.Once
	return func(ok bool) {
		once.Do(func() {
			close(stop)
			<-stopped
			if ok {
				m.progress(Progress{File: file, Phase: phase, Done: 1, Total: 1, Elapsed: time.Since(t0)})
			}
		})
	}
}

// listingRoot is the root name passed to unsquashfs -lln -d.
const listingRoot = "R"

// fsEntry is one entry of a squashfs listing (or a fixup): its path in the image ("/" for
// the root), type and mode bits, owner and, for device nodes, the device numbers.
type fsEntry struct {
	path         string
	mode         uint32 // S_IFMT type bits plus permission bits, as in st_mode
	uid, gid     int64
	size         int64 // regular files
	major, minor int64 // device nodes
}

const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000
)

var listingLineRE = lazyRegexp(`^([-dlcbps])([-rwxsStT]{9}) ([0-9]+)/([0-9]+) +([0-9]+|[0-9]+, *[0-9]+) [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2} (.*)$`)

// parseSquashfsListing parses the output of unsquashfs -lln -d R.
func parseSquashfsListing(out []byte) ([]fsEntry, error) {
	var entries []fsEntry
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		mt := listingLineRE().FindStringSubmatch(line)
		if mt == nil {
			return nil, fmt.Errorf("unexpected listing line %q (a file name with a newline?)", line)
		}
		e := fsEntry{mode: typeBits[mt[1][0]] | permBits(mt[2])}
		e.uid, _ = strconv.ParseInt(mt[3], 10, 64)
		e.gid, _ = strconv.ParseInt(mt[4], 10, 64)
		name := mt[6]
		switch e.mode & sIFMT {
		case sIFCHR, sIFBLK:
			maj, mnr, _ := strings.Cut(mt[5], ",")
			e.major, _ = strconv.ParseInt(strings.TrimSpace(maj), 10, 64)
			e.minor, _ = strconv.ParseInt(strings.TrimSpace(mnr), 10, 64)
		case sIFLNK:
			// "name -> target", where the size column is the target's length.
			n, _ := strconv.Atoi(mt[5])
			if len(name) < n+4 || name[len(name)-n-4:len(name)-n] != " -> " {
				return nil, fmt.Errorf("unexpected symlink line %q", line)
			}
			name = name[:len(name)-n-4]
		case sIFREG:
			e.size, _ = strconv.ParseInt(mt[5], 10, 64)
		}
		switch {
		case name == listingRoot:
			e.path = "/"
		case strings.HasPrefix(name, listingRoot+"/"):
			e.path = name[len(listingRoot):]
		default:
			return nil, fmt.Errorf("unexpected path in listing line %q", line)
		}
		if strings.Contains(e.path, "/../") || strings.HasSuffix(e.path, "/..") {
			return nil, fmt.Errorf("path %q in the squashfs escapes its root", e.path)
		}
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read listing: %w", err)
	}
	if len(entries) == 0 || entries[0].path != "/" {
		return nil, errors.New("listing has no root entry")
	}
	return entries, nil
}

var typeBits = map[byte]uint32{'-': sIFREG, 'd': sIFDIR, 'l': sIFLNK, 'c': sIFCHR, 'b': sIFBLK, 'p': sIFIFO, 's': sIFSOCK}

// permBits turns "rwsr-xr-t" into permission and set-id bits.
func permBits(s string) uint32 {
	var m uint32
	for i := 0; i < 9; i++ {
		if s[i] != '-' && s[i] != 'S' && s[i] != 'T' {
			m |= 1 << (8 - i)
		}
	}
	if s[2] == 's' || s[2] == 'S' {
		m |= 0o4000
	}
	if s[5] == 's' || s[5] == 'S' {
		m |= 0o2000
	}
	if s[8] == 't' || s[8] == 'T' {
		m |= 0o1000
	}
	return m
}

// checkTree verifies that a non-root unsquashfs produced every entry of the listing except
// device nodes (which it cannot create), with the right types and file sizes.
func checkTree(tree string, entries []fsEntry) error {
	for _, e := range entries {
		t := e.mode & sIFMT
		if t == sIFCHR || t == sIFBLK {
			continue
		}
		st, err := os.Lstat(filepath.Join(tree, filepath.FromSlash(e.path)))
		if err != nil {
			return fmt.Errorf("entry %s missing after unpacking: %w", e.path, err)
		}
		if modeType(st.Mode()) != t {
			return fmt.Errorf("entry %s has the wrong type after unpacking", e.path)
		}
		if t == sIFREG && st.Size() != e.size {
			return fmt.Errorf("entry %s is %d bytes after unpacking, want %d", e.path, st.Size(), e.size)
		}
	}
	return nil
}

func modeType(m fs.FileMode) uint32 {
	switch m.Type() {
	case 0:
		return sIFREG
	case fs.ModeDir:
		return sIFDIR
	case fs.ModeSymlink:
		return sIFLNK
	case fs.ModeDevice | fs.ModeCharDevice:
		return sIFCHR
	case fs.ModeDevice:
		return sIFBLK
	case fs.ModeNamedPipe:
		return sIFIFO
	case fs.ModeSocket:
		return sIFSOCK
	}
	return 0
}

// installKey writes pub as /root/.ssh/authorized_keys in tree (mode 0600 in a 0700 .ssh),
// replacing any there. It never follows a symlink out of tree: an image whose /root or
// /root/.ssh is not a directory is refused. As root it sets the owner to root directly;
// otherwise it returns the fixups for applyOwnership.
func installKey(tree string, pub []byte, asRoot bool) ([]fsEntry, error) {
	r, err := os.OpenRoot(tree)
	if err != nil {
		return nil, fmt.Errorf("open unpacked tree: %w", err)
	}
	defer r.Close()
	var fixups []fsEntry
	for _, dir := range []string{"root", "root/.ssh"} {
		st, err := r.Lstat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := r.Mkdir(dir, 0o700); err != nil {
				return nil, fmt.Errorf("create /%s: %w", dir, err)
			}
		case err != nil:
			return nil, fmt.Errorf("inspect /%s: %w", dir, err)
		case !st.IsDir():
			return nil, fmt.Errorf("the image's /%s is not a directory (%s)", dir, st.Mode().Type())
		}
		if dir == "root/.ssh" || errors.Is(err, fs.ErrNotExist) {
			if err := r.Chmod(dir, 0o700); err != nil {
				return nil, fmt.Errorf("chmod /%s: %w", dir, err)
			}
			fixups = append(fixups, fsEntry{path: "/" + dir, mode: sIFDIR | 0o700})
		}
	}
	const keys = "root/.ssh/authorized_keys"
	if err := r.Remove(keys); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("replace /%s: %w", keys, err)
	}
	f, err := r.OpenFile(keys, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create /%s: %w", keys, err)
	}
	if _, err := f.Write(pub); err != nil {
		f.Close()
		return nil, fmt.Errorf("write /%s: %w", keys, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("close /%s: %w", keys, err)
	}
	if err := r.Chmod(keys, 0o600); err != nil {
		return nil, fmt.Errorf("chmod /%s: %w", keys, err)
	}
	fixups = append(fixups, fsEntry{path: "/" + keys, mode: sIFREG | 0o600})
	return fixups, chownFixups(r, fixups, asRoot)
}

// chownFixups gives the fixups' entries to root as root; otherwise applyOwnership does it
// in the image later.
func chownFixups(r *os.Root, fixups []fsEntry, asRoot bool) error {
	if !asRoot {
		return nil
	}
	for _, e := range fixups {
		if err := r.Lchown(strings.TrimPrefix(e.path, "/"), 0, 0); err != nil {
			return fmt.Errorf("chown %s: %w", e.path, err)
		}
	}
	return nil
}

// treeUsage is what an unpacked tree needs in an ext4 image.
type treeUsage struct {
	bytes  int64 // data blocks, rounded to 4 KiB per file, directory and long symlink
	inodes int64
}

// measureTree sums the space the tree needs. With makeReadable (not root), it also grants the
// owner read access to every file and full access to every directory, so mkfs.ext4 can read
// the tree and it can be removed; the real modes come from the listing afterwards.
func measureTree(tree string, makeReadable bool) (treeUsage, error) {
	var u treeUsage
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		u.inodes++
		switch {
		case d.IsDir():
			u.bytes += 4096
			if makeReadable && info.Mode().Perm()&0o700 != 0o700 {
				if err := os.Chmod(p, info.Mode().Perm()|0o700); err != nil {
					return err
				}
			}
		case info.Mode().IsRegular():
			u.bytes += (info.Size() + 4095) &^ 4095
			if makeReadable && info.Mode().Perm()&0o400 == 0 {
				if err := os.Chmod(p, info.Mode().Perm()|0o400); err != nil {
					return err
				}
			}
		case info.Mode()&fs.ModeSymlink != 0 && info.Size() >= 60:
			u.bytes += 4096
		}
		return nil
	})
	return u, err
}

// imageSize returns the image size in MiB and the inode count to format it with: at least
// minMiB, and enough for the content plus headMiB of free space and the file system's own
// metadata (inode tables, journal).
func (u treeUsage) imageSize(minMiB, headMiB int) (sizeMiB int, inodes int64) {
	inodes = u.inodes + u.inodes/4 + 1024
	need := u.bytes + u.bytes/20 + inodes*256 + 64<<20 // 5% slack, inode tables, journal
	needMiB := int((need+(1<<20)-1)>>20) + headMiB
	sizeMiB = max(minMiB, needMiB)
	return sizeMiB, max(inodes, (int64(sizeMiB)<<20)/16384)
}

// applyOwnership writes owners, groups and modes of entries into the ext4 image with
// debugfs, creating the device nodes unsquashfs could not.
func (m *Manager) applyOwnership(ctx context.Context, image, work string, entries []fsEntry) error {
	var b strings.Builder
	for _, e := range entries {
		t := e.mode & sIFMT
		if t == sIFCHR || t == sIFBLK {
			kind := "c"
			if t == sIFBLK {
				kind = "b"
			}
			dir, base := filepath.Split(e.path)
			fmt.Fprintf(&b, "cd %s\nmknod %s %s %d %d\ncd /\n", debugfsQuote(dir), debugfsQuote(base), kind, e.major, e.minor)
		}
		q := debugfsQuote(e.path)
		fmt.Fprintf(&b, "sif %s uid %d\nsif %s gid %d\nsif %s mode 0%o\n", q, e.uid, q, e.gid, q, e.mode)
	}
	path, err := lookTool(m.toolDirs, "debugfs")
	if err != nil {
		return err
	}
	return runDebugfsScript(ctx, path, image, filepath.Join(work, "debugfs.cmd"), b.String(), nil)
}

// runDebugfsScript writes script to the file scriptPath and runs it with debugfs -w on
// image. debugfs exits 0 even when a command fails; it reports failures on stderr, after its
// version banner: any such line is an error unless expected says it is not.
func runDebugfsScript(ctx context.Context, debugfs, image, scriptPath, script string, expected func(line string) bool) error {
	if err := os.WriteFile(scriptPath, []byte(script), 0o600); err != nil {
		return fmt.Errorf("write debugfs script: %w", err)
	}
	return runDebugfs(ctx, debugfs, nil, scriptPath, image, expected)
}

// runDebugfs runs the script at scriptPath with debugfs -w on image, passing it files as its
// fds 3, 4… (childFd), as runDebugfsScript does.
func runDebugfs(ctx context.Context, debugfs string, files []*os.File, scriptPath, image string, expected func(line string) bool) error {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, debugfs, "-w", "-f", scriptPath, image)
	cmd.Stderr = &stderr
	cmd.ExtraFiles = files
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return &toolError{tool: "debugfs", err: err, stderr: tail(stderr.Bytes(), 2048)}
	}
	for line := range strings.Lines(stderr.String()) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "debugfs ") || (expected != nil && expected(line)) {
			continue
		}
		return fmt.Errorf("debugfs: %s", line)
	}
	return nil
}

// debugfsQuote quotes an argument for debugfs's command parser, which reads "" inside quotes
// as a literal quote.
func debugfsQuote(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

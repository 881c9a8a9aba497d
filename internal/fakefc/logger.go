package fakefc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Log levels, in Firecracker's order; a message is written when its level is at most the
// logger's.
const (
	levelOff = iota
	levelError
	levelWarn
	levelInfo
	levelDebug
	levelTrace
)

var levelNames = map[string]int{
	"Off": levelOff, "Error": levelError, "Warning": levelWarn, "Info": levelInfo, "Debug": levelDebug, "Trace": levelTrace,
}

var levelTags = [...]string{"OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"}

// Thread names Firecracker logs under.
const (
	threadMain = "main"
	threadAPI  = "fc_api"
	threadVCPU = "fc_vcpu 0"
)

// fcLogger writes Firecracker-format log lines:
// "<local time> [<id>:<thread>[:<LEVEL>][:<file>:<line>]] <message>".
type fcLogger struct {
	mu         sync.Mutex
	w          io.Writer
	file       *os.File // the file opened for --log-path or PUT /logger, closed on replace
	id         string
	level      int
	showLevel  bool
	showOrigin bool
	module     string
}

func newLogger(w io.Writer, id string) *fcLogger {
	if w == nil {
		w = io.Discard
	}
	return &fcLogger{w: w, id: id, level: levelInfo}
}

// origins are plausible source locations for --show-log-origin, and modules the Rust module
// paths a --module filter matches, per thread.
var (
	origins = map[string]string{
		threadMain: "src/firecracker/src/main.rs:1",
		threadAPI:  "src/firecracker/src/api_server/mod.rs:1",
		threadVCPU: "src/vmm/src/vstate/vcpu.rs:1",
	}
	modules = map[string]string{
		threadMain: "firecracker",
		threadAPI:  "firecracker::api_server",
		threadVCPU: "vmm::vstate::vcpu",
	}
)

func (l *fcLogger) logf(level int, thread, format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w == io.Discard || level > l.level || (l.module != "" && !strings.HasPrefix(modules[thread], l.module)) {
		return
	}
	var b strings.Builder
	b.WriteString(time.Now().Format("2006-01-02T15:04:05.000000000"))
	b.WriteString(" [")
	b.WriteString(l.id)
	b.WriteByte(':')
	b.WriteString(thread)
	if l.showLevel {
		b.WriteByte(':')
		b.WriteString(levelTags[level])
	}
	if l.showOrigin {
		b.WriteByte(':')
		b.WriteString(origins[thread])
	}
	b.WriteString("] ")
	fmt.Fprintf(&b, format, args...)
	b.WriteByte('\n')
	_, _ = io.WriteString(l.w, b.String())
}

func (l *fcLogger) info(thread, format string, args ...any) {
	l.logf(levelInfo, thread, format, args...)
}
func (l *fcLogger) warn(thread, format string, args ...any) {
	l.logf(levelWarn, thread, format, args...)
}
func (l *fcLogger) err(thread, format string, args ...any) {
	l.logf(levelError, thread, format, args...)
}

// loggerConfig is a PUT /logger body (or the command-line flags); nil fields are unchanged.
type loggerConfig struct {
	LogPath       *string `json:"log_path"`
	Level         *string `json:"level"`
	ShowLevel     *bool   `json:"show_level"`
	ShowLogOrigin *bool   `json:"show_log_origin"`
	Module        *string `json:"module"`
}

// configure applies a logger configuration. createFiles: the release creates a missing log
// file (v1.14+); older ones require it to exist.
func (l *fcLogger) configure(c loggerConfig, createFiles bool) error {
	var f *os.File
	if c.LogPath != nil {
		var err error
		if f, err = openTarget(*c.LogPath, createFiles); err != nil {
			return err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if f != nil {
		if l.file != nil {
			_ = l.file.Close()
		}
		l.file, l.w = f, f
	}
	if c.Level != nil {
		l.level = levelNames[logLevels[strings.ToLower(*c.Level)]]
	}
	if c.ShowLevel != nil {
		l.showLevel = *c.ShowLevel
	}
	if c.ShowLogOrigin != nil {
		l.showOrigin = *c.ShowLogOrigin
	}
	if c.Module != nil {
		l.module = *c.Module
	}
	return nil
}

func (l *fcLogger) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		_ = l.file.Close()
		l.file = nil
		l.w = io.Discard
	}
}

// openTarget opens a log, metrics or serial target for appending without blocking, as
// Firecracker does (a FIFO needs a reader; writes that would block are dropped).
func openTarget(path string, create bool) (*os.File, error) {
	flags := os.O_WRONLY | os.O_APPEND | syscall.O_NONBLOCK
	if create {
		flags |= os.O_CREATE
	}
	return os.OpenFile(path, flags, 0o644)
}

// osError formats an error from the OS as Rust's io::Error does in Firecracker's musl build:
// "No such file or directory (os error 2)".
func osError(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err.Error()
	}
	return fmt.Sprintf("%s (os error %d)", errnoText(errno), int(errno))
}

// osErrorDebug formats it as Rust's Debug for io::Error:
// `Os { code: 2, kind: NotFound, message: "No such file or directory" }`.
func osErrorDebug(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return fmt.Sprintf("Custom { kind: Other, error: %s }", rustDebugString(err.Error()))
	}
	return fmt.Sprintf("Os { code: %d, kind: %s, message: %s }", int(errno), errnoKind(errno), rustDebugString(errnoText(errno)))
}

// musl's strerror texts where they differ from a capitalized Go text.
var muslErrnoText = map[syscall.Errno]string{
	syscall.EADDRINUSE:   "Address in use",
	syscall.EBUSY:        "Resource busy",
	syscall.ELOOP:        "Symbolic link loop",
	syscall.ENAMETOOLONG: "Filename too long",
	syscall.ENODEV:       "No such device",
	syscall.ENOTSOCK:     "Not a socket",
	syscall.ECONNREFUSED: "Connection refused",
	syscall.EAGAIN:       "Resource temporarily unavailable",
}

func errnoText(e syscall.Errno) string {
	if s, ok := muslErrnoText[e]; ok {
		return s
	}
	s := e.Error()
	if s == "" {
		return fmt.Sprintf("Unknown error %d", int(e))
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func errnoKind(e syscall.Errno) string {
	switch e {
	case syscall.ENOENT:
		return "NotFound"
	case syscall.EACCES, syscall.EPERM:
		return "PermissionDenied"
	case syscall.EEXIST:
		return "AlreadyExists"
	case syscall.EADDRINUSE:
		return "AddrInUse"
	case syscall.EISDIR:
		return "IsADirectory"
	case syscall.ENOTDIR:
		return "NotADirectory"
	case syscall.EINVAL:
		return "InvalidInput"
	}
	return "Uncategorized"
}

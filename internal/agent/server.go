package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/treetar"
)

// Server serves the agent protocol (package agentwire) on any number of listeners.
type Server struct {
	log     *slog.Logger
	procs   *reaper
	version string
	pid1    bool
	started time.Time
	handler http.Handler
	// main is the main process a Main call starts; nil when the agent does not wait for one.
	main *mainProc
	// console is where a main process writes once no call streams its output (stdout,
	// stderr).
	console [2]io.Writer
}

// newServer returns a server whose commands are started and waited for by procs.
func newServer(log *slog.Logger, procs *reaper, version string) *Server {
	s := &Server{log: log, procs: procs, version: version, pid1: procs.pid1, started: time.Now(), console: [2]io.Writer{os.Stdout, os.Stderr}}
	// No gzip: the transport is local, where compressing output costs far more than it saves.
	opts := connect.WithHandlerOptions(connect.WithCodec(agentwire.Codec{}), connect.WithCompression("gzip", nil, nil), connect.WithReadMaxBytes(agentwire.MaxMessage))
	mux := http.NewServeMux()
	mux.Handle(agentwire.ProcExec, connect.NewBidiStreamHandler(agentwire.ProcExec, s.exec, opts))
	mux.Handle(agentwire.ProcMain, connect.NewBidiStreamHandler(agentwire.ProcMain, s.mainCall, opts))
	mux.HandleFunc("POST "+agentwire.ProcUpload, s.upload)
	mux.HandleFunc("GET "+agentwire.ProcDownload, s.download)
	mux.Handle(agentwire.ProcStat, connect.NewUnaryHandler(agentwire.ProcStat, s.stat, opts))
	mux.Handle(agentwire.ProcMkdir, connect.NewUnaryHandler(agentwire.ProcMkdir, s.mkdir, opts))
	mux.Handle(agentwire.ProcRemove, connect.NewUnaryHandler(agentwire.ProcRemove, s.remove, opts))
	mux.Handle(agentwire.ProcHealth, connect.NewUnaryHandler(agentwire.ProcHealth, s.health, opts))
	s.handler = mux
	return s
}

// Serve serves ln until ctx ends, then closes it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           s.handler,
		Protocols:         &protos,
		ReadHeaderTimeout: 30 * time.Second,
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerStream:     4 << 20,
			MaxReceiveBufferPerConnection: 16 << 20,
			MaxReadFrameSize:              1 << 20,
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	// When ctx ends, calls in progress get shutdownGrace to finish writing (the exit status of
	// a main process whose end ended ctx, above all); then the connections are closed.
	shut := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(shut)
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	})
	err := srv.Serve(ln)
	if !stop() {
		<-shut
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// shutdownGrace is how long Serve lets calls in progress finish once its context ends.
const shutdownGrace = time.Second

func (s *Server) health(_ context.Context, _ *connect.Request[agentwire.Empty]) (*connect.Response[agentwire.Health], error) {
	host, _ := os.Hostname()
	return connect.NewResponse(&agentwire.Health{Version: s.version, PID1: s.pid1, Hostname: host, Started: s.started}), nil
}

// checkPath refuses a guest path that is relative or has ".." elements.
func checkPath(p string) error {
	if !path.IsAbs(p) {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path %q must be absolute", p))
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path %q must not contain \"..\"", p))
		}
	}
	return nil
}

// fsError turns a file system error into a Connect error with the matching code.
func fsError(err error) error {
	code := connect.CodeUnknown
	switch {
	case errors.Is(err, fs.ErrNotExist):
		code = connect.CodeNotFound
	case errors.Is(err, fs.ErrExist):
		code = connect.CodeAlreadyExists
	case errors.Is(err, fs.ErrPermission):
		code = connect.CodePermissionDenied
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENOTEMPTY):
		code = connect.CodeFailedPrecondition
	}
	return connect.NewError(code, err)
}

func (s *Server) stat(_ context.Context, req *connect.Request[agentwire.PathRequest]) (*connect.Response[agentwire.FileInfo], error) {
	p := req.Msg.Path
	if err := checkPath(p); err != nil {
		return nil, err
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, fsError(err)
	}
	info := agentwire.FileInfo{Name: fi.Name(), Size: fi.Size(), Mode: fi.Mode(), ModTime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.UID, info.GID = int(st.Uid), int(st.Gid)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		info.Link, _ = os.Readlink(p)
	}
	return connect.NewResponse(&info), nil
}

func (s *Server) mkdir(_ context.Context, req *connect.Request[agentwire.PathRequest]) (*connect.Response[agentwire.Empty], error) {
	m := req.Msg
	if err := checkPath(m.Path); err != nil {
		return nil, err
	}
	perm := fs.FileMode(m.Mode).Perm()
	if perm == 0 {
		perm = 0o755
	}
	var err error
	if m.Recursive {
		err = os.MkdirAll(m.Path, perm)
	} else {
		err = os.Mkdir(m.Path, perm)
	}
	if err != nil {
		return nil, fsError(err)
	}
	return connect.NewResponse(&agentwire.Empty{}), nil
}

func (s *Server) remove(_ context.Context, req *connect.Request[agentwire.PathRequest]) (*connect.Response[agentwire.Empty], error) {
	m := req.Msg
	if err := checkPath(m.Path); err != nil {
		return nil, err
	}
	if filepath.Clean(m.Path) == "/" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("refusing to remove /"))
	}
	if _, err := os.Lstat(m.Path); err != nil {
		return nil, fsError(err)
	}
	var err error
	if m.Recursive {
		err = os.RemoveAll(m.Path)
	} else {
		err = os.Remove(m.Path)
	}
	if err != nil {
		return nil, fsError(err)
	}
	return connect.NewResponse(&agentwire.Empty{}), nil
}

// upload extracts the tar stream of the request's body (agentwire.ProcUpload) under the
// directory its query names. The body is read straight into the buffers files are written
// from.
func (s *Server) upload(w http.ResponseWriter, r *http.Request) {
	n, err := s.extractUpload(r)
	if err != nil {
		writeCallError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(agentwire.UploadResult{Files: n})
}

// writeCallError answers a plain HTTP call with err as a Connect error (agentwire.CallError)
// and the HTTP status Connect gives its code.
func writeCallError(w http.ResponseWriter, err error) {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		ce = connect.NewError(connect.CodeUnknown, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(callStatus(ce.Code()))
	_ = json.NewEncoder(w).Encode(agentwire.CallError{Code: ce.Code().String(), Message: ce.Message()})
}

// callStatus is the HTTP status of a failed call, as Connect maps codes.
func callStatus(c connect.Code) int {
	switch c {
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition:
		return http.StatusBadRequest
	case connect.CodeNotFound:
		return http.StatusNotFound
	case connect.CodeAlreadyExists:
		return http.StatusConflict
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeResourceExhausted:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

func (s *Server) extractUpload(r *http.Request) (int, error) {
	q := r.URL.Query()
	dir := q.Get(agentwire.UploadQueryDir)
	var lim agentwire.Limits
	var err error
	if v := q.Get(agentwire.UploadQueryMaxBytes); v != "" {
		if lim.MaxBytes, err = strconv.ParseInt(v, 10, 64); err != nil {
			return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("upload: %s=%q is not a number", agentwire.UploadQueryMaxBytes, v))
		}
	}
	if v := q.Get(agentwire.UploadQueryMaxFiles); v != "" {
		if lim.MaxFiles, err = strconv.Atoi(v); err != nil {
			return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("upload: %s=%q is not a number", agentwire.UploadQueryMaxFiles, v))
		}
	}
	if err := checkPath(dir); err != nil {
		return 0, err
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, connect.NewError(connect.CodeNotFound, fmt.Errorf("destination directory %s does not exist", dir))
	case err != nil:
		return 0, fsError(err)
	case !fi.IsDir():
		return 0, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("destination %s is not a directory", dir))
	}
	n, err := treetar.Extract(r.Body, dir, lim.ExtractOptions(treetar.Options{Owner: true}))
	if err != nil {
		if r.Context().Err() != nil {
			return 0, connect.NewError(connect.CodeCanceled, err)
		}
		var le *treetar.LimitError
		if errors.As(err, &le) {
			return 0, connect.NewError(connect.CodeResourceExhausted, errors.New(agentwire.LimitMessage("into "+dir, le)))
		}
		var ce *connect.Error
		if errors.As(err, &ce) {
			return 0, ce
		}
		return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("extract into %s: %w", dir, err))
	}
	return n, nil
}

// download answers with a tar stream of the path the query names (agentwire.ProcDownload).
// An error once the stream has begun goes in the trailer agentwire.DownloadErrorTrailer.
func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get(agentwire.DownloadQueryPath)
	if err := checkPath(p); err != nil {
		writeCallError(w, err)
		return
	}
	if _, err := os.Lstat(p); err != nil {
		writeCallError(w, fsError(err))
		return
	}
	w.Header().Set("Content-Type", agentwire.TarContentType)
	w.Header().Set("Trailer", agentwire.DownloadErrorTrailer)
	// Reading files and sending overlap through the pipe, whose chunks go out whole.
	pipe := agentwire.NewCopyPipe()
	go func() {
		pipe.CloseWrite(treetar.Write(pipe, p, path.Base(p)))
	}()
	defer pipe.CloseRead(nil)
	if _, err := pipe.WriteTo(w); err != nil && r.Context().Err() == nil {
		w.Header().Set(agentwire.DownloadErrorTrailer, err.Error())
	}
}

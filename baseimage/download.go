package baseimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/smartvm/smartvm/internal/safedir"
)

// transientError marks a failure that a later attempt of the same request may not meet:
// a refused or dropped connection, a stall. withRetries retries these and retryable
// *HTTPErrors, and nothing else.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

func transient(err error) error {
	if err == nil {
		return nil
	}
	if noSuchHost(err) {
		return err // a name that does not resolve now will not in a second either
	}
	return &transientError{err: err}
}

// noSuchHost reports whether err says that a host name does not exist (NXDOMAIN), as opposed to
// a DNS server that did not answer in time, which is worth another try.
func noSuchHost(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound && !de.IsTimeout && !de.IsTemporary
}

func isRetryable(err error) bool {
	var te *transientError
	if errors.As(err, &te) {
		return true
	}
	var he *HTTPError
	return errors.As(err, &he) && he.retryable()
}

// freeResumes is how many failed attempts that made progress (a connection dropped mid-body)
// withRetries allows on top of Options.Retries.
const freeResumes = 32

// withRetries runs attempt until it succeeds, fails for good, or fails m.retries times in a
// row without progress. An attempt that made progress before failing resets that count, up to
// freeResumes times. Waits between attempts grow exponentially with jitter. A cancelled ctx
// ends it with ctx's error.
func (m *Manager) withRetries(ctx context.Context, what string, attempt func(ctx context.Context) (progressed bool, err error)) error {
	failures, resumes, attempts := 0, 0, 0
	for {
		attempts++
		progressed, err := attempt(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		if !isRetryable(err) {
			return err
		}
		if progressed && resumes < freeResumes {
			failures = 0
			resumes++
		}
		if failures >= m.retries {
			if attempts > 1 {
				return fmt.Errorf("gave up after %d attempts: %w", attempts, err)
			}
			return err
		}
		delay := m.backoff << min(failures, 4)
		delay = delay/2 + rand.N(delay/2+1) // jitter: 50% to 100%
		failures++
		m.log.Debug("retrying", "what", what, "attempt", attempts+1, "delay", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// fetchReq describes one artifact download.
type fetchReq struct {
	name   string   // the file name shown in progress and errors
	loc    location // where to read it
	size   int64    // expected size, or -1 when unknown
	sha256 string   // expected hex digest, or "" when unknown
	etag   string   // the listing's ETag, sent as If-Range when resuming
}

// fetched is the verified result of a download.
type fetched struct {
	sha256 string
	size   int64
}

// fetch downloads req to dst through dst+".part": it verifies size and sha256, then renames.
// On failure the partial file is removed.
func (m *Manager) fetch(ctx context.Context, req fetchReq, dst string) (fetched, error) {
	tmp := dst + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fetched{}, fmt.Errorf("create %s: %w", tmp, err)
	}
	return m.fetchTo(ctx, req, f, func() error { return os.Rename(tmp, dst) }, func() { os.Remove(tmp) })
}

// fetchAt is fetch into name beneath d: the partial file is created, renamed and removed
// through d's handle, so no path under the cache is resolved again.
func (m *Manager) fetchAt(ctx context.Context, req fetchReq, d *safedir.Dir, name string) (fetched, error) {
	tmp := name + ".part"
	f, err := d.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fetched{}, fmt.Errorf("create %s: %w", tmp, err)
	}
	return m.fetchTo(ctx, req, f, func() error { return d.Rename(tmp, d, name) }, func() { d.Remove(tmp) })
}

// fetchTo downloads req into f, the new partial file, verifies its size and sha256, closes it
// and calls publish to put it in place. On failure it closes f and calls drop to remove it.
func (m *Manager) fetchTo(ctx context.Context, req fetchReq, f *os.File, publish func() error, drop func()) (res fetched, err error) {
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			drop()
		}
	}()
	d := &download{m: m, req: req, f: f, h: sha256.New()}
	m.report(req.name, 0, req.size)
	if req.loc.url == nil {
		err = d.copyFile(ctx)
	} else {
		err = m.withRetries(ctx, req.loc.String(), d.attempt)
	}
	if err != nil {
		return res, fmt.Errorf("download %s: %w", req.loc, err)
	}
	res = fetched{sha256: hex.EncodeToString(d.h.Sum(nil)), size: d.done}
	if req.size >= 0 && res.size != req.size {
		return res, fmt.Errorf("download %s: %w: got %d bytes, want %d (truncated or changed)", req.loc, ErrChecksum, res.size, req.size)
	}
	if req.sha256 != "" && res.sha256 != req.sha256 {
		return res, fmt.Errorf("download %s: %w: sha256 is %s, want %s", req.loc, ErrChecksum, res.sha256, req.sha256)
	}
	// Not fsynced here: install fsyncs the bundle's files once, before the bundle becomes
	// visible, and a squashfs that is converted and dropped never needs it.
	if err = f.Close(); err != nil {
		return res, fmt.Errorf("close %s: %w", tmp, err)
	}
	if err = publish(); err != nil {
		return res, fmt.Errorf("rename %s: %w", tmp, err)
	}
	return res, nil
}

func (m *Manager) report(name string, done, total int64) {
	if m.progress != nil {
		m.progress(Progress{File: name, Done: done, Total: total})
	}
}

// download is the state of one artifact download across attempts.
type download struct {
	m    *Manager
	req  fetchReq
	f    *os.File
	h    hash.Hash
	done int64  // bytes written to f and hashed
	etag string // validator for resuming
	last int64  // done at the last progress report
}

var errStall = errors.New("stalled")

var contentRangeRE = lazyRegexp(`^bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)$`)

// attempt makes one HTTP request, resuming with a Range request when bytes are already there.
func (d *download) attempt(ctx context.Context) (progressed bool, err error) {
	start := d.done
	defer func() { progressed = d.done > start }()
	ctx, wd := d.m.newWatchdog(ctx)
	defer wd.stop()
	wrap := wd.wrap

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.req.loc.url.String(), nil)
	if err != nil {
		return false, fmt.Errorf("new request: %w", err)
	}
	if d.done > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(d.done, 10)+"-")
		if d.etag != "" {
			req.Header.Set("If-Range", d.etag)
		}
	}
	resp, err := d.m.client.Do(req)
	if err != nil {
		return false, wrap(transient(err))
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		if d.done > 0 {
			d.m.log.Debug("server ignored the range request; restarting", "file", d.req.name)
			if err := d.restart(); err != nil {
				return false, err
			}
		}
		if d.req.size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != d.req.size {
			return false, fmt.Errorf("%w: server sends %d bytes, want %d", ErrChecksum, resp.ContentLength, d.req.size)
		}
	case http.StatusPartialContent:
		mt := contentRangeRE().FindStringSubmatch(resp.Header.Get("Content-Range"))
		if mt == nil || mt[1] != strconv.FormatInt(d.done, 10) {
			// Not the range asked for: start over on the next attempt.
			if err := d.restart(); err != nil {
				return false, err
			}
			return false, transient(fmt.Errorf("server answered range %d- with Content-Range %q", start, resp.Header.Get("Content-Range")))
		}
	default:
		return false, wrap(statusError(d.req.loc.String(), resp))
	}
	if resp.StatusCode == http.StatusOK {
		// The validator for a later Range request: a strong ETag only (RFC 9110 §13.1.5).
		d.etag = resp.Header.Get("ETag")
		if d.etag == "" {
			d.etag = d.req.etag
		}
		if strings.HasPrefix(d.etag, "W/") {
			d.etag = ""
		}
	}
	if err := d.copy(wd.reader(resp.Body)); err != nil {
		return false, wrap(err)
	}
	return false, nil
}

// restart discards what was written so far.
func (d *download) restart() error {
	if err := d.f.Truncate(0); err != nil {
		return fmt.Errorf("truncate %s: %w", d.f.Name(), err)
	}
	if _, err := d.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("seek %s: %w", d.f.Name(), err)
	}
	d.h.Reset()
	d.done, d.last = 0, 0
	return nil
}

// copyFile copies a local artifact.
func (d *download) copyFile(ctx context.Context) error {
	src, err := safedir.OpenInput(d.req.loc.path, false, false)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer src.Close()
	return d.copy(&ctxReader{ctx: ctx, r: src})
}

// Pipelined copy: one goroutine reads the body into chunkSize buffers while another hashes
// and writes them, so hashing overlaps the network instead of adding to it.
const (
	chunkSize = 1 << 20
	chunks    = 4
)

// progressStep is how many bytes pass between progress reports.
const progressStep = 1 << 20

// copy appends src to the file and the hash until EOF. Read failures are transient;
// write failures (a full disk) are not. When the size is known, at most one byte more than
// expected is read, so an oversized body is caught without reading it all.
func (d *download) copy(src io.Reader) error {
	if d.req.size >= 0 {
		src = io.LimitReader(src, d.req.size-d.done+1)
	}
	free := make(chan []byte, chunks)
	full := make(chan []byte, chunks)
	for range chunks {
		free <- make([]byte, chunkSize)
	}
	writeErr := make(chan error, 1)
	var failed atomic.Bool
	go func() {
		var err error
		for buf := range full {
			if err == nil {
				if err = d.consume(buf); err != nil {
					failed.Store(true)
				}
			}
			free <- buf[:cap(buf)]
		}
		writeErr <- err
	}()
	var rerr error
	for rerr == nil && !failed.Load() { // stop reading once the writer fails
		buf := <-free
		var n int
		n, rerr = fill(src, buf)
		if n > 0 {
			full <- buf[:n]
		}
	}
	close(full)
	if err := <-writeErr; err != nil {
		return err
	}
	if d.last != d.done {
		d.last = d.done
		d.m.report(d.req.name, d.done, d.req.size)
	}
	if !errors.Is(rerr, io.EOF) {
		return transient(fmt.Errorf("read body after %d bytes: %w", d.done, rerr))
	}
	return nil
}

// fill reads into buf until it is full or the reader fails; unlike io.ReadFull it returns the
// reader's own error, so a cut connection (io.ErrUnexpectedEOF) is not mistaken for the end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// consume hashes and writes one chunk.
func (d *download) consume(buf []byte) error {
	d.h.Write(buf)
	if _, err := d.f.Write(buf); err != nil {
		return fmt.Errorf("write %s: %w", d.f.Name(), err)
	}
	d.done += int64(len(buf))
	if d.done-d.last >= progressStep {
		d.last = d.done
		d.m.report(d.req.name, d.done, d.req.size)
	}
	return nil
}

// watchdog cancels a request when no bytes arrive for Options.StallTimeout.
type watchdog struct {
	t       *time.Timer
	d       time.Duration
	ctx     context.Context
	cancel  context.CancelCauseFunc
	stalled atomic.Bool
}

// newWatchdog returns a context for one request that is cancelled after a stall. Call stop
// when the request is done.
func (m *Manager) newWatchdog(ctx context.Context) (context.Context, *watchdog) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{d: m.stall, ctx: ctx, cancel: cancel}
	w.t = time.AfterFunc(m.stall, func() {
		w.stalled.Store(true)
		cancel(fmt.Errorf("%w: no data for %s", errStall, m.stall))
	})
	return ctx, w
}

// stop ends the watch and releases the request's context.
func (w *watchdog) stop() {
	w.t.Stop()
	w.cancel(context.Canceled)
}

// wrap turns the error of a request the watchdog cancelled into a transient stall error.
func (w *watchdog) wrap(err error) error {
	if err != nil && w.stalled.Load() {
		return transient(context.Cause(w.ctx))
	}
	return err
}

// reader pushes the watchdog back after each read that returns data.
func (w *watchdog) reader(r io.Reader) io.Reader { return &resettingReader{r: r, w: w} }

type resettingReader struct {
	r io.Reader
	w *watchdog
}

func (r *resettingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.w.t.Reset(r.w.d)
	}
	return n, err
}

// ctxReader stops a local copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

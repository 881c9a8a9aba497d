package baseimage

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeBucket plays the Firecracker CI bucket: ListObjectsV2 with prefixes, delimiters and
// pagination, and object GETs with Range support and injectable faults. Objects live under
// /bucket/<key>; any other path is served from files (for hosted manifests).
type fakeBucket struct {
	mu       sync.Mutex
	objects  map[string][]byte
	files    map[string][]byte // other paths, e.g. "/m/manifest.json"
	etags    map[string]string // by key or path, computed once
	faults   map[string]*fault // by key or path
	pageSize int
	gets     map[string]int // requests per key or path
	ranges   []string       // Range headers seen
	lists    int            // listing requests
	srv      *httptest.Server
}

// fault misbehaves for the first times requests of one key (times < 0: always).
type fault struct {
	times     int
	status    int  // answer with this status
	drop      bool // send a full Content-Length, then drop the connection after dropAfter bytes
	hang      bool // send a full Content-Length, then stop sending after dropAfter bytes
	dropAfter int64
	slow      time.Duration // pause between 4 KiB chunks
	noRange   bool          // ignore Range headers (answer 200 with everything)
	short     int64         // send only this many bytes, with a matching Content-Length
	delay     time.Duration // wait before answering
}

func newFakeBucket(t testing.TB) *fakeBucket {
	b := &fakeBucket{objects: map[string][]byte{}, files: map[string][]byte{}, etags: map[string]string{}, faults: map[string]*fault{}, gets: map[string]int{}, pageSize: 3}
	b.srv = httptest.NewServer(b)
	t.Cleanup(b.srv.Close)
	return b
}

func (b *fakeBucket) URL() string { return b.srv.URL + "/bucket" }

func (b *fakeBucket) put(key string, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.objects[key] = data
	b.etags[key] = etagOf(data)
}

func (b *fakeBucket) putFile(path string, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files[path] = data
	b.etags[path] = etagOf(data)
}

func (b *fakeBucket) setFault(key string, f *fault) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.faults[key] = f
}

func (b *fakeBucket) count(key string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gets[key]
}

func (b *fakeBucket) listCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lists
}

func (b *fakeBucket) resetCounts() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gets, b.lists, b.ranges = map[string]int{}, 0, nil
}

func etagOf(data []byte) string {
	s := md5.Sum(data)
	return `"` + hex.EncodeToString(s[:]) + `"`
}

func (b *fakeBucket) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/bucket" || r.URL.Path == "/bucket/" {
		b.serveList(w, r)
		return
	}
	b.mu.Lock()
	var data []byte
	var ok bool
	id := r.URL.Path
	if key, isObj := strings.CutPrefix(r.URL.Path, "/bucket/"); isObj {
		id = key
		data, ok = b.objects[key]
	} else {
		data, ok = b.files[id]
	}
	b.gets[id]++
	etag := b.etags[id]
	if rg := r.Header.Get("Range"); rg != "" {
		b.ranges = append(b.ranges, rg)
	}
	var f fault
	if ft := b.faults[id]; ft != nil && ft.times != 0 {
		f = *ft
		if ft.times > 0 {
			ft.times--
		}
	}
	b.mu.Unlock()

	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	if f.status != 0 {
		http.Error(w, "injected failure", f.status)
		return
	}
	if !ok {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>`)
		return
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Accept-Ranges", "bytes")
	start := int64(0)
	status := http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" && !f.noRange {
		ifRange := r.Header.Get("If-Range")
		if n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64); err == nil &&
			n < int64(len(data)) && (ifRange == "" || ifRange == etag) {
			start, status = n, http.StatusPartialContent
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", n, len(data)-1, len(data)))
		}
	}
	body := data[start:]
	if f.short > 0 && f.short < int64(len(body)) {
		body = body[:f.short]
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if (f.drop || f.hang) && f.dropAfter < int64(len(body)) {
		w.Write(body[:f.dropAfter])
		w.(http.Flusher).Flush()
		if f.hang {
			<-r.Context().Done()
			return
		}
		panic(http.ErrAbortHandler) // the server closes the connection mid-body
	}
	if f.slow > 0 {
		for len(body) > 0 {
			n := min(len(body), 4096)
			if _, err := w.Write(body[:n]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			body = body[n:]
			select {
			case <-r.Context().Done():
				return
			case <-time.After(f.slow):
			}
		}
		return
	}
	w.Write(body)
}

type xmlContents struct {
	Key          string `xml:"Key"`
	LastModified string `xml:"LastModified"`
	ETag         string `xml:"ETag"`
	Size         int    `xml:"Size"`
	StorageClass string `xml:"StorageClass"`
}

type xmlPrefix struct {
	Prefix string `xml:"Prefix"`
}

type xmlListResult struct {
	XMLName               xml.Name      `xml:"ListBucketResult"`
	Xmlns                 string        `xml:"xmlns,attr"`
	Name                  string        `xml:"Name"`
	Prefix                string        `xml:"Prefix"`
	KeyCount              int           `xml:"KeyCount"`
	MaxKeys               int           `xml:"MaxKeys"`
	Delimiter             string        `xml:"Delimiter,omitempty"`
	IsTruncated           bool          `xml:"IsTruncated"`
	ContinuationToken     string        `xml:"ContinuationToken,omitempty"`
	NextContinuationToken string        `xml:"NextContinuationToken,omitempty"`
	Contents              []xmlContents `xml:"Contents"`
	CommonPrefixes        []xmlPrefix   `xml:"CommonPrefixes"`
}

func (b *fakeBucket) serveList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	b.mu.Lock()
	b.lists++
	f := b.faults["?list"]
	var inject fault
	if f != nil && f.times != 0 {
		inject = *f
		if f.times > 0 {
			f.times--
		}
	}
	keys := make([]string, 0, len(b.objects))
	for k := range b.objects {
		keys = append(keys, k)
	}
	objects, etags := b.objects, b.etags
	pageSize := b.pageSize
	b.mu.Unlock()
	if inject.status != 0 {
		http.Error(w, "injected failure", inject.status)
		return
	}
	if q.Get("list-type") != "2" {
		http.Error(w, "want list-type=2", http.StatusBadRequest)
		return
	}
	prefix, delim := q.Get("prefix"), q.Get("delimiter")
	slices.Sort(keys)
	// entries in key order: objects and common prefixes
	type entry struct {
		name     string
		isPrefix bool
	}
	var entries []entry
	seen := map[string]bool{}
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if delim != "" {
			if i := strings.Index(rest, delim); i >= 0 {
				cp := prefix + rest[:i+len(delim)]
				if !seen[cp] {
					seen[cp] = true
					entries = append(entries, entry{cp, true})
				}
				continue
			}
		}
		entries = append(entries, entry{k, false})
	}
	start := 0
	if tok := q.Get("continuation-token"); tok != "" {
		after, err := base64.StdEncoding.DecodeString(tok)
		if err != nil {
			http.Error(w, "bad token", http.StatusBadRequest)
			return
		}
		for start < len(entries) && entries[start].name <= string(after) {
			start++
		}
	}
	end := min(len(entries), start+pageSize)
	res := xmlListResult{Xmlns: "http://s3.amazonaws.com/doc/2006-03-01/", Name: "spec.ccfc.min", Prefix: prefix, MaxKeys: pageSize, Delimiter: delim, ContinuationToken: q.Get("continuation-token")}
	for _, e := range entries[start:end] {
		if e.isPrefix {
			res.CommonPrefixes = append(res.CommonPrefixes, xmlPrefix{e.name})
		} else {
			d := objects[e.name]
			res.Contents = append(res.Contents, xmlContents{Key: e.name, LastModified: "2026-09-02T10:00:00.000Z", ETag: etags[e.name], Size: len(d), StorageClass: "STANDARD"})
		}
	}
	res.KeyCount = end - start
	if end < len(entries) {
		res.IsTruncated = true
		res.NextContinuationToken = base64.StdEncoding.EncodeToString([]byte(entries[end-1].name))
	}
	w.Header().Set("Content-Type", "application/xml")
	fmt.Fprint(w, xml.Header)
	xml.NewEncoder(w).Encode(res)
}

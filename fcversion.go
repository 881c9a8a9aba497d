package smartvm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/smartvm/smartvm/fcapi"
)

// The version of a firecracker binary is probed by running `firecracker --version`, a whole
// extra process before every start. Managers remember it in memory, and in a small file per
// binary under the runtime root (versionCacheDir), so that the next process (the next `smartvm
// run`) need not probe again. The file is keyed by the binary's identity: its path, device,
// inode, size, modification and change times. Replacing or editing the binary changes at least
// one of them (the change time cannot be set back), so a stale entry is never used.

// versionCacheDir is the directory under the runtime root that holds the version cache.
const versionCacheDir = "cache"

// maxVersionCacheFile bounds what is read from a version cache file.
const maxVersionCacheFile = 4096

// binaryKey identifies a firecracker binary as last seen: its version is probed once per key.
type binaryKey struct {
	Path  string `json:"path"`
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
}

// versionCacheEntry is the content of one version cache file.
type versionCacheEntry struct {
	Binary  binaryKey `json:"binary"`
	Version string    `json:"version"`
}

// versionCachePath is the cache file of the binary at path (an absolute path).
func (mgr *Manager) versionCachePath(path string) string {
	sum := sha256.Sum256([]byte(path))
	return filepath.Join(mgr.root.Path(), versionCacheDir, "firecracker-"+hex.EncodeToString(sum[:12])+".json")
}

// cachedVersion returns the version the cache file records for key. The file is untrusted
// input: it must be a small regular file (not a link) owned by this process's user and
// writable by no one else, hold valid JSON for exactly this key and a version that parses;
// anything else is a miss.
func (mgr *Manager) cachedVersion(key binaryKey) (fcapi.Version, bool) {
	f, err := openPrivate(mgr.versionCachePath(key.Path))
	if err != nil {
		return fcapi.Version{}, false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxVersionCacheFile+1))
	if err != nil || len(b) > maxVersionCacheFile {
		return fcapi.Version{}, false
	}
	var e versionCacheEntry
	if json.Unmarshal(b, &e) != nil || e.Binary != key {
		return fcapi.Version{}, false
	}
	v, err := fcapi.ParseVersion(e.Version)
	if err != nil {
		return fcapi.Version{}, false
	}
	return v, true
}

// storeVersion records v for key in the cache, atomically (a temporary file renamed into
// place), readable and writable by this user only. Failing to store is not an error: the next
// process probes again.
func (mgr *Manager) storeVersion(key binaryKey, v fcapi.Version) {
	if err := writeVersionCache(mgr.versionCachePath(key.Path), versionCacheEntry{Binary: key, Version: v.String()}); err != nil {
		mgr.log.Debug("store the firecracker version", "err", err)
	}
}

func writeVersionCache(path string, e versionCacheEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	// No fsync: losing the file in a crash costs one probe, and a torn file is a miss.
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// probeKey stats the binary at path (absolute) for its identity.
func probeKey(path string) (binaryKey, os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return binaryKey{}, nil, err
	}
	key := binaryKey{Path: path, Size: fi.Size(), Mtime: fi.ModTime().UnixNano()}
	fillFileID(&key, fi)
	return key, fi, nil
}

// versionProbeTimeout bounds `firecracker --version`.
const versionProbeTimeout = 10 * time.Second

// errNotPrivate: a cache file that someone else could have written.
var errNotPrivate = errors.New("not a private file")

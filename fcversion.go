package smartvm

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
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

// binaryKey identifies a firecracker (or jailer) binary as last seen: its version is probed
// once per key.
type binaryKey struct {
	// Kind is "" for firecracker, "jailer" for a jailer: the two print their versions
	// differently, and each kind has cache files of its own.
	Kind  string `json:"kind,omitempty"`
	Path  string `json:"path"`
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
}

// cacheable reports whether the key identifies the file well enough to cache its version
// across processes: with its inode and change time.
func (k binaryKey) cacheable() bool { return k.Ino != 0 && k.Ctime != 0 }

// versionCacheEntry is the content of one version cache file.
type versionCacheEntry struct {
	Binary  binaryKey `json:"binary"`
	Version string    `json:"version"`
}

// cacheName is the name of the binary's cache file: its kind ("firecracker" for Kind "") and
// a hash of its absolute path.
func (key binaryKey) cacheName() string {
	sum := sha256.Sum256([]byte(key.Path))
	return cmp.Or(key.Kind, "firecracker") + "-" + hex.EncodeToString(sum[:12]) + ".json"
}

// probedVersion returns the version of the binary key identifies: from the manager's memory,
// else from the runtime root's cache, else by running probe on it, and remembers it in both.
func (mgr *Manager) probedVersion(ctx context.Context, key binaryKey, probe func(context.Context, string) (fcapi.Version, error)) (fcapi.Version, error) {
	mgr.verMu.Lock()
	defer mgr.verMu.Unlock()
	if v, ok := mgr.versions[key]; ok {
		return v, nil
	}
	onDisk := key.Ino != 0 // the platform gives the binary's identity
	if onDisk {
		if v, ok := mgr.cachedVersion(key); ok {
			mgr.versions[key] = v
			return v, nil
		}
	}
	v, err := probe(ctx, key.Path)
	if err != nil {
		return fcapi.Version{}, err
	}
	mgr.versions[key] = v
	if onDisk {
		mgr.storeVersion(key, v)
	}
	return v, nil
}

// cachedVersion returns the version the cache file records for key. The file is untrusted
// input: it is read through the runtime root's open directory, must be a small regular file
// owned by this process's user, hold valid JSON for exactly this key and a version that parses;
// anything else is a miss.
func (mgr *Manager) cachedVersion(key binaryKey) (fcapi.Version, bool) {
	if !key.cacheable() {
		return fcapi.Version{}, false
	}
	b, err := mgr.root.ReadCache(key.cacheName(), maxVersionCacheFile)
	if err != nil {
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

// storeVersion records v for key in the cache, atomically, readable and writable by this user
// only. Failing to store is not an error: the next process probes again.
func (mgr *Manager) storeVersion(key binaryKey, v fcapi.Version) {
	if !key.cacheable() {
		return
	}
	b, err := json.Marshal(versionCacheEntry{Binary: key, Version: v.String()})
	if err == nil {
		err = mgr.root.WriteCache(key.cacheName(), b)
	}
	if err != nil {
		mgr.log.Debug("store the version of a binary", "binary", key.Path, "err", err)
	}
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

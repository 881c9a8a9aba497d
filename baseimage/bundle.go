package baseimage

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Presets accepted in Source.Preset.
const (
	// PresetLatest is the highest vmlinux-X.Y.Z and the highest ubuntu-X.Y.squashfs of the newest
	// build in the Firecracker CI bucket.
	PresetLatest = "latest"
	// PresetLTS is the highest 6.1.x kernel of the newest build that has one, with that build's
	// rootfs.
	PresetLTS = "lts"
)

// ltsSeries is the kernel series the lts preset pins (Firecracker's kernel policy supports it
// since v1.9; it is the broadest-compatible long-term line).
const ltsSeries = "6.1"

// Source says where a bundle comes from. Exactly one of Preset, ManifestURL, ManifestPath and
// OCI is set. The zero value is invalid.
type Source struct {
	// Preset is PresetLatest or PresetLTS: a kernel and rootfs from the Firecracker CI bucket.
	Preset string `json:"preset,omitempty"`
	// Release pins a preset to the bucket's per-release layout, firecracker-ci/<Release>/<arch>/,
	// for example "v1.14" to match an installed Firecracker 1.14.x. Empty means the newest
	// weekly build. Only valid with Preset.
	Release string `json:"release,omitempty"`
	// ManifestURL is an http or https URL of a manifest (see the package documentation).
	ManifestURL string `json:"manifest_url,omitempty"`
	// ManifestPath is a local manifest file. Relative artifact URLs in it are files next to it.
	ManifestPath string `json:"manifest_path,omitempty"`
	// OCI is an OCI (Docker) image reference: "alpine", "alpine:3.20", "ghcr.io/o/i@sha256:…",
	// "localhost:5000/img:tag". Its layers are flattened into the ext4 rootfs, with the guest
	// agent as init (see the package documentation).
	OCI string `json:"oci,omitempty"`
	// Refresh makes Pull resolve the source again (list the bucket, fetch the manifest) even
	// when a bundle resolved from it earlier is cached. It is not recorded.
	Refresh bool `json:"-"`
}

var releaseRE = lazyRegexp(`^v[0-9]{1,3}\.[0-9]{1,3}$`)

// Validate checks that exactly one origin is set and that each set field is well formed.
func (s Source) Validate() error {
	n := 0
	for _, v := range []string{s.Preset, s.ManifestURL, s.ManifestPath, s.OCI} {
		if v != "" {
			n++
		}
	}
	switch {
	case n == 0:
		return errors.New("base image source: set one of Preset, ManifestURL, ManifestPath or OCI")
	case n > 1:
		return errors.New("base image source: set only one of Preset, ManifestURL, ManifestPath or OCI")
	}
	switch {
	case s.Preset != "":
		if s.Preset != PresetLatest && s.Preset != PresetLTS {
			return fmt.Errorf("base image source: unknown preset %q (want %q or %q)", s.Preset, PresetLatest, PresetLTS)
		}
		if s.Release != "" && !releaseRE().MatchString(s.Release) {
			return fmt.Errorf("base image source: release %q is not of the form vMAJOR.MINOR, for example v1.14", s.Release)
		}
	case s.Release != "":
		return errors.New("base image source: Release applies only to a Preset")
	case s.ManifestURL != "":
		if _, err := parseHTTPURL(s.ManifestURL); err != nil {
			return fmt.Errorf("base image source: manifest URL: %w", err)
		}
	case s.OCI != "":
		if _, err := parseOCIRef(s.OCI); err != nil {
			return fmt.Errorf("base image source: %w", err)
		}
	}
	return nil
}

// String describes the source for messages: "preset latest", "preset lts (v1.14)",
// "manifest https://…", "manifest file /path", "image alpine:3.20".
func (s Source) String() string {
	switch {
	case s.Preset != "" && s.Release != "":
		return fmt.Sprintf("preset %s (%s)", s.Preset, s.Release)
	case s.Preset != "":
		return "preset " + s.Preset
	case s.ManifestURL != "":
		return "manifest " + s.ManifestURL
	case s.ManifestPath != "":
		return "manifest file " + s.ManifestPath
	case s.OCI != "":
		return "image " + s.OCI
	}
	return "empty source"
}

// Bundle is a cached, verified, boot-ready base image. Paths are absolute and read-only: a VM
// must boot from a copy of Rootfs, never from Rootfs itself.
type Bundle struct {
	// ID is derived from the content: the artifacts' sha256s, the boot args, the architecture and
	// the rootfs conversion settings. It names the bundle's directory.
	ID string `json:"id"`
	// Name is a label: the manifest's name, or "ubuntu-X.Y+vmlinux-X.Y.Z" for a preset.
	Name string `json:"name"`
	// Dir is the bundle's directory in the cache.
	Dir string `json:"dir"`
	// Arch is x86_64 or aarch64.
	Arch string `json:"arch"`
	// Kernel is the uncompressed kernel (vmlinux).
	Kernel string `json:"kernel"`
	// Initrd is the initrd, or "" when the bundle has none.
	Initrd string `json:"initrd,omitempty"`
	// Rootfs is the ext4 root filesystem.
	Rootfs string `json:"rootfs"`
	// BootArgs is the kernel command line to boot with.
	BootArgs string `json:"boot_args"`
	// SSHPrivateKey is the path of the OpenSSH private key (mode 0600) whose public half is
	// root's authorized_keys in Rootfs, or "" when the rootfs came as ext4 and was used as it is.
	SSHPrivateKey string `json:"ssh_private_key,omitempty"`
	// SSHPublicKey is the path of the public half of SSHPrivateKey (authorized_keys format), or
	// "" when there is no key.
	SSHPublicKey string `json:"ssh_public_key,omitempty"`
	// Source is the request that installed the bundle.
	Source Source `json:"source"`
	// Firecracker is the range of Firecracker versions the bundle is meant for, or nil when it
	// states none.
	Firecracker *VersionRange `json:"firecracker,omitempty"`
	// Artifacts lists what was downloaded, with the verified sha256s.
	Artifacts []Artifact `json:"artifacts"`
	// Size is the disk space the bundle's files use, in bytes.
	Size int64 `json:"size"`
	// Created is when the bundle was installed.
	Created time.Time `json:"created"`
	// LastUsed is when Pull or Use last returned the bundle. Eviction keeps the most recent.
	LastUsed time.Time `json:"last_used"`
	// Holders names the current users recorded by Use. A bundle with holders is never evicted
	// or removed.
	Holders []string `json:"holders,omitempty"`
	// OCI describes the image a bundle from Source.OCI was converted from; nil for others.
	OCI *OCIImage `json:"oci,omitempty"`
}

// OCIImage is the OCI image a bundle's rootfs was converted from.
type OCIImage struct {
	// Reference is the reference as pulled, for example "alpine:3.20".
	Reference string `json:"reference"`
	// Digest is the digest of the image manifest converted (for a multi-platform image, the
	// one for this platform), "sha256:…".
	Digest string `json:"digest"`
	// Platform is the image's platform, "linux/amd64" or "linux/arm64".
	Platform string `json:"platform"`
	// Config is what the image says to run. The same is in the rootfs at
	// /etc/smartvm/init.json, where the agent, as init, reads it.
	Config ImageConfig `json:"config"`
}

// ImageConfig is the part of an OCI image config that says what to run. Its JSON is the
// guest agent's init config.
type ImageConfig struct {
	// Entrypoint and Cmd are joined into the command line, as with docker run.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env holds KEY=VALUE entries.
	Env []string `json:"env,omitempty"`
	// WorkingDir is the directory to run in; "" is the user's home, else /.
	WorkingDir string `json:"working_dir,omitempty"`
	// User is a name, uid, or uid:gid (names allowed); "" is root.
	User string `json:"user,omitempty"`
}

// Artifact is one downloaded file of a bundle.
type Artifact struct {
	// Role is "kernel", "rootfs" or "initrd".
	Role string `json:"role"`
	// URL is where it was downloaded from.
	URL string `json:"url"`
	// SHA256 is the verified hex digest of the downloaded bytes.
	SHA256 string `json:"sha256"`
	// Size is the downloaded size in bytes.
	Size int64 `json:"size"`
	// Format is the rootfs format as downloaded ("ext4" or "squashfs"); "" for other roles.
	Format string `json:"format,omitempty"`
}

// Progress reports download progress of one file to Options.Progress.
type Progress struct {
	// File is the artifact's file name, for example "vmlinux-6.1.155" or "ubuntu-24.04.squashfs".
	File string
	// Done is the number of bytes received so far; Total is the expected size (-1 if unknown).
	// During a Phase, Done is 0 until the phase ends, then 1, and Total is 1.
	Done, Total int64
	// Phase is empty while File downloads. Turning a squashfs File into the ext4 rootfs then
	// reports PhaseUnpack, PhaseKey, PhaseMkfs and PhaseCheck in turn: when each begins, about
	// every second while it runs, and when it ends (Done == 1). A phase that fails reports no
	// end; Pull returns the error.
	Phase string
	// Elapsed is the time since the phase began (zero while downloading).
	Elapsed time.Duration
}

// Conversion phases, as Progress.Phase reports them.
const (
	PhaseUnpack = "unpack" // unsquashfs
	PhaseKey    = "key"    // installing the SSH key and measuring the tree
	PhaseMkfs   = "mkfs"   // mkfs.ext4 (and, without root, setting owners with debugfs)
	PhaseCheck  = "check"  // e2fsck
)

// VersionRange is an inclusive range of Firecracker versions. A bound with fewer than three
// components covers every version it prefixes: Max "1.14" admits 1.14.9, Min "1.14" admits
// 1.14.0. An empty bound is open.
type VersionRange struct {
	Min string `json:"min,omitempty"`
	Max string `json:"max,omitempty"`
}

var versionRE = lazyRegexp(`^v?[0-9]{1,4}(\.[0-9]{1,4}){0,2}$`)

// parseVersion turns "v1.14.2" or "1.14" into its numeric components.
func parseVersion(v string) ([]int, error) {
	if !versionRE().MatchString(v) {
		return nil, fmt.Errorf("version %q is not of the form X, X.Y or X.Y.Z", v)
	}
	parts := strings.Split(strings.TrimPrefix(v, "v"), ".")
	out := make([]int, len(parts))
	for i, p := range parts {
		out[i], _ = strconv.Atoi(p) // digits only, at most four: cannot fail
	}
	return out, nil
}

// comparePrefix compares v with bound over the components bound has.
func comparePrefix(v, bound []int) int {
	for i, b := range bound {
		x := 0
		if i < len(v) {
			x = v[i]
		}
		if x != b {
			if x < b {
				return -1
			}
			return 1
		}
	}
	return 0
}

// Validate checks that the bounds are versions and that Min is not above Max.
func (r VersionRange) Validate() error {
	var lo, hi []int
	var err error
	if r.Min == "" && r.Max == "" {
		return errors.New("set min, max or both")
	}
	if r.Min != "" {
		if lo, err = parseVersion(r.Min); err != nil {
			return fmt.Errorf("min: %w", err)
		}
	}
	if r.Max != "" {
		if hi, err = parseVersion(r.Max); err != nil {
			return fmt.Errorf("max: %w", err)
		}
	}
	if lo != nil && hi != nil && comparePrefix(lo, hi) > 0 {
		return fmt.Errorf("min %s is above max %s", r.Min, r.Max)
	}
	return nil
}

// Contains reports whether the Firecracker version v ("1.14.2" or "v1.14.2") is in the range.
func (r VersionRange) Contains(v string) (bool, error) {
	got, err := parseVersion(v)
	if err != nil {
		return false, err
	}
	if r.Min != "" {
		lo, err := parseVersion(r.Min)
		if err != nil {
			return false, fmt.Errorf("range min: %w", err)
		}
		if comparePrefix(got, lo) < 0 {
			return false, nil
		}
	}
	if r.Max != "" {
		hi, err := parseVersion(r.Max)
		if err != nil {
			return false, fmt.Errorf("range max: %w", err)
		}
		if comparePrefix(got, hi) > 0 {
			return false, nil
		}
	}
	return true, nil
}

// bundle file names inside a bundle directory.
const (
	fileMeta    = "meta.json"
	fileKernel  = "vmlinux"
	fileInitrd  = "initrd"
	fileRootfs  = "rootfs.ext4"
	fileKey     = "id_ed25519"
	fileKeyPub  = "id_ed25519.pub"
	fileConfig  = "config.json" // an OCI image's config, as the registry served it
	metaVersion = 1
)

// SSHKeyPath returns where the bundle with the given ID keeps its SSH private key, if it has
// one: a caller that recorded a bundle's key path can check it against this instead of trusting
// the record. It returns "" for a malformed ID.
func (m *Manager) SSHKeyPath(id string) string {
	if !idRE().MatchString(id) {
		return ""
	}
	return m.path(dirBundles, id, fileKey)
}

// withDir fills in the absolute paths from the bundle directory.
func (b *Bundle) withDir(dir string) {
	b.Dir = dir
	b.Kernel = filepath.Join(dir, fileKernel)
	b.Rootfs = filepath.Join(dir, fileRootfs)
	b.Initrd, b.SSHPrivateKey, b.SSHPublicKey = "", "", ""
	for _, a := range b.Artifacts {
		if a.Role == roleInitrd {
			b.Initrd = filepath.Join(dir, fileInitrd)
		}
		if a.Role == roleRootfs && a.Format == formatSquashfs {
			b.SSHPrivateKey = filepath.Join(dir, fileKey)
			b.SSHPublicKey = filepath.Join(dir, fileKeyPub)
		}
	}
}

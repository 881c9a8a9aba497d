// Package baseimage is the BaseImageManager: it finds, downloads, verifies, converts and caches
// bootable Firecracker base images, and hands back local paths. It imports nothing else from
// smartvm and is usable on its own.
//
// # Bundles
//
// A [Bundle] is a kernel, an ext4 root filesystem, an optional initrd, the boot arguments and,
// when the rootfs was converted from squashfs, an SSH key pair whose public half is root's
// authorized_keys in the image. Its files are read-only: a VM boots from a copy of
// Bundle.Rootfs (reflinked or copied into its run directory), never from the cached file.
//
//	m, err := baseimage.New(baseimage.Options{Logger: logger})
//	b, err := m.Pull(ctx, baseimage.Source{Preset: baseimage.PresetLTS})
//	release, err := m.Use(ctx, b.ID, vmName) // protect it from eviction while the VM needs it
//	defer release()
//	// boot b.Kernel with b.BootArgs and a copy of b.Rootfs; ssh -i b.SSHPrivateKey root@guest
//
// # Sources
//
// A [Source] names exactly one of:
//
//   - Preset "latest" or "lts", from the Firecracker CI bucket (Options.BucketURL, by default
//     https://s3.amazonaws.com/spec.ccfc.min, read path-style with ListObjectsV2, following
//     continuation tokens). Weekly builds live under firecracker-ci/<YYYYMMDD>-<commit>-<n>/;
//     build prefixes are found with delimiter "/" and must match
//     ^firecracker-ci/[0-9]{8}-[^/]+/$ (the per-release v1.X/ prefixes and
//     firecracker-ci/firecracker/ do not). They are sorted lexically, newest last. In
//     <build><arch>/, kernels are keys named exactly vmlinux-X.Y.Z with a 1–3 digit patch
//     (no -no-acpi, .debug or debug/ variants) and root filesystems exactly ubuntu-X.Y.squashfs;
//     versions compare numerically. "latest" is the highest kernel and the highest rootfs of
//     the newest build; "lts" is the highest 6.1.Z kernel of the newest build that has one,
//     with that build's rootfs. A build that lacks either artifact for the architecture (one
//     still being uploaded) is passed over for the next older one. Boot args are
//     "console=ttyS0 reboot=k panic=1" ("keep_bootcon " first on aarch64).
//   - Preset with Release "vX.Y": the older per-release layout firecracker-ci/vX.Y/<arch>/,
//     with the same key patterns; the bundle's Firecracker range is X.Y. Releases before v1.11
//     shipped ext4 images instead of squashfs: use a manifest for those.
//   - ManifestURL or ManifestPath: a hosted manifest (below).
//   - OCI: an OCI (Docker) image reference (below).
//
// [ParseImageArg] turns a command-line image argument into a Source, trying hello (the
// smartvm command's built-in guest: [ErrHelloImage]), the presets, a manifest (an existing
// file, an http(s) URL ending in .json) and then an OCI reference, in that order.
//
// # Pull, the record of a resolution, and Refresh
//
// Resolving a preset or a manifest URL writes a record of the result (exact bucket keys or
// URLs, sizes, ETags and the verified sha256s) in the cache. A later Pull of the same source
// does not touch the network: it returns the cached bundle, in a few tens of microseconds,
// offline too. If that bundle was removed or evicted, Pull downloads the recorded artifacts
// again without listing and checks them against the recorded sha256s, so "latest" keeps
// meaning the build it first resolved to. Source.Refresh resolves again (lists the bucket or
// fetches the manifest); when the result is unchanged the cached bundle is reused without
// downloading, otherwise the new one is pulled and recorded. A manifest file (ManifestPath) is
// read again on every Pull, which needs no network.
//
// # Rootfs conversion
//
// A squashfs rootfs becomes a writable ext4: unsquashfs (Debian package squashfs-tools)
// unpacks it, a freshly generated ed25519 key is installed as /root/.ssh/authorized_keys (mode
// 0600 in a 0700 .ssh, owned by root, replacing any there; symlinked /root or /root/.ssh are
// refused), and mkfs.ext4 -d (e2fsprogs) builds the image, sized Options.RootfsSizeMiB (1024 by
// default, as in Firecracker's guide) or larger when the content plus
// Options.RootfsHeadroomMiB needs it. e2fsck -fn must accept the result. The image keeps the
// squashfs's owners, groups and modes: as root, unsquashfs restores them; as another user, the
// squashfs's own listing supplies them and debugfs writes them into the image, device nodes
// and set-id bits included, so both give the same image. The private key stays in the bundle,
// mode 0600. A rootfs with format ext4 is used as it is, after verification, with no key.
// Missing tools fail before anything is downloaded, with an [ErrMissingTool] error naming the
// Debian package.
//
// # OCI images
//
// Source.OCI names an image in a registry: "alpine", "alpine:3.20", "ghcr.io/o/i@sha256:…",
// "localhost:5000/img:tag" (github.com/google/go-containerregistry parses and pulls it; Docker
// Hub is the default registry, and localhost, loopback and private addresses are reached over
// plain HTTP). Credentials come from Options.Keychain (the smartvm command passes the docker
// config file's), requests go through Options.HTTPClient's transport (and its proxy). From an
// index, the manifest for linux and the manager's architecture (amd64 or arm64, variant v8 or
// none) is taken; an index without one is an [ErrPlatform] error naming the platforms it has.
// The manifest must be an OCI or Docker v2 image manifest with a container image config, and
// its layers tar, tar+gzip or tar+zstd: anything else is [ErrUnsupportedMediaType].
//
// Pull resolves the reference to its manifest digest. A digest converted before (under any
// reference) is neither downloaded nor converted again. A reference pulled before resolves
// from the cache without any request, offline too, as presets do; Source.Refresh resolves a
// tag again.
//
// The layers stream from the registry, one after the other, with a Progress report per layer
// ("layer 2/5 sha256:0123456789ab"), into one directory tree, without being stored: whiteouts
// and opaque directories remove what lower layers made, and hard links, symlinks, device
// nodes, FIFOs, set-id and sticky bits, extended attributes (file capabilities included) and
// owners are kept. mkfs.ext4 -d builds the image from the tree, and a debugfs script then
// writes what the tree on disk could not hold when the process is not root (owners, set-id
// bits, device nodes, FIFOs, xattrs), so the image is the same with or without root; e2fsck
// -fn must accept it. It is sized to the content plus Options.RootfsHeadroomMiB. Each layer is
// checked against its digest once read ([ErrChecksum]). An entry with a ".." element or an
// absolute name, or whose path goes through a symlink, is refused with [ErrUnsafeLayer]; one
// the image cannot hold (an unknown type, a control character in its name, an oversized
// xattr) with [ErrInvalidLayer]; both name the layer and the entry. Layers that unpack to more
// than Options.OCIMaxBytes of file contents or hold more than Options.OCIMaxFiles entries fail
// with [ErrImageTooLarge] before the entry past the limit is written. A full disk fails naming
// the entry and the cache. Nothing of a failed conversion is cached or left in staging.
//
// The rootfs gets Options.AgentBinary at [AgentPath] as init (the bundle's BootArgs end in
// "init=/usr/local/bin/smartvm-agent") and the image's Entrypoint, Cmd, Env, WorkingDir and
// User as JSON at [InitConfigPath], which the agent runs. The kernel is Options.Kernel, else
// the kernel of preset latest (from its cached bundle, else downloaded alone), linked or copied
// into the bundle. Bundle.OCI records the reference, manifest digest, platform and config; an
// unknown repository, tag or digest is [ErrNotFound], refused credentials [ErrAuth].
//
// # Manifest format (version 1)
//
// A manifest is a JSON object with exactly these top-level keys:
//
//	{
//	  "version": 1,                       // required, the integer 1
//	  "name": "ubuntu-24.04-6.1",         // required, [A-Za-z0-9][A-Za-z0-9._+-]{0,127}
//	  "arch": "x86_64",                   // required, "x86_64" or "aarch64"
//	  "kernel": {"url": "vmlinux-6.1", "sha256": "<64 lowercase hex>", "size": 41234432},
//	  "rootfs": {"url": "ubuntu-24.04.squashfs", "sha256": "<64 hex>", "size": 314572800,
//	             "format": "squashfs"},  // "ext4" (used as is) or "squashfs" (converted)
//	  "initrd": {"url": "initrd.img", "sha256": "<64 hex>", "size": 1048576}, // optional
//	  "boot_args": "console=ttyS0 reboot=k panic=1", // optional, printable ASCII; default as for presets
//	  "firecracker": {"min": "1.10", "max": "1.14"}   // optional; X, X.Y or X.Y.Z, inclusive
//	}
//
// Unknown or repeated keys at any level, a missing required field, a null, a value of the
// wrong JSON type, a sha256 that is not 64 lowercase hex digits, a size that is not a positive
// integer, an unknown version or architecture are all rejected with a [*ManifestError] whose
// Field names the offending field ("kernel.sha256", "rootfs.format", …). Every sha256 and size
// is verified after download. URLs may be relative: they resolve against the manifest's own
// location, its URL for a hosted manifest (which may only name http and https artifacts) or
// its directory for a manifest file (which may also name local files, relative or file://).
// A manifest whose arch differs from Options.Arch is refused. [ManifestFileFor] and
// [Manifest.Validate] help publish a manifest next to its artifacts.
//
// # Cache
//
// The cache directory (Options.Dir, /tmp/.smartvm/base-images by default, mode 0700, owned by
// the current user and refused if others can write to it) holds one directory per bundle under
// bundles/, named by an ID derived from the artifacts' sha256s, the boot args, the architecture
// and the conversion settings, with a meta.json describing it. Installs are atomic: artifacts
// are downloaded into a staging directory next to bundles/ (each through a ".part" file that is
// renamed once its size and sha256 check out), converted there, fsynced, and the directory is
// renamed into bundles/ under the cache lock. A crash at any moment leaves either no bundle or a
// whole one; the next install or Prune removes what an interrupted install left. Pulls of one
// source are serialised across processes by a file lock (github.com/gofrs/flock) and
// deduplicated within a process (golang.org/x/sync/singleflight), so concurrent pulls download
// once and all succeed.
//
// Downloads resume with an HTTP Range request (If-Range on the ETag) after a dropped
// connection, restart when the server ignores the range, and retry connection errors, HTTP
// 5xx, 429 and 408, and stalls (no data for Options.StallTimeout) with exponential backoff and
// jitter, Options.Retries times in a row without progress. Bad input caches nothing and leaves
// no temporary file: a checksum or size mismatch or truncated body ([ErrChecksum]), a malformed
// manifest ([ErrInvalidManifest]), a 404 ([ErrNotFound], as an [*HTTPError]), a timeout, a full
// disk.
//
// After each install Pull evicts the least recently used bundles beyond Options.Keep (2 by
// default). A Warn record naming the bundle (id, name, last_used, size) is logged before each
// eviction. A bundle with an in-use marker ([Manager.Use]) is never evicted or removed
// ([ErrInUse]); markers are files, so they protect bundles across processes and survive the
// process that wrote them (a detached VM) until released with the returned function or
// [Manager.Release]. [Manager.List], [Manager.Get], [Manager.Remove] and [Manager.Prune] manage
// the cache by ID or unique ID prefix.
//
// # Errors and logging
//
// Errors wrap their cause with %w; check them with errors.Is against [ErrNotFound], [ErrInUse],
// [ErrChecksum], [ErrInvalidManifest], [ErrMissingTool], [ErrAuth], [ErrPlatform],
// [ErrUnsupportedMediaType], [ErrUnsafeLayer] and [ErrInvalidLayer], and errors.As for
// [*ManifestError] and [*HTTPError]. The package never panics, prints or reads environment variables (host tools
// are found through PATH, then /usr/sbin, /sbin and /usr/local/sbin); it logs to
// Options.Logger, which discards by default, and reports download progress to
// Options.Progress.
package baseimage

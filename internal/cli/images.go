package cli

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm/baseimage"
)

// imageFlags are the flags that choose a base image source.
type imageFlags struct {
	preset, manifestURL, manifestPath string
}

// imageSource resolves the base image source: the flags, else $SMARTVM_BASE_IMAGE_MANIFEST_URL,
// $SMARTVM_BASE_IMAGE_MANIFEST_PATH or $SMARTVM_BASE_IMAGE_PRESET, else preset latest. Setting
// more than one flag, or a bad flag value, is a usage error; setting more than one variable,
// or a bad value in one, is an error that names the variable.
func (a *app) imageSource(f imageFlags) (baseimage.Source, error) {
	src, n := imageSourceOf(f)
	if n > 1 {
		return baseimage.Source{}, usagef("use only one of --preset, --manifest-url and --manifest-path")
	}
	fromFlag := n == 1
	if n == 0 {
		env := imageFlags{
			preset:       a.getenv(envBaseImagePreset),
			manifestURL:  a.getenv(envBaseImageManifest),
			manifestPath: a.getenv(envBaseImageManifestP),
		}
		if src, n = imageSourceOf(env); n > 1 {
			return baseimage.Source{}, fmt.Errorf("set only one of $%s, $%s and $%s", envBaseImagePreset, envBaseImageManifest, envBaseImageManifestP)
		}
		if n == 0 {
			src.Preset = baseimage.PresetLatest
		}
	}
	if src.ManifestPath != "" {
		p, err := filepath.Abs(src.ManifestPath)
		if err != nil {
			return baseimage.Source{}, fmt.Errorf("manifest path: %w", err)
		}
		src.ManifestPath = p
	}
	if err := src.Validate(); err != nil {
		field := 0 // the source is a preset, a manifest URL or a manifest path
		switch {
		case src.ManifestURL != "":
			field = 1
		case src.ManifestPath != "":
			field = 2
		}
		if fromFlag {
			return baseimage.Source{}, usagef("invalid %s: %w", []string{"--preset", "--manifest-url", "--manifest-path"}[field], err)
		}
		return baseimage.Source{}, fmt.Errorf("invalid $%s: %w; fix or unset it",
			[]string{envBaseImagePreset, envBaseImageManifest, envBaseImageManifestP}[field], err)
	}
	return src, nil
}

func imageSourceOf(f imageFlags) (baseimage.Source, int) {
	n := 0
	for _, v := range []string{f.preset, f.manifestURL, f.manifestPath} {
		if v != "" {
			n++
		}
	}
	return baseimage.Source{Preset: f.preset, ManifestURL: f.manifestURL, ManifestPath: f.manifestPath}, n
}

// baseImages opens the base image cache: $SMARTVM_BASE_IMAGE_DIR (default: the library's) and
// $SMARTVM_CI_BUCKET_URL. Downloads report to prog when it is not nil; the cache's warnings
// (evictions) go to smartvm's log on stderr.
func (a *app) baseImages(prog *progress) (*baseimage.Manager, error) {
	opts := baseimage.Options{
		Dir:        a.getenv(envBaseImageDir),
		BucketURL:  a.getenv(envCIBucketURL),
		HTTPClient: a.client(),
		Logger:     a.log,
		Keychain:   authn.DefaultKeychain, // the docker config file, as docker login writes it
		Kernel:     a.imageKernel,
	}
	if opts.Kernel == "" {
		opts.Kernel = a.getenv(envImageKernel)
	}
	opts.RootfsHeadroomMiB = a.rootfsHeadroom
	if v := a.getenv(envRootfsHeadroom); v != "" && opts.RootfsHeadroomMiB == 0 {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("invalid $%s %q: want a positive number of MiB; fix or unset it", envRootfsHeadroom, v)
		}
		opts.RootfsHeadroomMiB = n
	}
	if err := a.imageLimits(&opts); err != nil {
		return nil, err
	}
	if prog != nil {
		opts.Progress = func(p baseimage.Progress) {
			if p.Phase != "" {
				prog.phase(p.File, p.Phase, p.Elapsed, p.Done == 1)
				return
			}
			prog.update(p.File, p.Done, p.Total)
		}
	}
	if agent, err := a.agentBinary(); err == nil {
		opts.AgentBinary = agent // squashfs conversions include the guest agent
	}
	m, err := baseimage.New(opts)
	if err != nil {
		return nil, fmt.Errorf("base image cache: %w", err)
	}
	return m, nil
}

// imageLimits sets the limits on what an OCI image unpacks to from images pull's --max-size
// and --max-files, else $SMARTVM_IMAGE_MAX_SIZE and $SMARTVM_IMAGE_MAX_FILES; 0 is no limit.
func (a *app) imageLimits(opts *baseimage.Options) error {
	size, sizeFrom := a.imageMaxSize, "--max-size"
	if size == "" {
		size, sizeFrom = a.getenv(envImageMaxSize), "$"+envImageMaxSize
	}
	if size != "" {
		mib, err := parseMiB(size)
		if err != nil || mib < 0 {
			return fmt.Errorf("invalid %s %q: want a size such as 32G (0: no limit)", sizeFrom, size)
		}
		opts.OCIMaxBytes = int64(mib) << 20
		if mib == 0 {
			opts.OCIMaxBytes = -1
		}
	}
	files, filesFrom := a.imageMaxFiles, "--max-files"
	if files == "" {
		files, filesFrom = a.getenv(envImageMaxFiles), "$"+envImageMaxFiles
	}
	if files != "" {
		n, err := strconv.Atoi(files)
		if err != nil || n < 0 {
			return fmt.Errorf("invalid %s %q: want a number of entries (0: no limit)", filesFrom, files)
		}
		opts.OCIMaxFiles = n
		if n == 0 {
			opts.OCIMaxFiles = -1
		}
	}
	return nil
}

func (a *app) newImagesCmd() *cobra.Command {
	return groupCmd("images", "Manage the base image cache (kernels and root filesystems)",
		a.newImagesPullCmd(),
		a.newImagesLsCmd(),
		a.newImagesRmCmd(),
		a.newImagesPruneCmd(),
	)
}

func (a *app) newImagesPullCmd() *cobra.Command {
	var f imageFlags
	var refresh bool
	cmd := &cobra.Command{
		Use:   "pull [IMAGE | --preset latest|lts | --manifest-url U | --manifest-path P] [--refresh]",
		Short: "Download a base image into the cache",
		Long: `Download, verify and cache a base image: a kernel and an ext4 root filesystem.

IMAGE takes the forms of 'run --image', tried in this order: hello (built in: nothing to
pull), the presets latest and lts, a manifest (an existing file, or an http(s) URL ending in
.json), else an OCI image reference such as alpine, alpine:3.20, ghcr.io/o/i@sha256:... or
localhost:5000/img:tag. Without IMAGE or flags it pulls $SMARTVM_BASE_IMAGE_MANIFEST_URL,
$SMARTVM_BASE_IMAGE_MANIFEST_PATH or $SMARTVM_BASE_IMAGE_PRESET when one is set, else preset
latest. Presets come from Firecracker's CI bucket ($SMARTVM_CI_BUCKET_URL replaces it): latest
is the newest kernel and Ubuntu rootfs, lts the newest 6.1 kernel.

An OCI image is pulled for this host's platform with the credentials of the docker config
file (docker login) and the proxy of $HTTPS_PROXY/$NO_PROXY; its layers become an ext4 root
filesystem with smartvm's agent as init, booted with the kernel of preset latest or --kernel
($SMARTVM_IMAGE_KERNEL). An image whose digest is converted already is not pulled again. An
image that unpacks to more than --max-size bytes of files (32G) or whose layers hold more than
--max-files entries (1048576) is refused, and nothing of it is kept.

A cached image is used again without network access; --refresh looks for a newer one.`,
		Args:              maxArgs(1, "one IMAGE"),
		ValidArgsFunction: completeImageArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				src baseimage.Source
				err error
			)
			if cmd.Flags().Changed("rootfs-headroom") && a.rootfsHeadroom <= 0 {
				return usagef("invalid --rootfs-headroom %d: want a positive number of MiB", a.rootfsHeadroom)
			}
			if a.imageKernel != "" {
				if a.imageKernel, err = absPath("--kernel", a.imageKernel); err != nil {
					return err
				}
			}
			switch {
			case len(args) == 1 && args[0] == imageHello:
				fmt.Fprintln(a.stderr, "hello is built into smartvm: there is nothing to pull ('smartvm run --image hello' boots it)")
				return nil
			case len(args) == 1:
				if _, n := imageSourceOf(f); n > 0 {
					return usagef("give IMAGE or one of --preset, --manifest-url and --manifest-path, not both")
				}
				src, err = parseImage("IMAGE", args[0])
			default:
				src, err = a.imageSource(f)
			}
			if err != nil {
				return err
			}
			src.Refresh = refresh
			b, err := a.pull(cmd.Context(), src)
			if err != nil {
				return err
			}
			t := newTable(a.stdout, "ID", "NAME", "SIZE", "SOURCE")
			t.row(b.ID, b.Name, formatBytes(b.Size), imageOrigin(*b))
			return t.flush()
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.preset, "preset", "", "preset from Firecracker's CI bucket: latest or lts")
	fl.StringVar(&f.manifestURL, "manifest-url", "", "URL of a base image manifest")
	fl.StringVar(&f.manifestPath, "manifest-path", "", "path of a base image manifest file")
	fl.BoolVar(&refresh, "refresh", false, "look for a newer image even when one is cached")
	fl.StringVar(&a.imageKernel, "kernel", "", "kernel (vmlinux) for an OCI image (default: $"+envImageKernel+", else preset latest's)")
	fl.StringVar(&a.imageMaxSize, "max-size", "", "the most bytes of files an OCI image may unpack to (512M, 32G...; 0: no limit; default: $"+envImageMaxSize+", else 32G)")
	fl.StringVar(&a.imageMaxFiles, "max-files", "", "the most entries an OCI image's layers may hold (0: no limit; default: $"+envImageMaxFiles+", else "+strconv.Itoa(baseimage.DefaultOCIMaxFiles)+")")
	fl.IntVar(&a.rootfsHeadroom, "rootfs-headroom", 0, "free MiB the converted root filesystem keeps above its content (default: $"+envRootfsHeadroom+", else "+strconv.Itoa(baseimage.DefaultRootfsHeadroomMiB)+")")
	return cmd
}

// imageOrigin is where a cached image came from, for tables: the source, and for an OCI image
// its reference and manifest digest.
func imageOrigin(b baseimage.Bundle) string {
	if b.OCI != nil {
		return b.OCI.Reference + " " + b.OCI.Digest
	}
	return b.Source.String()
}

// pullNotice is how long a pull may take before it says what it is doing: a cached image
// returns sooner and prints nothing.
const pullNotice = 500 * time.Millisecond

// pull pulls src with progress on stderr.
func (a *app) pull(ctx context.Context, src baseimage.Source) (*baseimage.Bundle, error) {
	if src.OCI != "" {
		if _, err := a.agentBinary(); err != nil {
			return nil, fmt.Errorf("an OCI image boots smartvm's agent as its init: %w", err)
		}
	}
	prog := newProgress(a.stderr)
	defer prog.finish()
	m, err := a.baseImages(prog)
	if err != nil {
		return nil, err
	}
	notice := time.AfterFunc(pullNotice, func() {
		prog.noteIfIdle(fmt.Sprintf("Pulling base image %s (later runs use the cache in %s)", src, m.Dir()))
	})
	defer notice.Stop()
	return m.Pull(ctx, src)
}

// imageJSON is one cached image in `images ls --json`.
type imageJSON struct {
	baseimage.Bundle
	InUse bool `json:"in_use"`
	// UsedBy are the names of the VMs that use the image.
	UsedBy []string `json:"used_by"`
}

func (a *app) newImagesLsCmd() *cobra.Command {
	var (
		asJSON bool
		format string
	)
	cmd := &cobra.Command{
		Use:     "ls [--json | --format TEMPLATE]",
		Aliases: []string{"list"},
		Short:   "List cached base images, the most recently used first",
		Long: `List cached base images, the most recently used first: ID, name, size, when a VM last
used it, the VMs that use it now and where it came from (for an OCI image, its reference and
manifest digest).

--json prints an array of objects; --format prints each image with a Go template over the
same object, by its Go field names: {{.ID}}, {{.Name}}, {{.Size}}, {{.Source}},
{{.InUse}}, {{.UsedBy}}; {{json .}} prints the object on one line.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tmpl, err := parseFormat(format)
			if err != nil {
				return err
			}
			if asJSON && tmpl != nil {
				return usagef("use only one of --json and --format")
			}
			_, list, err := a.cachedImages(cmd.Context())
			if err != nil {
				return err
			}
			out := make([]imageJSON, 0, len(list))
			for _, b := range list {
				out = append(out, imageJSON{Bundle: b, InUse: len(b.Holders) > 0, UsedBy: vmNames(b.Holders)})
			}
			switch {
			case asJSON:
				return writeJSON(a.stdout, out)
			case tmpl != nil:
				return writeFormatted(a.stdout, tmpl, out)
			}
			now := a.clock()
			t := newTable(a.stdout, "ID", "NAME", "SIZE", "LAST USED", "USED BY", "SOURCE")
			for _, b := range list {
				usedBy := "-"
				if len(b.Holders) > 0 {
					usedBy = strings.Join(vmNames(b.Holders), ",")
				}
				t.row(b.ID, b.Name, formatBytes(b.Size), ago(now, b.LastUsed), usedBy, imageOrigin(b))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.Flags().StringVar(&format, "format", "", formatHelp)
	return cmd
}

func (a *app) newImagesRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm IMAGE...",
		Short: "Remove cached base images, by name, ID or a unique prefix of an ID",
		Long: `Remove cached base images. IMAGE is an image's name (as 'images ls' shows it), its ID, or
a prefix of its ID that no other image shares; an ambiguous one is refused, with the
candidates. An image a running VM uses is not removed. Each removal prints one line:
"removed ID NAME (SIZE)", as prune does.`,
		Args:              minArgs(1, "at least one image name or ID, from 'smartvm images ls'"),
		ValidArgsFunction: a.completeImageRefs,
		RunE: func(cmd *cobra.Command, refs []string) error {
			ctx := cmd.Context()
			m, list, err := a.cachedImages(ctx)
			if err != nil {
				return err
			}
			var errs []error
			done := map[string]bool{}
			for _, ref := range refs {
				b, err := findImage(list, ref)
				if err == nil && !done[b.ID] {
					err = m.Remove(ctx, b.ID)
				}
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if !done[b.ID] {
					printRemoved(a.stdout, b)
				}
				done[b.ID] = true
			}
			return joinErrors(errs)
		},
	}
}

// cachedImages opens the base image cache and lists its images, the most recently used first.
func (a *app) cachedImages(ctx context.Context) (*baseimage.Manager, []baseimage.Bundle, error) {
	m, err := a.baseImages(nil)
	if err != nil {
		return nil, nil, err
	}
	list, err := m.List(ctx)
	if err != nil {
		return nil, nil, err
	}
	return m, list, nil
}

// printRemoved is the line rm and prune print for each image they removed.
func printRemoved(w io.Writer, b baseimage.Bundle) {
	fmt.Fprintf(w, "removed %s %s (%s)\n", b.ID, b.Name, formatBytes(b.Size))
}

// findImage finds the image ref names in list: by ID, by name, or by a prefix of its ID that
// no other image shares. An ambiguous ref is an error that lists the candidates.
func findImage(list []baseimage.Bundle, ref string) (baseimage.Bundle, error) {
	var byName, byPrefix []baseimage.Bundle
	for _, b := range list {
		switch {
		case b.ID == ref:
			return b, nil
		case b.Name == ref:
			byName = append(byName, b)
		case strings.HasPrefix(b.ID, ref):
			byPrefix = append(byPrefix, b)
		}
	}
	matches := byName
	if len(matches) == 0 {
		matches = byPrefix
	}
	switch len(matches) {
	case 0:
		return baseimage.Bundle{}, fmt.Errorf("no cached base image is called or has an ID starting with %q (see 'smartvm images ls'): %w", ref, baseimage.ErrNotFound)
	case 1:
		return matches[0], nil
	}
	var cands []string
	for _, b := range matches {
		cands = append(cands, b.ID+" ("+b.Name+")")
	}
	return baseimage.Bundle{}, fmt.Errorf("%q is ambiguous: it matches %s; give more of the ID", ref, strings.Join(cands, ", "))
}

// vmNames turns the holders of a bundle into the names of the VMs that use it: smartvm's
// holders are "vm:NAME@INCARNATION"; other holders (a program using the library) are shown as
// they are.
func vmNames(holders []string) []string {
	out := make([]string, 0, len(holders))
	for _, h := range holders {
		if name, ok := strings.CutPrefix(h, "vm:"); ok {
			name, _, _ = strings.Cut(name, "@")
			h = name
		}
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

func (a *app) newImagesPruneCmd() *cobra.Command {
	var keep int
	cmd := &cobra.Command{
		Use:   "prune [--keep N]",
		Short: "Remove the least recently used base images, keeping N",
		Long: `Remove the least recently used base images until at most N remain. Images that a
running VM uses are kept even beyond N.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keep < 0 {
				return usagef("invalid --keep %d: want 0 or more", keep)
			}
			m, err := a.baseImages(nil)
			if err != nil {
				return err
			}
			evicted, err := m.Prune(cmd.Context(), keep)
			for _, b := range evicted {
				printRemoved(a.stdout, b)
			}
			if err != nil {
				return err
			}
			if len(evicted) == 0 {
				fmt.Fprintln(a.stdout, "nothing to remove")
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&keep, "keep", 0, "how many of the most recently used images to keep (0: remove every image no VM uses)")
	return cmd
}

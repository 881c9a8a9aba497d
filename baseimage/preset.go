package baseimage

import (
	"cmp"
	"context"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Bucket key patterns (firecracker-notes §9.2, §9.4).
const ciRoot = "firecracker-ci/"

var buildPrefixRE = lazyRegexp(`^firecracker-ci/[0-9]{8}-[^/]+/$`)

// plan is what a source resolved to, before downloading.
type plan struct {
	name      string
	bootArgs  string
	fc        *VersionRange
	format    string // the rootfs format: ext4 or squashfs
	artifacts []refArtifact
	locs      []location // where each artifact is read from
}

// defaultBootArgs is the kernel command line for presets (firecracker-notes §10): a serial
// console, reboot ends Firecracker, a panic reboots. Firecracker adds pci=off and root= itself.
func defaultBootArgs(arch string) string {
	if arch == ArchAarch64 {
		return "keep_bootcon console=ttyS0 reboot=k panic=1"
	}
	return "console=ttyS0 reboot=k panic=1"
}

// version is a parsed dotted number from a key.
type version []int

func parseDigits(groups []string) version {
	v := make(version, len(groups))
	for i, g := range groups {
		v[i], _ = strconv.Atoi(g) // the regexps allow digits only; huge values saturate harmlessly
	}
	return v
}

// candidate is a key that matched a pattern, with the version it carries.
type candidate struct {
	obj object
	ver version
	tag string // e.g. "6.1.155" or "24.04"
}

// pickHighest returns the object under prefix whose key is prefix+<re match> with the highest
// version, or nil. want filters candidates (nil keeps all).
func pickHighest(objs []object, prefix string, re *regexp.Regexp, want func(version) bool) *candidate {
	var best *candidate
	for _, o := range objs {
		rest, ok := strings.CutPrefix(o.Key, prefix)
		if !ok {
			continue
		}
		mt := re.FindStringSubmatch(rest)
		if mt == nil {
			continue
		}
		c := candidate{obj: o, ver: parseDigits(mt[1:]), tag: strings.Join(mt[1:], ".")}
		if want != nil && !want(c.ver) {
			continue
		}
		if best == nil || cmpCandidates(c, *best) > 0 {
			best = &c
		}
	}
	return best
}

func cmpCandidates(a, b candidate) int {
	if c := slices.Compare(a.ver, b.ver); c != 0 {
		return c
	}
	return cmp.Compare(a.obj.Key, b.obj.Key)
}

var (
	kernelKeyRE = lazyRegexp(`^vmlinux-([0-9]+)\.([0-9]+)\.([0-9]{1,3})$`)
	rootfsKeyRE = lazyRegexp(`^ubuntu-([0-9]+)\.([0-9]+)\.squashfs$`)
)

// pickPreset chooses the kernel and rootfs of one build directory (prefix ends in "<arch>/").
func pickPreset(objs []object, prefix, preset string) (kernel, rootfs *candidate) {
	var want func(version) bool
	if preset == PresetLTS {
		series := parseDigits(strings.Split(ltsSeries, "."))
		want = func(v version) bool { return slices.Equal(v[:2], series) }
	}
	return pickHighest(objs, prefix, kernelKeyRE(), want), pickHighest(objs, prefix, rootfsKeyRE(), nil)
}

// resolvePreset lists the bucket and picks the preset's artifacts.
func (m *Manager) resolvePreset(ctx context.Context, src Source) (*plan, error) {
	kernelWhat := "vmlinux-X.Y.Z"
	if src.Preset == PresetLTS {
		kernelWhat = "vmlinux-" + ltsSeries + ".Z"
	}
	if src.Release != "" {
		prefix := ciRoot + src.Release + "/" + m.arch + "/"
		l, err := m.list(ctx, prefix, true)
		if err != nil {
			return nil, err
		}
		k, r := pickPreset(l.objects, prefix, src.Preset)
		switch {
		case k == nil:
			return nil, fmt.Errorf("resolve %s: no %s under %s/%s: %w", src, kernelWhat, m.bucket, prefix, ErrNotFound)
		case r == nil:
			return nil, fmt.Errorf("resolve %s: no ubuntu-X.Y.squashfs under %s/%s (releases before v1.11 ship ext4 images: use a manifest): %w", src, m.bucket, prefix, ErrNotFound)
		}
		p := m.presetPlan(k, r)
		p.fc = &VersionRange{Min: strings.TrimPrefix(src.Release, "v"), Max: strings.TrimPrefix(src.Release, "v")}
		return p, nil
	}
	l, err := m.list(ctx, ciRoot, true)
	if err != nil {
		return nil, err
	}
	var builds []string
	for _, p := range l.prefixes {
		if buildPrefixRE().MatchString(p) {
			builds = append(builds, p)
		}
	}
	slices.Sort(builds)
	// The newest build that has both artifacts for this architecture: a build still being
	// uploaded, or one without a 6.1 kernel for lts, is passed over.
	for i := len(builds) - 1; i >= 0; i-- {
		prefix := builds[i] + m.arch + "/"
		l, err := m.list(ctx, prefix, true)
		if err != nil {
			return nil, err
		}
		k, r := pickPreset(l.objects, prefix, src.Preset)
		if k != nil && r != nil {
			return m.presetPlan(k, r), nil
		}
		m.log.Debug("passing over a build", "prefix", prefix, "has_kernel", k != nil, "has_rootfs", r != nil)
	}
	return nil, fmt.Errorf("resolve %s: no build under %s/%s has a %s and an ubuntu-X.Y.squashfs for %s: %w",
		src, m.bucket, ciRoot, kernelWhat, m.arch, ErrNotFound)
}

func (m *Manager) presetPlan(k, r *candidate) *plan {
	p := &plan{
		name:     "ubuntu-" + r.tag + "+vmlinux-" + k.tag,
		bootArgs: defaultBootArgs(m.arch),
		format:   formatSquashfs,
	}
	for _, c := range []struct {
		role string
		obj  object
	}{{roleKernel, k.obj}, {roleRootfs, r.obj}} {
		u := m.objectURL(c.obj.Key)
		p.artifacts = append(p.artifacts, refArtifact{Role: c.role, URL: u.String(), Key: c.obj.Key, ETag: c.obj.ETag, Size: c.obj.Size})
		p.locs = append(p.locs, location{url: u})
	}
	return p
}

// objectURL is the path-style URL of a bucket key.
func (m *Manager) objectURL(key string) *url.URL {
	u := *m.bucket
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + key
	u.RawPath = ""
	return &u
}

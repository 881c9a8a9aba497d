package smartvm

import (
	"context"
	"errors"
	"fmt"

	"github.com/smartvm/smartvm/baseimage"
)

// resolvedImage is a base-image bundle a starting VM boots and holds in use.
type resolvedImage struct {
	id, holder               string
	kernel, initrd, bootArgs string
	sshKey                   string // the bundle's SSH private key, or ""
	root                     DriveSpec
}

// baseImageRootID is the drive ID of a base image's root drive.
const baseImageRootID = "rootfs"

// useBaseImage resolves the spec's base image (downloading it if needed), checks it suits the
// Firecracker version, and marks it in use for the VM's life, so the cache never evicts it
// under the VM. Its rootfs becomes the VM's ephemeral root drive.
func (s *starter) useBaseImage(ctx context.Context) error {
	images := s.mgr.images
	if images == nil {
		return errors.New("the spec names a base image, but the manager has no base-image manager: create it with WithBaseImages")
	}
	src := baseimage.Source{
		Preset:       s.spec.BaseImagePreset,
		ManifestURL:  s.spec.BaseImageManifestURL,
		ManifestPath: s.spec.BaseImageManifestPath,
		OCI:          s.spec.BaseImageOCI,
	}
	b, err := images.Pull(ctx, src)
	if err != nil {
		return fmt.Errorf("pull %s: %w", src, err)
	}
	if r := b.Firecracker; r != nil {
		if ok, err := r.Contains(s.version.String()); err == nil && !ok {
			return fmt.Errorf("base image %s is meant for Firecracker %s to %s, and %s is %s: %w",
				b.Name, orOpen(r.Min), orOpen(r.Max), s.bin, s.version, errors.ErrUnsupported)
		}
	}
	holder := "vm:" + s.spec.Name + "@" + s.dir.ID()
	release, err := images.Use(ctx, b.ID, holder)
	if err != nil {
		return fmt.Errorf("mark base image %s in use: %w", b.ID, err)
	}
	s.push(func(context.Context) error { return release() })
	bootArgs := b.BootArgs
	if bootArgs == "" {
		bootArgs = DefaultBootArgs
	}
	s.image = &resolvedImage{
		id:       b.ID,
		holder:   holder,
		kernel:   b.Kernel,
		initrd:   b.Initrd,
		bootArgs: bootArgs,
		sshKey:   b.SSHPrivateKey,
		root:     DriveSpec{ID: baseImageRootID, Path: b.Rootfs, Root: true},
	}
	s.log.Debug("base image", "id", b.ID, "name", b.Name)
	// Record the marker before anything else can fail, so reaping releases it if this
	// process dies before firecracker runs.
	if err := s.dir.WriteState(s.state()); err != nil {
		return err
	}
	return nil
}

// holdSnapshotImage marks base image id, which a snapshot's VM booted, in use again, for the restored
// VM's life, and gives it the image's SSH key: the restored VM is the same guest, with the
// same key for root. The snapshot holds its own copy of the root drive, so a bundle evicted
// since is no error: the VM then runs without the marker and key, and the log says so.
func (s *starter) holdSnapshotImage(ctx context.Context, id string) error {
	images := s.mgr.images
	if images == nil {
		s.log.Warn("the snapshot's vm booted a base image, but the manager has no base-image manager (WithBaseImages): no ssh key for it", "image", id)
		return nil
	}
	b, err := images.Get(ctx, id)
	if errors.Is(err, baseimage.ErrNotFound) {
		s.log.Warn("the snapshot's base image is no longer in the cache: the restored vm runs without its ssh key", "image", id)
		return nil
	}
	if err != nil {
		return err
	}
	holder := "vm:" + s.spec.Name + "@" + s.dir.ID()
	release, err := images.Use(ctx, b.ID, holder)
	if err != nil {
		return fmt.Errorf("mark base image %s in use: %w", b.ID, err)
	}
	s.push(func(context.Context) error { return release() })
	s.image = &resolvedImage{id: b.ID, holder: holder, sshKey: b.SSHPrivateKey}
	// Recorded at once, so reaping releases the marker if this process dies now.
	return s.dir.WriteState(s.state())
}

func orOpen(v string) string {
	if v == "" {
		return "any"
	}
	return v
}

// releaseBaseImage removes the in-use marker a VM that has died left behind.
func releaseBaseImage(ctx context.Context, images *baseimage.Manager, id, holder string) error {
	if err := images.Release(ctx, id, holder); err != nil {
		return fmt.Errorf("release base image %s held by %s: %w", id, holder, err)
	}
	return nil
}

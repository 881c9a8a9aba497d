package cli

import (
	"fmt"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/internal/fcrelease"
)

// releaseSite opens the Firecracker release site, $SMARTVM_FIRECRACKER_RELEASE_URL or
// GitHub's, for this host's architecture. Its downloads take the base image cache's download
// path (retries, resumption, stall watchdog) and report to prog.
func (a *app) releaseSite(prog *progress) (*fcrelease.Site, error) {
	arch, err := baseimage.HostArch()
	if err != nil {
		return nil, fmt.Errorf("no Firecracker release for this host: %w", err)
	}
	files, err := a.baseImages(prog)
	if err != nil {
		return nil, err
	}
	base := a.getenv(envFirecrackerReleases)
	site, err := fcrelease.NewSite(base, arch, a.client(), files)
	if err != nil {
		return nil, fmt.Errorf("$%s=%q is not an http or https URL", envFirecrackerReleases, base)
	}
	return site, nil
}

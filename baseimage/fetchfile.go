package baseimage

import (
	"context"
	"fmt"
	"strings"
)

// Download fetches one file, rawURL (http or https), into dst with the download path Pull
// uses: the manager's HTTP client, retries with backoff, resumption of a dropped transfer
// (Range), the stall watchdog and progress reports (Options.Progress) under name. It writes
// dst+".part" and renames it to dst once the file is complete and, when sha256 (lowercase
// hex) is set, matches it; on error nothing is left at either path. dst must not exist. It
// returns the sha256 of what it received. Errors: ErrChecksum, ErrNotFound (HTTP 404),
// *HTTPError, and ctx's error.
func (m *Manager) Download(ctx context.Context, rawURL, dst, sha256, name string) (string, error) {
	u, err := parseHTTPURL(rawURL)
	if err != nil {
		return "", fmt.Errorf("download: %w", err)
	}
	sha256 = strings.ToLower(sha256)
	if sha256 != "" && !sha256RE().MatchString(sha256) {
		return "", fmt.Errorf("download %s: sha256 %q is not 64 hex digits", rawURL, sha256)
	}
	res, err := m.fetch(ctx, fetchReq{name: name, loc: location{url: u}, size: -1, sha256: sha256}, dst)
	if err != nil {
		return "", err
	}
	return res.sha256, nil
}

package baseimage

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors. Check them with errors.Is.
var (
	// ErrNotFound reports a bundle that is not in the cache, an artifact or manifest the server
	// answers 404 for, or a preset that resolves to nothing in the bucket.
	ErrNotFound = errors.New("not found")
	// ErrInUse reports a bundle that cannot be removed because a holder uses it (see Manager.Use).
	ErrInUse = errors.New("base image in use")
	// ErrChecksum reports downloaded bytes that do not match the expected sha256 or size,
	// a truncated body included.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrInvalidManifest reports a manifest that does not follow the schema. The error is a
	// *ManifestError that names the field.
	ErrInvalidManifest = errors.New("invalid manifest")
	// ErrMissingTool reports a host tool the rootfs conversion needs that is not installed. The
	// error names the Debian package that provides it.
	ErrMissingTool = errors.New("missing tool")
)

// ManifestError reports a manifest that breaks the schema. Field is the dotted path of the bad
// field, for example "kernel.sha256", or "" when the document as a whole is malformed.
// errors.Is(err, ErrInvalidManifest) holds for it.
type ManifestError struct {
	Field string
	Err   error
}

func (e *ManifestError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("invalid manifest: %v", e.Err)
	}
	return fmt.Sprintf("invalid manifest: field %q: %v", e.Field, e.Err)
}

// Unwrap returns the underlying problem.
func (e *ManifestError) Unwrap() error { return e.Err }

// Is reports whether target is ErrInvalidManifest.
func (e *ManifestError) Is(target error) bool { return target == ErrInvalidManifest }

// HTTPError reports a server that answered a request with an unexpected status.
// errors.Is(err, ErrNotFound) holds when StatusCode is 404.
type HTTPError struct {
	URL        string
	StatusCode int
	// Message is the server's explanation when it sent one (an S3 error Code and Message).
	Message string
}

func (e *HTTPError) Error() string {
	msg := fmt.Sprintf("GET %s: HTTP %d %s", e.URL, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// Is reports whether target is ErrNotFound and the status is 404.
func (e *HTTPError) Is(target error) bool {
	return target == ErrNotFound && e.StatusCode == http.StatusNotFound
}

// retryable reports whether a later attempt of the same request may succeed.
func (e *HTTPError) retryable() bool {
	return e.StatusCode >= 500 || e.StatusCode == http.StatusTooManyRequests ||
		e.StatusCode == http.StatusRequestTimeout
}

// missingTool is the error for a host tool that is not installed.
func missingTool(tool, pkg string) error {
	return fmt.Errorf("%w: %s is not installed (install the Debian package %s)", ErrMissingTool, tool, pkg)
}

package fcapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Sentinel errors. Check them with errors.Is.
var (
	// ErrNotAllowedAfterBoot matches an *APIError for a pre-boot-only call (boot-source,
	// machine-config, logger, InstanceStart, ...) made after the microVM started or was restored.
	ErrNotAllowedAfterBoot = errors.New("operation not allowed after the microVM started")
	// ErrNotAllowedBeforeBoot matches an *APIError for a post-boot-only call (pause, resume,
	// snapshot create, balloon statistics, ...) made before the microVM started.
	ErrNotAllowedBeforeBoot = errors.New("operation not allowed before the microVM started")
	// ErrProcessExited is returned (wrapped) by WaitReady when the Firecracker process exits
	// before its API answers.
	ErrProcessExited = errors.New("firecracker process exited")
	// ErrPayloadTooLarge is returned (wrapped), before anything is sent, for a request body
	// over the limit set with WithMaxPayload.
	ErrPayloadTooLarge = errors.New("request body too large for the Firecracker API")
)

// Firecracker's messages for the refusals above (src/vmm/src/rpc_interface.rs).
const (
	msgNotAllowedAfterBoot  = "The requested operation is not supported after starting the microVM."
	msgNotAllowedBeforeBoot = "The requested operation is not supported before starting the microVM."
)

// maxErrorBody caps how much of an error response is read.
const maxErrorBody = 64 << 10

// APIError is a request that Firecracker answered with a status other than 200 or 204.
type APIError struct {
	Method, Path string
	StatusCode   int
	// FaultMessage is Firecracker's explanation: the "fault_message" of its API layer, the
	// "error" of its HTTP layer, or else the start of the raw body.
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("firecracker %s %s: status %d: %s", e.Method, e.Path, e.StatusCode, msg)
}

// Is reports whether the error is Firecracker's refusal of a call in the wrong phase, so that
// errors.Is(err, ErrNotAllowedAfterBoot) and errors.Is(err, ErrNotAllowedBeforeBoot) work.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotAllowedAfterBoot:
		return strings.Contains(e.FaultMessage, msgNotAllowedAfterBoot)
	case ErrNotAllowedBeforeBoot:
		return strings.Contains(e.FaultMessage, msgNotAllowedBeforeBoot)
	}
	return false
}

// parseErrorBody extracts Firecracker's explanation from an error body: {"fault_message": ...}
// from the API layer, {"error": ...} from micro-http (whose messages hold raw newlines, which
// strict JSON forbids), or the raw text. apiLayer reports a {"fault_message": ...} body. Any
// other error comes from micro-http, which answers before it has read the whole request: the
// rest of the request's bytes are then parsed as new requests, so the connection must not be
// used again.
func parseErrorBody(body []byte) (msg string, apiLayer bool) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return "", false
	}
	var shape struct {
		FaultMessage string `json:"fault_message"`
		Error        string `json:"error"`
	}
	err := json.Unmarshal(body, &shape)
	if err != nil {
		err = json.Unmarshal(escapeControl(body), &shape)
	}
	if err == nil {
		if shape.FaultMessage != "" {
			return shape.FaultMessage, true
		}
		if shape.Error != "" {
			return shape.Error, false
		}
	}
	return strings.ToValidUTF8(string(body), string(utf8.RuneError)), false
}

// escapeControl escapes the raw control characters in b, as micro-http leaves them inside its
// error strings.
func escapeControl(b []byte) []byte {
	r := strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", `\t`)
	return []byte(r.Replace(string(b)))
}

// UnsupportedError is a request refused before it was sent because it uses an endpoint, field
// or value that the running Firecracker does not have. It matches errors.ErrUnsupported.
type UnsupportedError struct {
	// Feature names what is missing, such as `PUT /serial` or
	// `PUT /network-interfaces/{iface_id} field "mtu"`.
	Feature string
	// Since is the first release that has it; Running is the release that answered GET /version.
	Since, Running Version
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("firecracker v%s does not support %s: it needs v%s or newer", e.Running, e.Feature, e.Since)
}

// Is makes errors.Is(err, errors.ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == errors.ErrUnsupported }

package fcapi

import (
	"context"
	"encoding/json"
	"net/http"
)

// InstanceState is the state GET / reports.
type InstanceState string

// The states of a Firecracker instance.
const (
	StateNotStarted InstanceState = "Not started"
	StateRunning    InstanceState = "Running"
	StatePaused     InstanceState = "Paused"
)

// InstanceInfo is the answer to GET /.
type InstanceInfo struct {
	ID         string        `json:"id"`
	State      InstanceState `json:"state"`
	VMMVersion string        `json:"vmm_version"`
	AppName    string        `json:"app_name"`
}

// GetInstanceInfo asks GET /: the instance ID, its state and the Firecracker version.
func (c *Client) GetInstanceInfo(ctx context.Context) (InstanceInfo, error) {
	return get[InstanceInfo](ctx, c, "/")
}

// action is the body of PUT /actions.
type action struct {
	ActionType string `json:"action_type"`
}

func (c *Client) action(ctx context.Context, typ string) error {
	return c.call(ctx, request{method: http.MethodPut, path: "/actions", in: action{ActionType: typ}})
}

// StartInstance boots the configured microVM (PUT /actions InstanceStart). It returns once the
// vCPUs run; the guest is still booting then. Pre-boot only, and it succeeds once.
func (c *Client) StartInstance(ctx context.Context) error { return c.action(ctx, "InstanceStart") }

// SendCtrlAltDel injects Ctrl+Alt+Del into the guest (x86_64 only). A guest that reboots on it
// (reboot=k) ends the Firecracker process with exit code 0; the call does not wait for that.
func (c *Client) SendCtrlAltDel(ctx context.Context) error { return c.action(ctx, "SendCtrlAltDel") }

// FlushMetrics writes one metrics line now. Post-boot only.
func (c *Client) FlushMetrics(ctx context.Context) error { return c.action(ctx, "FlushMetrics") }

// vmState is the body of PATCH /vm.
type vmState struct {
	State string `json:"state"`
}

// PauseVM pauses the vCPUs (PATCH /vm Paused). Idempotent; post-boot only.
func (c *Client) PauseVM(ctx context.Context) error {
	return c.call(ctx, request{method: http.MethodPatch, path: "/vm", in: vmState{State: "Paused"}})
}

// ResumeVM resumes paused vCPUs (PATCH /vm Resumed). Idempotent; post-boot only.
func (c *Client) ResumeVM(ctx context.Context) error {
	return c.call(ctx, request{method: http.MethodPatch, path: "/vm", in: vmState{State: "Resumed"}})
}

// VMConfig is the whole configuration of a microVM: the answer to GET /vm/config and the body
// of a --config-file. Its keys are kebab-case; the fields inside are the API's. A nil section
// is absent; Drives is always written, as an empty array when there are none, because
// Firecracker requires it in a config file.
type VMConfig struct {
	Balloon           *Balloon             `json:"balloon,omitempty"`
	Drives            []Drive              `json:"drives"`
	BootSource        *BootSource          `json:"boot-source,omitempty"`
	CPUConfig         *CPUConfig           `json:"cpu-config,omitempty"`
	Logger            *Logger              `json:"logger,omitempty"`
	MachineConfig     *MachineConfig       `json:"machine-config,omitempty"`
	Metrics           *Metrics             `json:"metrics,omitempty"`
	MemoryHotplug     *MemoryHotplugConfig `json:"memory-hotplug,omitempty"`
	MMDSConfig        *MMDSConfig          `json:"mmds-config,omitempty"`
	NetworkInterfaces []NetworkInterface   `json:"network-interfaces,omitempty"`
	Pmem              []Pmem               `json:"pmem,omitempty"`
	Vsock             *Vsock               `json:"vsock,omitempty"`
	Entropy           *EntropyDevice       `json:"entropy,omitempty"`
}

// MarshalJSON writes Drives as [] when it is nil.
func (v VMConfig) MarshalJSON() ([]byte, error) {
	type plain VMConfig
	if v.Drives == nil {
		v.Drives = []Drive{}
	}
	return json.Marshal(plain(v))
}

// GetVMConfig asks GET /vm/config. After a snapshot restore its boot source is empty.
func (c *Client) GetVMConfig(ctx context.Context) (VMConfig, error) {
	return get[VMConfig](ctx, c, "/vm/config")
}

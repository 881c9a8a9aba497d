package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/fcapi"
)

// inspectJSON is what `inspect` prints: the library's description of the VM (spec, state,
// pid, paths, guest address and network, Firecracker binary and version, labels) and
// Firecracker's live configuration.
type inspectJSON struct {
	smartvm.MachineInfo
	Labels   map[string]string `json:"labels,omitempty"`
	VMConfig fcapi.VMConfig    `json:"vm_config,omitzero"` // absent for an exited VM
	// Agent is whether the guest agent answers; absent for a VM without a vsock device.
	Agent *agentStatus `json:"agent,omitempty"`
}

// Label returns the value of the VM's label k, "" when it has none; for --format
// '{{.Label "k"}}'.
func (i inspectJSON) Label(k string) string { return i.Labels[k] }

func (a *app) newInspectCmd() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "inspect NAME... [--format TEMPLATE]",
		Short: "Print VMs' descriptions and live configuration as JSON",
		Long: `Print a running VM as JSON: its spec, state, pid, paths, network and guest address,
Firecracker binary and version, labels, as vm_config, the configuration Firecracker reports
(GET /vm/config), and, for a VM with a vsock device, as agent, whether its guest agent answers. With several names it prints a JSON array, in the order given;
names that match no VM are reported on stderr, and the exit code is 1.

An exited VM (ps -a) is printed with state "Exited", its spec and labels, and as exit how it
ended: exit_code (-1 for a signal or when unknown), signal, reason, ended_at and, when
firecracker failed, log_tail.

--format prints each VM with a Go template over the same object, by its Go field names:
{{.Name}}, {{.PID}}, {{.GuestIP}}, {{.Labels}}, {{.Label "KEY"}}, {{.Spec.VCPUs}},
{{.VMConfig.MachineConfig.MemSizeMiB}}; {{json .}} prints the object on one line.`,
		Args:              minArgs(1, "at least one VM name"),
		ValidArgsFunction: a.completeVMNames,
		RunE: func(cmd *cobra.Command, names []string) error {
			tmpl, err := parseFormat(format)
			if err != nil {
				return err
			}
			mgr, err := a.manager(nil)
			if err != nil {
				return err
			}
			defer mgr.Close()
			var (
				out  []inspectJSON
				errs []error
			)
			for i, name := range names {
				if slices.Contains(names[:i], name) {
					continue
				}
				v, err := inspectVM(cmd.Context(), mgr, name)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				out = append(out, v)
			}
			switch {
			case tmpl != nil:
				err = writeFormatted(a.stdout, tmpl, out)
			case len(names) == 1 && len(out) == 1:
				err = writeJSON(a.stdout, out[0])
			case len(names) > 1:
				if out == nil {
					out = []inspectJSON{}
				}
				err = writeJSON(a.stdout, out)
			}
			if err != nil {
				errs = append(errs, err)
			}
			return joinErrors(errs)
		},
	}
	cmd.Flags().StringVar(&format, "format", "", formatHelp)
	return cmd
}

// inspectVM attaches the running VM called name, describes it and lets go of it.
func inspectVM(ctx context.Context, mgr *smartvm.Manager, name string) (inspectJSON, error) {
	m, err := mgr.Attach(ctx, name)
	if errors.Is(err, smartvm.ErrExited) {
		info, err := mgr.Info(ctx, name)
		if err != nil {
			return inspectJSON{}, attachError(name, err)
		}
		return inspectJSON{MachineInfo: info, Labels: info.Spec.Labels}, nil
	}
	if err != nil {
		return inspectJSON{}, attachError(name, err)
	}
	v, err := func() (inspectJSON, error) {
		if _, err := m.State(ctx); err != nil {
			return inspectJSON{}, err
		}
		cfg, err := m.Client().GetVMConfig(ctx)
		if err != nil {
			return inspectJSON{}, fmt.Errorf("vm %s: %w", m.Name(), err)
		}
		info := m.Info()
		return inspectJSON{MachineInfo: info, Labels: info.Spec.Labels, VMConfig: cfg, Agent: agentStatusOf(ctx, m)}, nil
	}()
	return v, errors.Join(err, m.Release())
}

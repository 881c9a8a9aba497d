package cli

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

// psJSON is one VM in `ps --json`: the library's description plus the image label and uptime.
type psJSON struct {
	smartvm.MachineInfo
	VCPUs         int    `json:"vcpus"`
	MemoryMiB     int    `json:"memory_mib"`
	Image         string `json:"image"`
	UptimeSeconds int64  `json:"uptime_seconds"`
}

func (a *app) newPsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ps [--json]",
		Aliases: []string{"ls"},
		Short:   "List running VMs",
		Long: `List running VMs: name, state, vCPUs, memory, the guest's IP address (for VMs started
with --net), image, uptime and pid. VMs whose process is gone are cleaned up first and never
listed.

--json prints an array of objects with, among others, name, state (Running or Paused), pid,
api_socket, runtime_dir, console_path, vcpus, memory_mib, image, guest_ip (when networked)
and spec.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mgr, err := a.manager(nil)
			if err != nil {
				return err
			}
			defer mgr.Close()
			infos, err := mgr.List(cmd.Context())
			if err != nil {
				return err
			}
			now := a.clock()
			if asJSON {
				out := make([]psJSON, 0, len(infos))
				for _, info := range infos {
					out = append(out, psJSON{
						MachineInfo:   info,
						VCPUs:         info.Spec.VCPUs,
						MemoryMiB:     info.Spec.MemoryMiB,
						Image:         imageLabel(info.Spec),
						UptimeSeconds: int64(info.Uptime(now).Seconds()),
					})
				}
				return writeJSON(a.stdout, out)
			}
			t := newTable(a.stdout, "NAME", "STATE", "VCPUS", "MEMORY", "IP", "IMAGE", "UPTIME", "PID")
			for _, info := range infos {
				ip := info.GuestIP
				if ip == "" {
					ip = "-"
				}
				t.row(info.Name, stateLabel(info), strconv.Itoa(info.Spec.VCPUs),
					fmt.Sprintf("%d MiB", info.Spec.MemoryMiB), ip, imageLabel(info.Spec),
					humanDuration(info.Uptime(now)), strconv.Itoa(info.PID))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

// stateLabel is a VM's state for ps's table: a VM a killed snapshot left paused, and one whose
// state.json is corrupt, say so.
func stateLabel(info smartvm.MachineInfo) string {
	switch info.Note {
	case smartvm.NotePausedBySnapshot:
		return string(info.State) + " (by an interrupted snapshot: resume it)"
	case smartvm.NoteCorruptState:
		return "unknown (corrupt state.json: rm -f it)"
	}
	return string(info.State)
}

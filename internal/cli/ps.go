package cli

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

// psJSON is one VM in `ps --json` and the data of `ps --format`: the library's description
// plus the image label, uptime and labels.
type psJSON struct {
	smartvm.MachineInfo
	VCPUs         int               `json:"vcpus"`
	MemoryMiB     int               `json:"memory_mib"`
	Image         string            `json:"image"`
	UptimeSeconds int64             `json:"uptime_seconds"`
	Labels        map[string]string `json:"labels,omitempty"`
	// Agent is whether the guest agent answers; absent for a VM without a vsock device.
	Agent *agentStatus `json:"agent,omitempty"`
}

// Label returns the value of the VM's label k, "" when it has none; for --format
// '{{.Label "k"}}'.
func (p psJSON) Label(k string) string { return p.Labels[k] }

// psFilter is the --filter flags of ps: a VM is listed when it matches every key given, and
// for a key given more than once, any of its values.
type psFilter struct {
	names, states, labels []string
}

// parsePsFilter reads --filter KEY=VALUE flags (commas separate several in one flag).
func parsePsFilter(flags []string) (psFilter, error) {
	var f psFilter
	for _, fl := range flags {
		k, v, ok := strings.Cut(fl, "=")
		if !ok || v == "" {
			return f, usagef("invalid --filter %q: want KEY=VALUE with KEY name, state or label", fl)
		}
		switch strings.ToLower(k) {
		case "name":
			f.names = append(f.names, v)
		case "state", "status":
			f.states = append(f.states, strings.ToLower(v))
		case "label":
			f.labels = append(f.labels, v)
		default:
			return f, usagef("invalid --filter %q: unknown key %q; want name, state or label", fl, k)
		}
	}
	return f, nil
}

// match reports whether the VM passes the filter: name=TEXT matches names that contain
// TEXT, state=S the state S (any case), label=K a VM that has label K and label=K=V one
// whose label K is V.
func (f psFilter) match(info smartvm.MachineInfo) bool {
	anyOf := func(vals []string, ok func(string) bool) bool {
		return len(vals) == 0 || slices.ContainsFunc(vals, ok)
	}
	return anyOf(f.names, func(v string) bool { return strings.Contains(info.Name, v) }) &&
		anyOf(f.states, func(v string) bool { return strings.EqualFold(string(info.State), v) }) &&
		anyOf(f.labels, func(v string) bool {
			k, want, hasValue := strings.Cut(v, "=")
			got, has := info.Spec.Labels[k]
			return has && (!hasValue || got == want)
		})
}

func (a *app) newPsCmd() *cobra.Command {
	var (
		asJSON, quiet, all bool
		filters            []string
		format             string
	)
	cmd := &cobra.Command{
		Use:     "ps [-a] [-q] [--filter KEY=VALUE] [--format TEMPLATE | --json]",
		Aliases: []string{"ls"},
		Short:   "List running VMs (-a: exited ones too)",
		Long: `List running VMs: name, state, vCPUs, memory, the guest's IP address (for VMs started
with --net), image, whether the guest agent answers (AGENT: up, down, or - without a vsock
device), uptime and pid. VMs whose process is gone are cleaned up first: those kept as
exited (run -d without --rm) are then listed by -a, with how they ended, as
"exited (CODE or SIGNAL) TIME ago"; the others are gone.

-a lists exited VMs too. -q prints only the names, one per line, so that
'smartvm rm $(smartvm ps -aq -f state=exited)' removes every exited VM.

--filter KEY=VALUE lists only the VMs that match (repeat it, or separate several with commas;
VMs must match every key, and any value of a key given more than once):
  name=TEXT     names that contain TEXT
  state=STATE   running, paused, unknown or exited (with -a)
  label=KEY     VMs labelled KEY (run --label), label=KEY=VALUE those with that value

--json prints an array of objects with, among others, name, state (Running, Paused or Exited,
with exit: exit_code, signal, reason and ended_at), pid,
api_socket, runtime_dir, console_path, vcpus, memory_mib, image, guest_ip (when networked),
labels and spec. --format prints each VM with a Go template over the same object, by its Go
field names: {{.Name}}, {{.State}}, {{.PID}}, {{.Image}}, {{.GuestIP}}, {{.Labels}},
{{.Label "KEY"}}, {{.Spec.MemoryMiB}}; {{json .}} prints the JSON object on one line.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := parsePsFilter(filters)
			if err != nil {
				return err
			}
			tmpl, err := parseFormat(format)
			if err != nil {
				return err
			}
			if n := btoi(quiet) + btoi(asJSON) + btoi(tmpl != nil); n > 1 {
				return usagef("use only one of -q, --json and --format")
			}
			mgr, err := a.manager(nil)
			if err != nil {
				return err
			}
			defer mgr.Close()
			infos, err := mgr.List(cmd.Context())
			if err != nil {
				return err
			}
			infos = slices.DeleteFunc(infos, func(info smartvm.MachineInfo) bool {
				return !filter.match(info) || (!all && info.State == smartvm.StateExited)
			})
			if quiet {
				for _, info := range infos {
					fmt.Fprintln(a.stdout, info.Name)
				}
				return nil
			}
			now := a.clock()
			names := a.imageNames(cmd.Context())
			agents := agentStatuses(cmd.Context(), mgr, infos)
			out := make([]psJSON, 0, len(infos))
			for i, info := range infos {
				out = append(out, psJSON{
					MachineInfo:   info,
					VCPUs:         info.Spec.VCPUs,
					MemoryMiB:     info.Spec.MemoryMiB,
					Image:         imageLabel(info, names),
					UptimeSeconds: int64(info.Uptime(now).Seconds()),
					Labels:        info.Spec.Labels,
					Agent:         agents[i],
				})
			}
			switch {
			case asJSON:
				return writeJSON(a.stdout, out)
			case tmpl != nil:
				return writeFormatted(a.stdout, tmpl, out)
			}
			t := newTable(a.stdout, "NAME", "STATE", "VCPUS", "MEMORY", "IP", "IMAGE", "AGENT", "UPTIME", "PID")
			for i, info := range infos {
				ip := info.GuestIP
				if ip == "" {
					ip = "-"
				}
				state, uptime, pid := stateLabel(info), humanDuration(info.Uptime(now)), strconv.Itoa(info.PID)
				if e := info.Exit; e != nil {
					state, uptime, pid = exitLabel(e, now), "-", "-"
				}
				t.row(info.Name, state, strconv.Itoa(info.Spec.VCPUs),
					fmt.Sprintf("%d MiB", info.Spec.MemoryMiB), ip, imageLabel(info, names), agents[i].label(),
					uptime, pid)
			}
			return t.flush()
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&asJSON, "json", false, "print a JSON array")
	fl.BoolVarP(&quiet, "quiet", "q", false, "print only the VMs' names")
	fl.BoolVarP(&all, "all", "a", false, "list exited VMs too")
	fl.StringSliceVarP(&filters, "filter", "f", nil, "list only the VMs that match `KEY=VALUE`: name=TEXT, state=STATE, label=KEY[=VALUE] (repeatable)")
	fl.StringVar(&format, "format", "", formatHelp)
	_ = cmd.RegisterFlagCompletionFunc("filter", a.completePsFilter)
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

// exitLabel is an exited VM's state for ps's table, as in "exited (0) 5m ago",
// "exited (SIGKILL) 2h ago" or "exited (owner died) 1m ago".
func exitLabel(e *smartvm.ExitInfo, now time.Time) string {
	how := "unknown"
	switch {
	case e.MainExitCode != nil: // the main process's, as docker shows
		how = strconv.Itoa(*e.MainExitCode)
	case e.Signal != "":
		how = e.Signal
	case e.Code >= 0:
		how = strconv.Itoa(e.Code)
	case strings.HasPrefix(e.Reason, "owner died"):
		how = "owner died"
	}
	return fmt.Sprintf("exited (%s) %s ago", how, humanDuration(now.Sub(e.EndedAt)))
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

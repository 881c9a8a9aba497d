package fakefc

import (
	"fmt"
	"strings"
)

// Firecracker's command line (src/firecracker/src/main.rs): "--name value" pairs and flags.

type argSpec struct {
	name  string
	value bool // takes a value
	def   string
	help  string
	since int // first minor release with the argument
}

var argSpecs = []argSpec{
	{name: "api-sock", value: true, def: "/run/firecracker.socket", help: "Path to unix domain socket used by the API."},
	{name: "boot-timer", help: "Whether or not to load boot timer device for logging elapsed time since InstanceStart command."},
	{name: "config-file", value: true, help: "Path to a file that contains the microVM configuration in JSON format."},
	{name: "describe-snapshot", value: true, help: "Print the data format version of the provided snapshot state file."},
	{name: "enable-pci", help: "Enables PCIe support.", since: 13},
	{name: "help", help: "Show the help message."},
	{name: "http-api-max-payload-size", value: true, def: "51200", help: "Http API request payload max size, in bytes."},
	{name: "id", value: true, def: "anonymous-instance", help: "MicroVM unique identifier."},
	{name: "level", value: true, help: "Set the logger level."},
	{name: "log-path", value: true, help: "Path to a fifo or a file used for configuring the logger on startup."},
	{name: "metadata", value: true, help: "Path to a file that contains metadata in JSON format to add to the mmds."},
	{name: "metrics-path", value: true, help: "Path to a fifo or a file used for configuring the metrics on startup."},
	{name: "mmds-size-limit", value: true, help: "Mmds data store limit, in bytes."},
	{name: "module", value: true, help: "Set the logger module filter."},
	{name: "no-api", help: "Optional parameter which allows starting and using a microVM without an active API socket."},
	{name: "no-seccomp", help: "Optional parameter which allows starting and using a microVM without seccomp filtering. Not recommended."},
	{name: "parent-cpu-time-us", value: true, help: "Parent process CPU time (wall clock, microseconds). This parameter is optional."},
	{name: "seccomp-filter", value: true, help: "Optional parameter which allows specifying the path to a custom seccomp filter. For advanced users."},
	{name: "show-level", help: "Whether or not to output the level in the logs."},
	{name: "show-log-origin", help: "Whether or not to include the file path and line number of the log's origin."},
	{name: "snapshot-version", help: "Print the supported data format version."},
	{name: "start-time-cpu-us", value: true, help: "Process start CPU time (wall clock, microseconds). This parameter is optional."},
	{name: "start-time-us", value: true, help: "Process start time (wall clock, microseconds). This parameter is optional."},
	{name: "version", help: "Print the binary version number."},
}

// argError is an argument parsing error: its message and Firecracker's Debug form.
type argError struct {
	msg   string
	debug string
}

func (e *argError) Error() string { return e.msg }

// args holds the parsed command line: values for value arguments, "" for flags.
type args map[string]string

func (a args) has(name string) bool { _, ok := a[name]; return ok }

// get returns an argument's value or its default.
func (a args) get(name string) string {
	if v, ok := a[name]; ok {
		return v
	}
	for _, s := range argSpecs {
		if s.name == name {
			return s.def
		}
	}
	return ""
}

func specFor(rel *release, name string) *argSpec {
	for i := range argSpecs {
		if argSpecs[i].name == name && rel.atLeast(argSpecs[i].since) {
			return &argSpecs[i]
		}
	}
	return nil
}

// parseArgs parses the command line as Firecracker's arg parser does.
func parseArgs(rel *release, argv []string) (args, *argError) {
	out := args{}
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		name, ok := strings.CutPrefix(a, "--")
		spec := specFor(rel, name)
		if !ok || spec == nil {
			if !ok {
				name = a
			}
			return nil, &argError{fmt.Sprintf("Found argument '%s' which wasn't expected, or isn't valid in this context.", name),
				fmt.Sprintf("UnexpectedArgument(%s)", rustDebugString(name))}
		}
		if out.has(name) {
			return nil, &argError{fmt.Sprintf("The argument '%s' was provided more than once.", name),
				fmt.Sprintf("DuplicateArgument(%s)", rustDebugString(name))}
		}
		if !spec.value {
			out[name] = ""
			continue
		}
		if i+1 >= len(argv) || strings.HasPrefix(argv[i+1], "--") {
			return nil, &argError{fmt.Sprintf("The argument '%s' requires a value, but none was supplied.", name),
				fmt.Sprintf("MissingValue(%s)", rustDebugString(name))}
		}
		i++
		out[name] = argv[i]
	}
	if out.has("no-api") && !out.has("config-file") {
		return nil, &argError{"Argument 'config-file' required, but not found.", `MissingArgument("config-file")`}
	}
	if out.has("seccomp-filter") && out.has("no-seccomp") {
		return nil, &argError{"Argument 'seccomp-filter' cannot be used together with argument 'no-seccomp'.",
			`ForbiddenArgument("no-seccomp", "seccomp-filter")`}
	}
	return out, nil
}

// helpText is what --help prints.
func helpText(rel *release) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Firecracker v%s\n\noptional arguments:\n", rel.version)
	width := 0
	for _, s := range argSpecs {
		width = max(width, len(argLeft(s)))
	}
	for _, s := range argSpecs {
		if !rel.atLeast(s.since) {
			continue
		}
		help := s.help
		if s.def != "" {
			help += fmt.Sprintf(" [default: %q]", s.def)
		}
		fmt.Fprintf(&b, "  %-*s   %s\n", width, argLeft(s), help)
	}
	return b.String()
}

func argLeft(s argSpec) string {
	if s.value {
		return "--" + s.name + " <" + s.name + ">"
	}
	return "--" + s.name
}

// checkInstanceID applies Firecracker's rule for --id: 1 to 64 characters, alphanumeric or
// '-'. The result is the Debug form of the error, or "".
func checkInstanceID(id string) string {
	n := len([]rune(id))
	if n < 1 || n > 64 {
		return fmt.Sprintf("InvalidLen(%d, 1, 64)", n)
	}
	for i, r := range []rune(id) {
		if !(r == '-' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return fmt.Sprintf("InvalidChar('%c', %d)", r, i)
		}
	}
	return ""
}

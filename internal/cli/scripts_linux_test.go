package cli

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// ps and inspect serve scripts: names only, filters, templates, labels and JSON arrays.
func TestPsAndInspectForScripts(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	halt := bootArgs(testguest.ModeHalt)
	env.run(t, "run", "-d", "--rm", "--name", "web-1", "--label", "tier=web", "--label", "team=a", "--image", "hello", "--boot-args", halt).ok(t)
	env.run(t, "run", "-d", "--rm", "--name", "web-2", "-l", "tier=web", "-l", "canary", "--image", "hello", "--boot-args", halt).ok(t)
	env.run(t, "run", "-d", "--rm", "--name", "db", "--label", "tier=db", "--image", "hello", "--boot-args", halt).ok(t)
	defer env.run(t, "kill", "web-1", "web-2", "db")
	env.run(t, "pause", "web-2").ok(t)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ps", "-q"}, "db\nweb-1\nweb-2\n"},
		{[]string{"ps", "-q", "--filter", "name=web"}, "web-1\nweb-2\n"},
		{[]string{"ps", "-q", "--filter", "label=tier=web"}, "web-1\nweb-2\n"},
		{[]string{"ps", "-q", "--filter", "label=canary"}, "web-2\n"},
		{[]string{"ps", "-q", "--filter", "state=running"}, "db\nweb-1\n"},
		{[]string{"ps", "-q", "--filter", "label=tier=web,state=Paused"}, "web-2\n"},
		{[]string{"ps", "-q", "--filter", "name=web", "--filter", "name=db", "--filter", "state=running"}, "db\nweb-1\n"},
		{[]string{"ps", "-q", "--filter", "label=tier=cache"}, ""},
		{[]string{"ps", "--format", "{{.Name}} {{.State}} {{.Label \"tier\"}} {{.Image}}"}, "db Running db hello\nweb-1 Running web hello\nweb-2 Paused web hello\n"},
		{[]string{"ps", "--format", "{{.Name}}:{{index .Labels \"team\"}}", "-f", "name=web-1"}, "web-1:a\n"},
		{[]string{"inspect", "--format", "{{.Name}} {{.Spec.Labels}} {{.VMConfig.MachineConfig.MemSizeMiB}}", "web-1", "db"}, "web-1 map[team:a tier:web] 512\ndb map[tier:db] 512\n"},
	} {
		if r := env.run(t, tc.args...).ok(t); r.stdout != tc.want {
			t.Errorf("%s printed %q, want %q", strings.Join(tc.args, " "), r.stdout, tc.want)
		}
	}

	r := env.run(t, "ps", "--format", "{{json .}}", "--filter", "name=db").ok(t)
	var one psEntry
	if err := json.Unmarshal([]byte(r.stdout), &one); err != nil || one.Name != "db" || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("ps --format '{{json .}}' printed %q (%v)", r.stdout, err)
	}

	// inspect with several names prints an array in their order; one name an object.
	r = env.run(t, "inspect", "web-2", "db").ok(t)
	var arr []struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
		Spec   struct {
			Labels map[string]string `json:"labels"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &arr); err != nil {
		t.Fatalf("inspect web-2 db: %v\n%s", err, r.stdout)
	}
	if len(arr) != 2 || arr[0].Name != "web-2" || arr[1].Name != "db" ||
		arr[0].Labels["canary"] != "" || arr[0].Spec.Labels["tier"] != "web" || arr[1].Labels["tier"] != "db" {
		t.Errorf("inspect web-2 db: %+v", arr)
	}
	if _, ok := arr[0].Labels["canary"]; !ok {
		t.Errorf("inspect lost the empty label canary: %+v", arr[0].Labels)
	}
	r = env.run(t, "inspect", "db", "nope", "web-1")
	r.fails(t, ExitError, `no running vm is called "nope"`)
	if err := json.Unmarshal([]byte(r.stdout), &arr); err != nil || len(arr) != 2 {
		t.Errorf("inspect with a missing name printed %q (%v), want the two others", r.stdout, err)
	}

	env.run(t, "ps", "--filter", "color=red").fails(t, ExitUsage, `unknown key "color"`)
	env.run(t, "ps", "--filter", "name").fails(t, ExitUsage, "want KEY=VALUE")
	env.run(t, "ps", "-q", "--json").fails(t, ExitUsage, "use only one of -q, --json and --format")
	env.run(t, "ps", "--format", "{{.Name").fails(t, ExitUsage, "invalid --format")
	env.run(t, "run", "--label", "a b=c", "--image", "hello").fails(t, ExitUsage, `invalid --label "a b=c"`)
}

// Completion offers VM names to every command that takes them, image names and IDs to
// images rm, and the presets to --image.
func TestCompletionWords(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	env.run(t, "run", "-d", "--rm", "--name", "comp-a", "--label", "tier=web", "--image", "hello", "--boot-args", bootArgs(testguest.ModeHalt)).ok(t)
	defer env.run(t, "kill", "comp-a")
	env.run(t, "images", "pull", writeManifest(t, "img-one", "kernel")).ok(t)
	words := func(args ...string) []string {
		t.Helper()
		r := env.run(t, append([]string{"__complete"}, args...)...).ok(t)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		var out []string
		for _, l := range lines[:len(lines)-1] { // the last line is the directive
			w, _, _ := strings.Cut(l, "\t")
			out = append(out, w)
		}
		return out
	}
	for _, cmd := range [][]string{{"stop", ""}, {"kill", ""}, {"pause", ""}, {"resume", ""}, {"inspect", ""},
		{"logs", ""}, {"attach", ""}, {"ssh", ""}, {"snapshot", ""}} {
		if got := words(cmd...); !slices.Contains(got, "comp-a") {
			t.Errorf("%s completes %q, want the VM's name", cmd[0], got)
		}
	}
	if got := words("run", "--image", ""); !slices.Equal(got, []string{"latest", "lts", "hello"}) {
		t.Errorf("run --image completes %q", got)
	}
	if got := words("run", "-d", "l"); !slices.Equal(got, []string{"latest", "lts"}) {
		t.Errorf("run's IMAGE completes %q", got)
	}
	if got := words("run", "--image", "l"); !slices.Equal(got, []string{"latest", "lts"}) {
		t.Errorf("run --image l completes %q", got)
	}
	if got := words("images", "pull", ""); !slices.Contains(got, "lts") {
		t.Errorf("images pull completes %q", got)
	}
	got := words("images", "rm", "")
	if len(got) != 2 || got[0] != "img-one" || len(got[1]) != 16 {
		t.Errorf("images rm completes %q, want the image's name and ID", got)
	}
	if got := words("ps", "--filter", "label=t"); !slices.Equal(got, []string{"label=tier", "label=tier=web"}) {
		t.Errorf("ps --filter label=t completes %q", got)
	}
	if got := words("ps", "--filter", "name=c"); !slices.Equal(got, []string{"name=comp-a"}) {
		t.Errorf("ps --filter name=c completes %q", got)
	}
	if got := words("run", "--huge-pages", ""); !slices.Equal(got, []string{"2M", "transparent", "none"}) {
		t.Errorf("run --huge-pages completes %q", got)
	}
}

package cli

import (
	"bytes"
	"testing"
)

func TestTerminalSafe(t *testing.T) {
	var out bytes.Buffer
	w := &terminalSafe{w: &out}
	in := "tick 1\r\n\x1b]0;pwned\x07\x1b[2J\tok é\xc2\x9b31m\xff end"
	// Written in pieces, one of which cuts "é" in half.
	for _, part := range []string{in[:27], in[27:37], in[37:]} {
		if n, err := w.Write([]byte(part)); err != nil || n != len(part) {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	want := "tick 1\r\n\\x1b]0;pwned\\x07\\x1b[2J\tok é\\u009b31m\\xff end"
	if out.String() != want {
		t.Errorf("got  %q\nwant %q", out.String(), want)
	}
}

// --format output carries what guests said (an agent's version): no control characters pass.
func TestFormattedIsTerminalSafe(t *testing.T) {
	f, err := parseFormat("{{.Name}} {{.Agent.Version}}")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	items := []psJSON{{Agent: &agentStatus{Up: true, Version: "1.0\x1b]0;pwned\x07"}}}
	items[0].Name = "web"
	if err := writeFormatted(&out, f, items); err != nil {
		t.Fatal(err)
	}
	if want := "web 1.0\\x1b]0;pwned\\x07\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

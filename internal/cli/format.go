package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/template"
)

// formatHelp is the help text of the --format flags.
const formatHelp = "print each item with a Go `TEMPLATE`, such as '{{.Name}}' or '{{json .}}' ('json' is short for '{{json .}}')"

// itemFormat is a --format template: each item is printed with it, followed by a newline.
type itemFormat struct {
	tmpl *template.Template
}

// templateFuncs are the functions --format templates may call besides text/template's.
var templateFuncs = template.FuncMap{
	"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
	"join":  strings.Join,
	"lower": strings.ToLower,
	"upper": strings.ToUpper,
}

// parseFormat reads a --format value; "" gives nil (no template: the command's own output).
func parseFormat(s string) (*itemFormat, error) {
	switch s {
	case "":
		return nil, nil
	case "json":
		s = "{{json .}}"
	}
	t, err := template.New("format").Funcs(templateFuncs).Option("missingkey=zero").Parse(s)
	if err != nil {
		return nil, usagef("invalid --format: %w", err)
	}
	return &itemFormat{tmpl: t}, nil
}

// writeFormatted prints each item with the template, one per line. Nothing is printed unless every
// item renders. Items carry what guests said (an agent's version, a firecracker log tail): the
// output goes through terminalSafe.
func writeFormatted[T any](w io.Writer, f *itemFormat, items []T) error {
	var buf bytes.Buffer
	for _, it := range items {
		if err := f.tmpl.Execute(&buf, it); err != nil {
			return fmt.Errorf("--format: %w", err)
		}
		buf.WriteByte('\n')
	}
	_, err := (&terminalSafe{w: w}).Write(buf.Bytes())
	return err
}

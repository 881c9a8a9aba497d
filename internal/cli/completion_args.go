package cli

import (
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm/baseimage"
)

// imagePresets are the IMAGE words that name no file: what --image and images pull complete.
var imagePresets = []string{baseimage.PresetLatest, baseimage.PresetLTS, imageHello}

// completeImageArg completes an IMAGE: the presets, then files (manifests).
func completeImageArg(_ *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return presetsFor(prefix), cobra.ShellCompDirectiveDefault
}

func presetsFor(prefix string) []string {
	var out []string
	for _, p := range imagePresets {
		if strings.HasPrefix(p, prefix) {
			out = append(out, p)
		}
	}
	return out
}

// completeImageRefs completes the names and IDs of cached images not yet on the command line.
func (a *app) completeImageRefs(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	_, list, err := a.cachedImages(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, b := range list {
		if b.Name != "" && !slices.Contains(args, b.Name) {
			out = append(out, b.Name+"\t"+b.ID)
		}
		if !slices.Contains(args, b.ID) {
			out = append(out, b.ID+"\t"+b.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

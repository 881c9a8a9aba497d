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

// fixedValues completes a flag with one of values.
func fixedValues(values ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(_ *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
		var out []string
		for _, v := range values {
			if strings.HasPrefix(v, prefix) {
				out = append(out, v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// registerRunCompletions completes run's flags that take a word: --image (presets, then
// manifest files), --boot-mode, --cpu-template and --huge-pages.
func registerRunCompletions(cmd *cobra.Command) {
	_ = cmd.RegisterFlagCompletionFunc("image", func(_ *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
		return presetsFor(prefix), cobra.ShellCompDirectiveDefault
	})
	// IMAGE, the first argument, completes as --image does; after it comes the guest's command.
	cmd.ValidArgsFunction = completeImageArg
	_ = cmd.RegisterFlagCompletionFunc("boot-mode", fixedValues("api", "config-file"))
	_ = cmd.RegisterFlagCompletionFunc("cpu-template", fixedValues("C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "none"))
	_ = cmd.RegisterFlagCompletionFunc("huge-pages", fixedValues("2M", "transparent", "none"))
}

// completePsFilter completes ps --filter: the keys, then the names, states and labels of the
// running VMs.
func (a *app) completePsFilter(cmd *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
	words := []string{"name=", "state=running", "state=paused", "state=exited", "label="}
	if mgr, err := a.manager(nil); err == nil {
		if infos, err := mgr.List(cmd.Context()); err == nil {
			for _, info := range infos {
				words = append(words, "name="+info.Name)
				for k, v := range info.Spec.Labels {
					words = append(words, "label="+k, "label="+k+"="+v)
				}
			}
		}
		mgr.Close()
	}
	var out []string
	for _, w := range words {
		if strings.HasPrefix(w, prefix) && !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
}

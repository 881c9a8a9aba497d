package smartvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.Main(m, map[string]func([]string) int{
		"firecracker":   fakefc.Main,
		"jailer":        fakefc.JailerMain,
		"smartvm-owner": ownerMain,
	})
}

// ownerArgs is what ownerMain gets, as JSON in its only argument.
type ownerArgs struct {
	Root     string      `json:"root"`
	Binary   string      `json:"binary"`
	Spec     MachineSpec `json:"spec"`
	Detached bool        `json:"detached,omitempty"`
	// Exit makes the owner exit (code 0) once the VM runs, instead of sleeping until killed.
	Exit bool `json:"exit,omitempty"`
	// Signals makes the owner call HandleSignals before starting the VM.
	Signals bool `json:"signals,omitempty"`
	// Grace is the manager's stop grace period; zero: 200 ms.
	Grace time.Duration `json:"grace,omitempty"`
	// ImageDir is a base-image cache for the manager; empty: none.
	ImageDir string `json:"image_dir,omitempty"`
	// NetnsDir is where the manager mounts VM network namespaces; empty: the default.
	NetnsDir string `json:"netns_dir,omitempty"`
	// Keep starts the VM with KeepExited.
	Keep bool `json:"keep,omitempty"`
	// Warm makes that many warm jails for the spec (WarmJails) before the start.
	Warm int `json:"warm,omitempty"`
	// CrashAt makes the owner SIGKILL itself after that step of taking a warm jail
	// (adoptWarmStep).
	CrashAt string `json:"crash_at,omitempty"`
}

// ownerMain is a process that owns a VM: it starts the VM described by its argument, prints
// the firecracker pid on a line, and then sleeps until it is killed (or exits, with Exit).
func ownerMain(args []string) int {
	var a ownerArgs
	if err := json.Unmarshal([]byte(args[0]), &a); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if a.Grace == 0 {
		a.Grace = 200 * time.Millisecond
	}
	opts := []Option{WithRuntimeDir(a.Root), WithFirecrackerBinary(a.Binary), WithStopGracePeriod(a.Grace), WithNetnsDir(a.NetnsDir)}
	if a.ImageDir != "" {
		images, err := baseimage.New(baseimage.Options{Dir: a.ImageDir})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		opts = append(opts, WithBaseImages(images))
	}
	mgr, err := NewManager(opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if a.Signals {
		mgr.HandleSignals()
	}
	if a.CrashAt != "" {
		adoptWarmStep = func(step string) {
			if step == a.CrashAt {
				if p, err := os.FindProcess(os.Getpid()); err == nil {
					p.Kill() // SIGKILL: no deferred cleanup runs
				}
				select {}
			}
		}
	}
	if a.Warm > 0 {
		if err := mgr.WarmJails(context.Background(), a.Spec, a.Warm); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	var sopts []StartOption
	if a.Detached {
		sopts = append(sopts, Detached())
	}
	if a.Keep {
		sopts = append(sopts, KeepExited())
	}
	m, err := mgr.Start(context.Background(), a.Spec, sopts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if a.CrashAt != "" {
		fmt.Fprintf(os.Stderr, "the start took no warm jail: step %s never came\n", a.CrashAt)
		return 1
	}
	fmt.Println(m.PID())
	if a.Exit {
		return 0
	}
	time.Sleep(time.Hour)
	return 0
}

package baseimage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
)

// TestExampleManifestHosting follows the hosting steps of assets/base-images/README.md for each
// example: publish the artifacts next to the manifest, fill in sha256 and size, then pull it
// by path and by URL. Unfilled examples fail safely with a checksum error.
func TestExampleManifestHosting(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join("..", "assets", "base-images", "*.json"))
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			mf, err := ParseManifest(data)
			if err != nil {
				t.Fatal(err)
			}
			if mf.Rootfs.Format == formatSquashfs {
				needConvertTools(t)
			}
			dir := t.TempDir()
			publish := func(f *ManifestFile, content []byte) {
				if err := os.WriteFile(filepath.Join(dir, f.URL), content, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			publish(&mf.Kernel, kernelBytes(mf.Name))
			rootfs := []byte("an ext4 image, used as it is")
			if mf.Rootfs.Format == formatSquashfs {
				rootfs = testSquashfs(t)
			}
			publish(&mf.Rootfs, rootfs)
			if mf.Initrd != nil {
				publish(mf.Initrd, []byte("initrd"))
			}
			// Unfilled: the placeholders fail with a checksum error and nothing is cached.
			if err := os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			m := testManager(t, nil, func(o *Options) { o.Arch = mf.Arch })
			if _, err := m.Pull(context.Background(), Source{ManifestPath: filepath.Join(dir, "manifest.json")}); !errors.Is(err, ErrChecksum) {
				t.Fatalf("pull of the unfilled example: %v, want ErrChecksum", err)
			}
			assertNothingCached(t, m)

			// Filled in from the published files: by the script the README names, and from Go.
			scripted := fillDigests(t, dir, data)
			for _, f := range []*ManifestFile{&mf.Kernel, &mf.Rootfs, mf.Initrd} {
				if f == nil {
					continue
				}
				d, err := ManifestFileFor(filepath.Join(dir, f.URL))
				if err != nil {
					t.Fatal(err)
				}
				d.Format = f.Format
				*f = d
			}
			if err := mf.Validate(); err != nil {
				t.Fatal(err)
			}
			if scripted != nil && !reflect.DeepEqual(scripted, mf) {
				t.Errorf("fill-digests.sh wrote %+v, want %+v", scripted, mf)
			}
			filled, _ := json.MarshalIndent(mf, "", "  ")
			if err := os.WriteFile(filepath.Join(dir, "manifest.json"), filled, 0o644); err != nil {
				t.Fatal(err)
			}
			byPath, err := m.Pull(context.Background(), Source{ManifestPath: filepath.Join(dir, "manifest.json")})
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
			defer srv.Close()
			byURL, err := testManager(t, nil, func(o *Options) { o.Arch = mf.Arch }).Pull(context.Background(), Source{ManifestURL: srv.URL + "/manifest.json"})
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range []*Bundle{byPath, byURL} {
				if b.Name != mf.Name || b.BootArgs != mf.BootArgs || b.Firecracker == nil || *b.Firecracker != *mf.Firecracker {
					t.Errorf("bundle %+v does not carry the manifest's fields", b)
				}
				if (mf.Initrd == nil) != (b.Initrd == "") {
					t.Errorf("initrd %q", b.Initrd)
				}
				if mf.Rootfs.Format == formatExt4 {
					got, _ := os.ReadFile(b.Rootfs)
					if !bytes.Equal(got, rootfs) || b.SSHPrivateKey != "" {
						t.Errorf("an ext4 rootfs was not used as it is (key %q)", b.SSHPrivateKey)
					}
				} else {
					checkBootReady(t, b)
				}
			}
			if byPath.ID != byURL.ID {
				t.Errorf("the same artifacts by path and by URL got IDs %s and %s", byPath.ID, byURL.ID)
			}
		})
	}
}

// fillDigests runs assets/base-images/fill-digests.sh on a copy of the manifest data in dir,
// next to the files it names, and returns the manifest it wrote; nil when the host lacks sh,
// awk or sha256sum. Pointing a URL at a file that is not there fails and changes nothing.
func fillDigests(t *testing.T, dir string, data []byte) *Manifest {
	t.Helper()
	for _, tool := range []string{"sh", "awk", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Logf("not checking fill-digests.sh: %v", err)
			return nil
		}
	}
	script, err := filepath.Abs(filepath.Join("..", "assets", "base-images", "fill-digests.sh"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "scripted.json")
	broken := bytes.Replace(data, []byte(`"url": "`), []byte(`"url": "missing-`), 1)
	if err := os.WriteFile(path, broken, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sh", script, path).CombinedOutput(); err == nil || !bytes.Contains(out, []byte("cannot read")) {
		t.Errorf("fill-digests.sh with a missing file: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, broken) {
		t.Errorf("fill-digests.sh changed a manifest it failed on:\n%s", got)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sh", script, path).CombinedOutput(); err != nil {
		t.Fatalf("fill-digests.sh: %v\n%s", err, out)
	}
	filled, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := ParseManifest(filled)
	if err != nil {
		t.Fatalf("the manifest fill-digests.sh wrote: %v\n%s", err, filled)
	}
	return mf
}

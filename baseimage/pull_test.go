package baseimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

func artifactKey(t *testing.T, m *Manager, b *Bundle, role string) string {
	t.Helper()
	for _, a := range b.Artifacts {
		if a.Role == role {
			return strings.TrimPrefix(a.URL, m.bucket.String()+"/")
		}
	}
	t.Fatalf("bundle has no %s artifact: %+v", role, b.Artifacts)
	return ""
}

func TestPullPresets(t *testing.T) {
	needConvertTools(t)
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	tests := []struct {
		src                Source
		arch               string
		wantKernel, wantFS string
		wantName           string
		wantFC             *VersionRange
	}{
		{Source{Preset: PresetLatest}, ArchX86_64, buildNew + "x86_64/vmlinux-6.18.40", buildNew + "x86_64/ubuntu-24.04.squashfs", "ubuntu-24.04+vmlinux-6.18.40", nil},
		{Source{Preset: PresetLTS}, ArchX86_64, buildMid + "x86_64/vmlinux-6.1.170", buildMid + "x86_64/ubuntu-24.04.squashfs", "ubuntu-24.04+vmlinux-6.1.170", nil},
		{Source{Preset: PresetLatest, Release: "v1.14"}, ArchX86_64, releaseV114 + "x86_64/vmlinux-6.1.141", releaseV114 + "x86_64/ubuntu-24.04.squashfs", "ubuntu-24.04+vmlinux-6.1.141", &VersionRange{Min: "1.14", Max: "1.14"}},
		{Source{Preset: PresetLTS, Release: "v1.14"}, ArchX86_64, releaseV114 + "x86_64/vmlinux-6.1.141", releaseV114 + "x86_64/ubuntu-24.04.squashfs", "ubuntu-24.04+vmlinux-6.1.141", &VersionRange{Min: "1.14", Max: "1.14"}},
		{Source{Preset: PresetLatest}, ArchAarch64, buildNew + "aarch64/vmlinux-6.1.180", buildNew + "aarch64/ubuntu-24.04.squashfs", "ubuntu-24.04+vmlinux-6.1.180", nil},
		{Source{Preset: PresetLTS}, ArchAarch64, buildNew + "aarch64/vmlinux-6.1.180", buildNew + "aarch64/ubuntu-24.04.squashfs", "ubuntu-24.04+vmlinux-6.1.180", nil},
	}
	for _, tc := range tests {
		t.Run(tc.src.String()+" "+tc.arch, func(t *testing.T) {
			m := testManager(t, bucket, func(o *Options) { o.Arch = tc.arch })
			b, err := m.Pull(context.Background(), tc.src)
			if err != nil {
				t.Fatal(err)
			}
			if got := artifactKey(t, m, b, roleKernel); got != tc.wantKernel {
				t.Errorf("kernel %s, want %s", got, tc.wantKernel)
			}
			if got := artifactKey(t, m, b, roleRootfs); got != tc.wantFS {
				t.Errorf("rootfs %s, want %s", got, tc.wantFS)
			}
			if b.Name != tc.wantName {
				t.Errorf("name %q, want %q", b.Name, tc.wantName)
			}
			if (b.Firecracker == nil) != (tc.wantFC == nil) || (b.Firecracker != nil && *b.Firecracker != *tc.wantFC) {
				t.Errorf("firecracker range %v, want %v", b.Firecracker, tc.wantFC)
			}
			if b.Arch != tc.arch || b.Source != tc.src || b.Initrd != "" {
				t.Errorf("bundle %+v", b)
			}
			kernel, err := os.ReadFile(b.Kernel)
			if err != nil || !bytes.Equal(kernel, kernelBytes(tc.wantKernel)) {
				t.Errorf("kernel content wrong (err %v)", err)
			}
			checkBootReady(t, b)
		})
	}
}

// checkBootReady checks a converted bundle: e2fsck accepts the rootfs, root's authorized_keys
// holds the bundle's public key with the right modes and owner, and the private key is 0600.
func checkBootReady(t *testing.T, b *Bundle) {
	t.Helper()
	if out, err := exec.Command(mustTool(t, "e2fsck"), "-fn", b.Rootfs).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", b.Rootfs, err, out)
	}
	pub, err := os.ReadFile(b.SSHPublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got := debugfsCat(t, b.Rootfs, "/root/.ssh/authorized_keys"); got != string(pub) {
		t.Errorf("authorized_keys in the image is %q, want %q", got, pub)
	}
	for path, want := range map[string]string{
		"/root/.ssh/authorized_keys":         "regular 0600 uid 0 gid 0",
		"/root/.ssh":                         "directory 0700 uid 0 gid 0",
		"/root":                              "directory 0700 uid 0 gid 0",
		"/":                                  "directory 0755 uid 0 gid 0",
		"/bin/init":                          "regular 04755 uid 0 gid 0",
		"/readonly":                          "directory 0555 uid 0 gid 0",
		"/etc/hostname.link":                 "symlink 0777 uid 0 gid 0",
		"/odd/a \"quoted\" name with spaces": "regular 0644 uid 0 gid 0",
	} {
		if got := debugfsStat(t, b.Rootfs, path); got != want {
			t.Errorf("%s in the image: %s, want %s", path, got, want)
		}
	}
	if os.Geteuid() == 0 { // the fixture has these only when built as root
		if got := debugfsStat(t, b.Rootfs, "/var/lib/data.bin"); got != "regular 0644 uid 1234 gid 1234" {
			t.Errorf("/var/lib/data.bin: %s, want the squashfs's owner 1234", got)
		}
		if got := debugfsStat(t, b.Rootfs, "/dev/null"); got != "character special 0666 uid 0 gid 0" {
			t.Errorf("/dev/null: %s", got)
		}
	}
	st, err := os.Stat(b.SSHPrivateKey)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("private key %s: mode %v, err %v; want 0600", b.SSHPrivateKey, st.Mode(), err)
	}
	if kg, err := exec.LookPath("ssh-keygen"); err == nil {
		out, err := exec.Command(kg, "-y", "-f", b.SSHPrivateKey).Output()
		if err != nil {
			t.Fatalf("ssh-keygen -y rejects the private key: %v", err)
		}
		if f := strings.Fields(string(pub)); len(f) < 2 || !strings.HasPrefix(string(out), f[0]+" "+f[1]) {
			t.Errorf("ssh-keygen -y gives %q, want the public key %q", out, pub)
		}
	}
}

func mustTool(t *testing.T, name string) string {
	t.Helper()
	p, err := lookTool(sbinDirs(), name)
	if err != nil {
		t.Skip(err)
	}
	return p
}

func debugfsCat(t *testing.T, image, path string) string {
	t.Helper()
	out, err := exec.Command(mustTool(t, "debugfs"), "-R", "cat "+path, image).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

// debugfsStat returns "<type> <mode> uid <u> gid <g>" of path in the image, for example
// "regular 0600 uid 0 gid 0".
func debugfsStat(t *testing.T, image, path string) string {
	t.Helper()
	out, err := exec.Command(mustTool(t, "debugfs"), "-R", "stat "+debugfsQuote(path), image).Output()
	if err != nil {
		t.Fatalf("debugfs stat %s: %v", path, err)
	}
	mt := regexp.MustCompile(`Type: ([a-z ]+?)\s+Mode:\s+(\d+)[\s\S]*?User:\s+(\d+)\s+Group:\s+(\d+)`).FindStringSubmatch(string(out))
	if mt == nil {
		return "missing"
	}
	return fmt.Sprintf("%s %s uid %s gid %s", mt[1], mt[2], mt[3], mt[4])
}

func TestPullCachedIsOffline(t *testing.T) {
	needConvertTools(t)
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	m := testManager(t, bucket)
	ctx := context.Background()
	first, err := m.Pull(ctx, Source{Preset: PresetLatest})
	if err != nil {
		t.Fatal(err)
	}
	// Offline: the server is gone, the recorded resolution is used.
	bucket.srv.Close()
	again, err := m.Pull(ctx, Source{Preset: PresetLatest})
	if err != nil {
		t.Fatalf("pull of a cached preset with the server down: %v", err)
	}
	if again.ID != first.ID || again.Rootfs != first.Rootfs {
		t.Errorf("second pull gave %s, want %s", again.ID, first.ID)
	}
	if !again.LastUsed.After(first.Created) && !again.LastUsed.Equal(first.LastUsed) {
		t.Errorf("LastUsed not updated: %v", again.LastUsed)
	}
	// Refresh needs the network and says so.
	if _, err := m.Pull(ctx, Source{Preset: PresetLatest, Refresh: true}); err == nil {
		t.Error("refresh with the server down succeeded")
	}
	if _, err := m.Get(ctx, first.ID); err != nil {
		t.Errorf("the failed refresh lost the cached bundle: %v", err)
	}
}

func TestPullRefresh(t *testing.T) {
	needConvertTools(t)
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	m := testManager(t, bucket, func(o *Options) { o.Keep = -1 })
	ctx := context.Background()
	first, err := m.Pull(ctx, Source{Preset: PresetLatest})
	if err != nil {
		t.Fatal(err)
	}
	bucket.resetCounts()
	same, err := m.Pull(ctx, Source{Preset: PresetLatest, Refresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if same.ID != first.ID {
		t.Errorf("refresh with an unchanged bucket gave %s, want %s", same.ID, first.ID)
	}
	if bucket.listCount() == 0 {
		t.Error("refresh did not list the bucket")
	}
	if n := bucket.count(buildNew + "x86_64/ubuntu-24.04.squashfs"); n != 0 {
		t.Errorf("refresh with an unchanged bucket downloaded the rootfs %d times", n)
	}
	// A newer build appears: refresh moves to it, a plain pull keeps returning the new record.
	newer := "firecracker-ci/20261001-0123456789ab-0/x86_64/"
	bucket.put(newer+"vmlinux-6.18.50", kernelBytes(newer))
	bucket.put(newer+"ubuntu-24.04.squashfs", testSquashfs(t))
	moved, err := m.Pull(ctx, Source{Preset: PresetLatest, Refresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := artifactKey(t, m, moved, roleKernel); got != newer+"vmlinux-6.18.50" {
		t.Errorf("refresh resolved %s", got)
	}
	plain, err := m.Pull(ctx, Source{Preset: PresetLatest})
	if err != nil {
		t.Fatal(err)
	}
	if plain.ID != moved.ID {
		t.Errorf("pull after refresh gave %s, want %s", plain.ID, moved.ID)
	}
}

func TestPullRecordedKeysAfterRemove(t *testing.T) {
	needConvertTools(t)
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	m := testManager(t, bucket)
	ctx := context.Background()
	first, err := m.Pull(ctx, Source{Preset: PresetLTS})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	// A newer build with a 6.1 kernel appears, but the record pins the first resolution.
	newer := "firecracker-ci/20261001-0123456789ab-0/x86_64/"
	bucket.put(newer+"vmlinux-6.1.200", kernelBytes(newer))
	bucket.put(newer+"ubuntu-24.04.squashfs", testSquashfs(t))
	bucket.resetCounts()
	again, err := m.Pull(ctx, Source{Preset: PresetLTS})
	if err != nil {
		t.Fatal(err)
	}
	if bucket.listCount() != 0 {
		t.Errorf("pull of a recorded preset listed the bucket %d times, want 0", bucket.listCount())
	}
	if again.ID != first.ID {
		t.Errorf("re-pull gave %s, want the content-derived ID %s", again.ID, first.ID)
	}
	if n := bucket.count(buildMid + "x86_64/vmlinux-6.1.170"); n != 1 {
		t.Errorf("recorded kernel downloaded %d times, want 1", n)
	}
	checkBootReady(t, again)

	// The recorded object changed in the bucket: the recorded sha256 catches it.
	if err := m.Remove(ctx, again.ID); err != nil {
		t.Fatal(err)
	}
	bucket.put(buildMid+"x86_64/vmlinux-6.1.170", kernelBytes("changed"))
	_, err = m.Pull(ctx, Source{Preset: PresetLTS})
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("pull of a changed recorded object: %v, want ErrChecksum", err)
	}
	if !strings.Contains(err.Error(), "Refresh") {
		t.Errorf("error %q does not suggest a refresh", err)
	}
	// Refresh resolves afresh and takes the newest 6.1 kernel.
	fresh, err := m.Pull(ctx, Source{Preset: PresetLTS, Refresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := artifactKey(t, m, fresh, roleKernel); got != newer+"vmlinux-6.1.200" {
		t.Errorf("refresh resolved %s", got)
	}
}

// Converting a squashfs reports each phase when it begins and ends, in order, with the time
// it took.
func TestPullReportsConversionPhases(t *testing.T) {
	needConvertTools(t)
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	var (
		mu     sync.Mutex
		phases []Progress
	)
	m := testManager(t, bucket, func(o *Options) {
		o.Progress = func(p Progress) {
			if p.Phase != "" {
				mu.Lock()
				defer mu.Unlock()
				phases = append(phases, p)
			}
		}
	})
	if _, err := m.Pull(context.Background(), Source{Preset: PresetLatest}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var got []string
	for _, p := range phases {
		if p.File != "ubuntu-24.04.squashfs" || p.Total != 1 || p.Elapsed < 0 {
			t.Errorf("phase progress %+v", p)
		}
		if p.Elapsed == 0 && p.Done == 0 {
			got = append(got, p.Phase+" begins")
		}
		if p.Done == 1 {
			got = append(got, p.Phase+" ends")
		}
	}
	want := []string{"unpack begins", "unpack ends", "key begins", "key ends", "mkfs begins", "mkfs ends", "check begins", "check ends"}
	if !slices.Equal(got, want) {
		t.Errorf("phases %q, want %q", got, want)
	}
}

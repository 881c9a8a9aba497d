package baseimage

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
)

const samplePage = `<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>spec.ccfc.min</Name><Prefix>firecracker-ci/</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated><NextContinuationToken>1abc==</NextContinuationToken>
<Contents><Key>firecracker-ci/README</Key><LastModified>2026-09-02T10:00:00.000Z</LastModified><ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
<CommonPrefixes><Prefix>firecracker-ci/20260902-a6146c8bb213-0/</Prefix></CommonPrefixes><CommonPrefixes><Prefix>firecracker-ci/v1.14/</Prefix></CommonPrefixes></ListBucketResult>`

func TestParseListing(t *testing.T) {
	p, err := parseListing([]byte(samplePage))
	if err != nil {
		t.Fatal(err)
	}
	if !p.IsTruncated || p.NextContinuationToken != "1abc==" || len(p.Contents) != 1 || len(p.CommonPrefixes) != 2 {
		t.Fatalf("parsed %+v", p)
	}
	o := p.Contents[0]
	if o.Key != "firecracker-ci/README" || o.Size != 12 || o.ETag != `"d41d8cd98f00b204e9800998ecf8427e"` || o.LastModified.Year() != 2026 {
		t.Errorf("object %+v", o)
	}
	for name, doc := range map[string]string{
		"truncated without token": strings.Replace(samplePage, "<NextContinuationToken>1abc==</NextContinuationToken>", "", 1),
		"not xml":                 "{}",
		"error document":          `<Error><Code>AccessDenied</Code></Error>`,
		"negative size":           strings.Replace(samplePage, "<Size>12</Size>", "<Size>-1</Size>", 1),
		"empty key":               strings.Replace(samplePage, "<Key>firecracker-ci/README</Key>", "<Key></Key>", 1),
	} {
		if _, err := parseListing([]byte(doc)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestListFollowsPagesAndReportsErrors(t *testing.T) {
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	bucket.pageSize = 2
	m := testManager(t, bucket)
	l, err := m.list(context.Background(), "firecracker-ci/", true)
	if err != nil {
		t.Fatal(err)
	}
	want := "firecracker-ci/2026-bad/ " + buildOld + " " + buildMid + " " + buildNew + " firecracker-ci/firecracker/ " + releaseV114
	if got := strings.Join(l.prefixes, " "); got != want {
		t.Errorf("prefixes %s, want %s", got, want)
	}
	if bucket.listCount() != 3 {
		t.Errorf("%d pages requested, want 3", bucket.listCount())
	}
	bucket.setFault("?list", &fault{times: -1, status: http.StatusForbidden})
	_, err = m.list(context.Background(), "firecracker-ci/", true)
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusForbidden {
		t.Errorf("listing a forbidden bucket: %v", err)
	}
	bucket.setFault("?list", &fault{times: 1, status: http.StatusServiceUnavailable})
	if _, err := m.list(context.Background(), "firecracker-ci/", true); err != nil {
		t.Errorf("one 503 was not retried: %v", err)
	}
}

func TestResolveNothing(t *testing.T) {
	bucket := newFakeBucket(t)
	bucket.put(buildNew+"x86_64/vmlinux-6.18.40", []byte("k")) // no rootfs anywhere
	bucket.put(releaseV114+"x86_64/ubuntu-22.04.ext4", []byte("old layout"))
	m := testManager(t, bucket)
	ctx := context.Background()
	for _, src := range []Source{{Preset: PresetLatest}, {Preset: PresetLTS}, {Preset: PresetLTS, Release: "v1.14"}, {Preset: PresetLatest, Release: "v1.99"}} {
		_, err := m.Pull(ctx, src)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", src, err)
		}
		assertNothingCached(t, m)
	}
}

func FuzzParseListing(f *testing.F) {
	f.Add([]byte(samplePage))
	f.Add([]byte(`<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>`))
	f.Add([]byte(`<ListBucketResult><Contents><Key>a</Key><Size>99999999999999999999</Size></Contents></ListBucketResult>`))
	f.Add([]byte(`<Error><Code>NoSuchBucket</Code></Error>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parseListing(data)
		if err != nil {
			return
		}
		if p.IsTruncated && p.NextContinuationToken == "" {
			t.Fatal("accepted a truncated page without a token")
		}
		for _, o := range p.Contents {
			if o.Key == "" || o.Size < 0 {
				t.Fatalf("accepted object %+v", o)
			}
		}
		// Whatever parses, picking artifacts from it must not panic.
		for _, preset := range []string{PresetLatest, PresetLTS} {
			pickPreset(p.Contents, "firecracker-ci/x/x86_64/", preset)
		}
	})
}

func FuzzParseSquashfsListing(f *testing.F) {
	f.Add([]byte("drwxr-xr-x 0/0                      35 2026-11-28 11:00 R\ncrw-r--r-- 0/0                   1,  3 2026-11-28 11:00 R/dev/null\nlrwxrwxrwx 0/0 4 2026-11-28 11:00 R/l -> /etc\n-rwSr--r-- 0/0 2 2026-11-28 11:00 R/f\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := parseSquashfsListing(data)
		if err != nil {
			return
		}
		if entries[0].path != "/" {
			t.Fatalf("first entry %q", entries[0].path)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.path, "/") || strings.Contains(e.path, "/../") || strings.HasSuffix(e.path, "/..") || e.mode&sIFMT == 0 {
				t.Fatalf("accepted entry %+v", e)
			}
		}
	})
}

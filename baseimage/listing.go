package baseimage

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// maxListingPage caps the bytes read from one ListObjectsV2 page (1000 keys is about 400 KiB).
const maxListingPage = 16 << 20

// maxListingPages bounds how many pages one listing may follow.
const maxListingPages = 1000

// object is one key of a bucket listing.
type object struct {
	Key          string    `xml:"Key"`
	Size         int64     `xml:"Size"`
	ETag         string    `xml:"ETag"`
	LastModified time.Time `xml:"LastModified"`
}

// listPage is one page of an S3 ListObjectsV2 response.
type listPage struct {
	XMLName               xml.Name `xml:"ListBucketResult"`
	IsTruncated           bool     `xml:"IsTruncated"`
	NextContinuationToken string   `xml:"NextContinuationToken"`
	Contents              []object `xml:"Contents"`
	CommonPrefixes        []struct {
		Prefix string `xml:"Prefix"`
	} `xml:"CommonPrefixes"`
}

// s3Error is S3's error document.
type s3Error struct {
	XMLName xml.Name `xml:"Error"`
	Code    string   `xml:"Code"`
	Message string   `xml:"Message"`
}

// parseListing decodes one ListObjectsV2 page.
func parseListing(data []byte) (*listPage, error) {
	var p listPage
	if err := xml.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("parse bucket listing: %w", err)
	}
	if p.IsTruncated && p.NextContinuationToken == "" {
		return nil, errors.New("parse bucket listing: IsTruncated is true but NextContinuationToken is empty")
	}
	for _, o := range p.Contents {
		if o.Key == "" {
			return nil, errors.New("parse bucket listing: an entry has no Key")
		}
		if o.Size < 0 {
			return nil, fmt.Errorf("parse bucket listing: key %q has negative size %d", o.Key, o.Size)
		}
	}
	return &p, nil
}

// listing is the merged result of all pages.
type listing struct {
	objects  []object
	prefixes []string
}

// list runs ListObjectsV2 for prefix (with delimiter "/" when delim is set), following
// continuation tokens.
func (m *Manager) list(ctx context.Context, prefix string, delim bool) (*listing, error) {
	var out listing
	token := ""
	seen := make(map[string]bool)
	for page := 0; ; page++ {
		if page == maxListingPages {
			return nil, fmt.Errorf("list %s: more than %d pages", prefix, maxListingPages)
		}
		q := url.Values{"list-type": {"2"}, "prefix": {prefix}}
		if delim {
			q.Set("delimiter", "/")
		}
		if token != "" {
			q.Set("continuation-token", token)
		}
		u := *m.bucket
		u.RawQuery = q.Encode()
		var p *listPage
		err := m.withRetries(ctx, u.String(), func(ctx context.Context) (bool, error) {
			body, err := m.getSmall(ctx, u.String(), maxListingPage)
			if err != nil {
				return false, err
			}
			p, err = parseListing(body)
			return false, err
		})
		if err != nil {
			return nil, fmt.Errorf("list bucket prefix %s: %w", prefix, err)
		}
		out.objects = append(out.objects, p.Contents...)
		for _, cp := range p.CommonPrefixes {
			out.prefixes = append(out.prefixes, cp.Prefix)
		}
		if !p.IsTruncated {
			return &out, nil
		}
		if seen[p.NextContinuationToken] {
			return nil, fmt.Errorf("list bucket prefix %s: the server repeated continuation token %q", prefix, p.NextContinuationToken)
		}
		seen[p.NextContinuationToken] = true
		token = p.NextContinuationToken
	}
}

// getSmall GETs a small document (a listing or a manifest), reading at most limit bytes.
// Failures are *HTTPError or transport errors; withRetries decides whether to retry them.
func (m *Manager) getSmall(ctx context.Context, rawURL string, limit int64) ([]byte, error) {
	ctx, wd := m.newWatchdog(ctx)
	defer wd.stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("new request: %w", err)
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, wd.wrap(transient(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(rawURL, resp)
	}
	data, err := io.ReadAll(io.LimitReader(wd.reader(resp.Body), limit+1))
	if err != nil {
		return nil, wd.wrap(transient(fmt.Errorf("read body: %w", err)))
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("GET %s: response larger than %d bytes", rawURL, limit)
	}
	return data, nil
}

// statusError builds an *HTTPError, with S3's error message when the body carries one.
func statusError(rawURL string, resp *http.Response) error {
	e := &HTTPError{URL: rawURL, StatusCode: resp.StatusCode}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10)) // the message is optional
	var se s3Error
	if xml.Unmarshal(bytes.TrimSpace(body), &se) == nil && se.Code != "" {
		e.Message = se.Code
		if se.Message != "" {
			e.Message += ": " + strconv.Quote(se.Message)
		}
	}
	return e
}

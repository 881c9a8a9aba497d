// Package uffd is a userfaultfd page server for Firecracker's Uffd memory backend: it maps a
// snapshot's memory file once and serves the page faults of every VM restored from it.
//
// A Firecracker restoring with mem_backend {"backend_type": "Uffd", "backend_path": SOCK}
// connects to SOCK and sends, in one message, the userfaultfd its guest memory is registered
// with (SCM_RIGHTS) and a JSON array describing its guest memory regions:
//
//	[{"base_host_virt_addr": A, "size": N, "offset": O, "page_size": P, "page_size_kib": P}]
//
// page_size is in bytes (v1.10 and later); v1.7 sends only page_size_kib, which despite its
// name also holds bytes. Everything in the message is untrusted: ParseRegions checks it
// against the memory file before a single page is served.
package uffd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/smartvm/smartvm/internal/memfile"
)

// Region is one guest memory region as Firecracker describes it.
type Region struct {
	// Base is the region's address in Firecracker's address space.
	Base uint64
	// Size is its length in bytes, a multiple of PageSize.
	Size uint64
	// Offset is where its contents start in the memory file.
	Offset uint64
	// PageSize is the size of the pages backing it: 4 KiB, or 2 MiB with huge pages.
	PageSize uint64
}

// wireRegion is the JSON Firecracker sends (GuestRegionUffdMapping).
type wireRegion struct {
	BaseHostVirtAddr *uint64 `json:"base_host_virt_addr"`
	Size             *uint64 `json:"size"`
	Offset           *uint64 `json:"offset"`
	PageSize         *uint64 `json:"page_size"`
	PageSizeKiB      *uint64 `json:"page_size_kib"`
}

// Limits on a handshake.
const (
	// MaxMessage bounds the handshake's JSON. One region takes about 100 bytes.
	MaxMessage = 64 << 10
	// MaxRegions bounds the regions of one guest (x86 has 1 or 2, more with hotplug).
	MaxRegions = 64
)

// Page sizes a region may have.
const (
	smallPage = 4 << 10
	hugePage  = 2 << 20
)

// ErrHandshake is wrapped by the errors of a handshake that is not one Firecracker sends.
var ErrHandshake = errors.New("invalid uffd handshake")

// ParseRegions parses and checks the regions of a handshake for a memory file of fileSize
// bytes: each region is page aligned, inside the file, and apart from the others. The result
// is sorted by Base. Errors wrap ErrHandshake.
func ParseRegions(msg []byte, fileSize int64) ([]Region, error) {
	if len(msg) > MaxMessage {
		return nil, fmt.Errorf("%w: %d bytes of regions, more than %d", ErrHandshake, len(msg), MaxMessage)
	}
	dec := json.NewDecoder(bytes.NewReader(msg))
	var wire []wireRegion
	if err := dec.Decode(&wire); err != nil {
		return nil, fmt.Errorf("%w: regions: %w", ErrHandshake, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the regions", ErrHandshake)
	}
	if len(wire) == 0 || len(wire) > MaxRegions {
		return nil, fmt.Errorf("%w: %d regions, want 1 to %d", ErrHandshake, len(wire), MaxRegions)
	}
	if fileSize < 0 {
		return nil, fmt.Errorf("%w: negative file size", ErrHandshake)
	}
	regions := make([]Region, 0, len(wire))
	for i, w := range wire {
		if w.BaseHostVirtAddr == nil || w.Size == nil || w.Offset == nil {
			return nil, fmt.Errorf("%w: region %d lacks base_host_virt_addr, size or offset", ErrHandshake, i)
		}
		r := Region{Base: *w.BaseHostVirtAddr, Size: *w.Size, Offset: *w.Offset}
		switch {
		case w.PageSize != nil && w.PageSizeKiB != nil && *w.PageSize != *w.PageSizeKiB:
			return nil, fmt.Errorf("%w: region %d: page_size %d and page_size_kib %d differ", ErrHandshake, i, *w.PageSize, *w.PageSizeKiB)
		case w.PageSize != nil:
			r.PageSize = *w.PageSize
		case w.PageSizeKiB != nil:
			r.PageSize = *w.PageSizeKiB
		default:
			return nil, fmt.Errorf("%w: region %d has no page size", ErrHandshake, i)
		}
		if err := r.check(uint64(fileSize)); err != nil {
			return nil, fmt.Errorf("%w: region %d: %w", ErrHandshake, i, err)
		}
		regions = append(regions, r)
	}
	sort.Slice(regions, func(i, j int) bool { return regions[i].Base < regions[j].Base })
	for i := 1; i < len(regions); i++ {
		if p := regions[i-1]; p.Base+p.Size > regions[i].Base {
			return nil, fmt.Errorf("%w: regions at %#x and %#x overlap", ErrHandshake, p.Base, regions[i].Base)
		}
	}
	return regions, nil
}

func (r Region) check(fileSize uint64) error {
	if r.PageSize != smallPage && r.PageSize != hugePage {
		return fmt.Errorf("page size %d, want %d or %d", r.PageSize, smallPage, hugePage)
	}
	mask := r.PageSize - 1
	switch {
	case r.Size == 0 || r.Size&mask != 0:
		return fmt.Errorf("size %d is not a positive multiple of the page size %d", r.Size, r.PageSize)
	case r.Base == 0 || r.Base&mask != 0:
		return fmt.Errorf("base %#x is not page aligned", r.Base)
	case r.Offset&mask != 0:
		return fmt.Errorf("offset %d is not page aligned", r.Offset)
	case r.Base > math.MaxUint64-r.Size || r.Base+r.Size > 1<<57:
		return fmt.Errorf("base %#x + size %d is beyond any user address", r.Base, r.Size)
	case r.Offset > fileSize || r.Size > fileSize-r.Offset:
		return fmt.Errorf("offset %d + size %d is beyond the end of the %d-byte memory file", r.Offset, r.Size, fileSize)
	}
	return nil
}

// find returns the index of the region holding addr, or -1.
func find(regions []Region, addr uint64) int {
	i := sort.Search(len(regions), func(i int) bool { return regions[i].Base+regions[i].Size > addr })
	if i < len(regions) && regions[i].Base <= addr {
		return i
	}
	return -1
}

// extents are the data ranges of a sparse file (memfile.Extents), sorted and apart.
type extents []memfile.Extent

// data reports whether [off, off+n) holds data (any byte of it) rather than only a hole.
func (e extents) data(off, n int64) bool {
	i := sort.Search(len(e), func(i int) bool { return e[i].Off+e[i].Len > off })
	return i < len(e) && e[i].Off < off+n
}

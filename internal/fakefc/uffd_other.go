//go:build !linux

package fakefc

import (
	"encoding/json"
	"net"
)

// guestMemory stands for a Uffd-backed guest memory; there is no userfaultfd to pass.
type guestMemory struct{}

// sendUffd sends the regions without a descriptor: userfaultfd is Linux only.
func sendUffd(conn *net.UnixConn, size uint64, _ *release) (*guestMemory, error) {
	regions, _ := json.Marshal([]jobj{{{"base_host_virt_addr", 4096}, {"size", size},
		{"offset", 0}, {"page_size", 4096}, {"page_size_kib", 4096}}})
	_, err := conn.Write(regions)
	conn.Close()
	return &guestMemory{}, err
}

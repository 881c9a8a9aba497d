package agentwire

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// CodecName is the name of the codec: Connect sends "application/connect+smartvm" for streams
// and "application/smartvm" for unary calls.
const CodecName = "smartvm"

// payloader is a message whose bytes travel raw after its JSON.
type payloader interface {
	payload() *[]byte
}

// Codec is the Connect codec of the agent protocol. The zero value is ready to use.
type Codec struct{}

// Name returns CodecName.
func (Codec) Name() string { return CodecName }

// Marshal encodes msg.
func (c Codec) Marshal(msg any) ([]byte, error) { return c.MarshalAppend(nil, msg) }

// MarshalAppend appends the encoding of msg to dst.
func (Codec) MarshalAppend(dst []byte, msg any) ([]byte, error) {
	js, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", msg, err)
	}
	var raw []byte
	if p, ok := msg.(payloader); ok {
		raw = *p.payload()
	}
	if dst == nil {
		dst = make([]byte, 0, binary.MaxVarintLen64+len(js)+len(raw))
	}
	dst = binary.AppendUvarint(dst, uint64(len(js)))
	dst = append(dst, js...)
	return append(dst, raw...), nil
}

// Unmarshal decodes data into msg. The raw bytes are copied: Connect reuses data.
func (Codec) Unmarshal(data []byte, msg any) error {
	n, k := binary.Uvarint(data)
	if k <= 0 || n > uint64(len(data)-k) {
		return errors.New("decode message: bad length prefix")
	}
	js, rest := data[k:k+int(n)], data[k+int(n):]
	if err := json.Unmarshal(js, msg); err != nil {
		return fmt.Errorf("decode %T: %w", msg, err)
	}
	p, ok := msg.(payloader)
	switch {
	case ok:
		*p.payload() = append((*p.payload())[:0], rest...)
	case len(rest) > 0:
		return fmt.Errorf("decode %T: %d unexpected bytes after the message", msg, len(rest))
	}
	return nil
}

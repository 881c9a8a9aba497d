package fakefc

import (
	"bytes"
	"encoding/json"
)

// jobj is a JSON object whose keys keep their order, so responses list fields in the order
// Firecracker's serde structs do.
type jobj []jkv

type jkv struct {
	key string
	val any
}

// add appends a key; use it for keys that exist only in some releases.
func (o jobj) add(key string, val any) jobj { return append(o, jkv{key, val}) }

func (o jobj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, kv := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(kv.key)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		v, err := marshal(kv.val)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// marshal encodes v compactly without HTML escaping, as serde_json does.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// orNull returns v, or nil (JSON null) when p is nil.
func orNull[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

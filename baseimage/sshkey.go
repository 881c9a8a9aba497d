package baseimage

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"fmt"
)

// keyComment is the comment on generated keys.
const keyComment = "smartvm-base-image"

// sshKeyPair is a fresh ed25519 key in OpenSSH formats.
type sshKeyPair struct {
	authorizedKey []byte // "ssh-ed25519 AAAA… comment\n"
	privatePEM    []byte // "-----BEGIN OPENSSH PRIVATE KEY-----…", unencrypted
}

// newSSHKey generates an ed25519 key. The private key follows OpenSSH's PROTOCOL.key
// ("openssh-key-v1", cipher and KDF "none"), which ssh and ssh-keygen read.
func newSSHKey() (*sshKeyPair, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	const keyType = "ssh-ed25519"
	var pubBlob []byte
	pubBlob = appendString(pubBlob, []byte(keyType))
	pubBlob = appendString(pubBlob, pub)

	var check [4]byte
	if _, err := rand.Read(check[:]); err != nil {
		return nil, fmt.Errorf("generate key check bytes: %w", err)
	}
	var secret []byte
	secret = append(secret, check[:]...)
	secret = append(secret, check[:]...)
	secret = appendString(secret, []byte(keyType))
	secret = appendString(secret, pub)
	secret = appendString(secret, priv) // seed || public key, 64 bytes
	secret = appendString(secret, []byte(keyComment))
	for i := byte(1); len(secret)%8 != 0; i++ { // pad to the "none" cipher's block size
		secret = append(secret, i)
	}

	blob := []byte("openssh-key-v1\x00")
	blob = appendString(blob, []byte("none")) // cipher
	blob = appendString(blob, []byte("none")) // KDF
	blob = appendString(blob, nil)            // KDF options
	blob = binary.BigEndian.AppendUint32(blob, 1)
	blob = appendString(blob, pubBlob)
	blob = appendString(blob, secret)

	line := keyType + " " + base64.StdEncoding.EncodeToString(pubBlob) + " " + keyComment + "\n"
	return &sshKeyPair{
		authorizedKey: []byte(line),
		privatePEM:    pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: blob}),
	}, nil
}

// appendString appends an SSH wire-format string: a uint32 length, then the bytes.
func appendString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

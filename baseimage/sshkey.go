package baseimage

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// keyComment is the comment on generated keys.
const keyComment = "smartvm-base-image"

// sshKeyPair is a fresh ed25519 key in OpenSSH formats.
type sshKeyPair struct {
	authorizedKey []byte // "ssh-ed25519 AAAA… comment\n"
	privatePEM    []byte // "-----BEGIN OPENSSH PRIVATE KEY-----…", unencrypted
}

// newSSHKey generates an ed25519 key and marshals it with golang.org/x/crypto/ssh: the
// authorized_keys line, and the private key in OpenSSH's format, which ssh and ssh-keygen
// read.
func newSSHKey() (*sshKeyPair, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("ssh public key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, keyComment)
	if err != nil {
		return nil, fmt.Errorf("marshal ssh private key: %w", err)
	}
	line := ssh.MarshalAuthorizedKey(sshPub) // "ssh-ed25519 AAAA…\n"
	line = append(line[:len(line)-1], " "+keyComment+"\n"...)
	return &sshKeyPair{authorizedKey: line, privatePEM: pem.EncodeToMemory(block)}, nil
}

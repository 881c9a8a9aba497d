package baseimage

import (
	"bytes"
	"crypto/ed25519"
	"testing"

	"golang.org/x/crypto/ssh"
)

// The generated key pair parses back: the private key yields the authorized_keys line's key.
func TestSSHKeyRoundTrip(t *testing.T) {
	t.Parallel()
	k, err := newSSHKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, comment, _, rest, err := ssh.ParseAuthorizedKey(k.authorizedKey)
	if err != nil || comment != keyComment || len(rest) != 0 || pub.Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("authorized key %q: %v, comment %q", k.authorizedKey, err, comment)
	}
	if !bytes.HasSuffix(k.authorizedKey, []byte(" "+keyComment+"\n")) {
		t.Errorf("authorized key %q does not end in the comment and a newline", k.authorizedKey)
	}
	raw, err := ssh.ParseRawPrivateKey(k.privatePEM)
	if err != nil {
		t.Fatalf("private key: %v", err)
	}
	priv, ok := raw.(*ed25519.PrivateKey)
	if !ok {
		t.Fatalf("private key is a %T, want ed25519", raw)
	}
	derived, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(derived.Marshal(), pub.Marshal()) {
		t.Error("the private key does not belong to the authorized key")
	}
}

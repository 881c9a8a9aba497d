package jailer

import (
	"errors"
	"testing"

	"github.com/smartvm/smartvm/fcapi"
)

func TestParseVersion(t *testing.T) {
	v, err := ParseVersion("Jailer v1.7.0\n\n")
	if err != nil || v != (fcapi.Version{Major: 1, Minor: 7}) {
		t.Errorf("ParseVersion = %v, %v", v, err)
	}
	for _, bad := range []string{"Firecracker v1.7.0", "", "Jailer 1.x"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) succeeded", bad)
		}
	}
	a, b := fcapi.Version{Major: 1, Minor: 7}, fcapi.Version{Major: 1, Minor: 10, Patch: 1}
	if err := CheckVersion("j", a, "f", a); err != nil {
		t.Error(err)
	}
	if err := CheckVersion("j", b, "f", a); !errors.Is(err, ErrVersionMismatch) {
		t.Errorf("CheckVersion = %v, want ErrVersionMismatch", err)
	}
}

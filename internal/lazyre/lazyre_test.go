package lazyre

import "testing"

func TestNewCompilesOnce(t *testing.T) {
	re := New(`^[a-z]{1,3}$`)
	a, b := re(), re()
	if a != b {
		t.Error("two calls compiled the pattern twice")
	}
	if !a.MatchString("abc") || a.MatchString("abcd") {
		t.Errorf("pattern %s matches wrongly", a)
	}
}

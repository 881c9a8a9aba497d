// Package mergepatch applies JSON merge patches (RFC 7396) to decoded JSON values.
package mergepatch

import "maps"

// Apply returns target with patch merged into it: a patch object's members replace or, when
// null, delete the target's, recursively; any other patch replaces the target. Neither
// argument is modified.
func Apply(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if ok {
		t = maps.Clone(t)
	} else {
		t = map[string]any{}
	}
	for k, val := range p {
		if val == nil {
			delete(t, k)
			continue
		}
		t[k] = Apply(t[k], val)
	}
	return t
}

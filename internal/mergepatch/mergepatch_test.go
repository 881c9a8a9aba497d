package mergepatch

import (
	"encoding/json"
	"testing"
)

// TestApply runs examples of RFC 7396, appendix A.
func TestApply(t *testing.T) {
	for _, tc := range []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	} {
		var target, patch any
		if err := json.Unmarshal([]byte(tc.target), &target); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(tc.patch), &patch); err != nil {
			t.Fatal(err)
		}
		before, _ := json.Marshal(target)
		got, _ := json.Marshal(Apply(target, patch))
		if string(got) != tc.want {
			t.Errorf("Apply(%s, %s) = %s, want %s", tc.target, tc.patch, got, tc.want)
		}
		if after, _ := json.Marshal(target); string(after) != string(before) {
			t.Errorf("Apply changed its target: %s, was %s", after, before)
		}
	}
}

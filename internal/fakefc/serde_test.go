package fakefc

import (
	"testing"
)

// The expected messages below were produced by real Firecracker v1.14.2 for the same bodies
// (without the "An error occurred when deserializing the json body of a request: " prefix).
func TestDecodeMatchesSerde(t *testing.T) {
	doc, err := loadSpec("1.14.2")
	if err != nil {
		t.Fatal(err)
	}
	body := func(path, method string) *rtype {
		t.Helper()
		typ := bodyType(method+" "+path, doc.Paths.Find(path).GetOperation(method))
		if typ == nil {
			t.Fatalf("no body type for %s %s", method, path)
		}
		return typ
	}
	actions := body("/actions", "PUT")
	boot := body("/boot-source", "PUT")
	machine := body("/machine-config", "PUT")
	drive := body("/drives/{drive_id}", "PUT")
	vsock := body("/vsock", "PUT")
	netif := body("/network-interfaces/{iface_id}", "PUT")
	logger := body("/logger", "PUT")
	load := body("/snapshot/load", "PUT")
	tests := []struct {
		typ  *rtype
		in   string
		want string // "" when the body is valid
	}{
		{actions, `{"action_type":"InstanceStart"}`, ""},
		{actions, `["InstanceStart"]`, ""},
		{actions, `{"action_type":"Flush\u004detrics"}`, ""},
		{actions, `{"action_type":"Bogus"}`, "unknown variant `Bogus`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel` at line 1 column 22"},
		{actions, `{"action_type":"InstanceStart","x":1}`, "unknown field `x`, expected `action_type` at line 1 column 34"},
		{actions, `{"zzzz":1,`, "unknown field `zzzz`, expected `action_type` at line 1 column 7"},
		{actions, `{}`, "missing field `action_type` at line 1 column 2"},
		{actions, `[]`, "invalid length 0, expected struct ActionBody with 1 element at line 1 column 2"},
		{actions, `null`, "invalid type: null, expected struct ActionBody at line 1 column 4"},
		{actions, `1`, "invalid type: integer `1`, expected struct ActionBody at line 1 column 1"},
		{actions, ` `, "EOF while parsing a value at line 1 column 1"},
		{actions, `{"action_type":"FlushMetrics"} x`, "trailing characters at line 1 column 32"},
		{actions, "{\"action_type\":\"FlushMetrics\"}\n", ""},
		{actions, `{"action_type":"FlushMetrics","action_type":"FlushMetrics"}`, "duplicate field `action_type` at line 1 column 43"},
		{actions, "{\n\"action_type\":\n\"Foo\"}", "unknown variant `Foo`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel` at line 3 column 5"},
		{actions, `{"action_type":"FlushMetrics",}`, "trailing comma at line 1 column 31"},
		{actions, `{"action_type" "FlushMetrics"}`, "expected `:` at line 1 column 16"},
		{actions, `{action_type:1}`, "key must be a string at line 1 column 2"},
		{actions, `{"action_type":true}`, "expected value at line 1 column 16"},
		{actions, `{"action_type":null}`, "expected value at line 1 column 16"},
		{actions, `{"action_type":{"x":1}}`, "unknown variant `x`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel` at line 1 column 19"},
		{actions, `{"action_type":["x"]}`, "expected value at line 1 column 16"},
		{actions, ` {"action_type" : "Foo" } `, "unknown variant `Foo`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel` at line 1 column 23"},
		{actions, `{"action_type":"InstanceStart"}{`, "trailing characters at line 1 column 32"},
		{actions, `{"action_type": 1.5}`, "expected value at line 1 column 17"},
		{boot, `{"kernel_image_path":1}`, "invalid type: integer `1`, expected a string at line 1 column 22"},
		{boot, `{"kernel_image_path":-1}`, "invalid type: integer `-1`, expected a string at line 1 column 23"},
		{boot, `{"kernel_image_path":true}`, "invalid type: boolean `true`, expected a string at line 1 column 25"},
		{boot, `{"kernel_image_path":[1]}`, "invalid type: sequence, expected a string at line 1 column 21"},
		{boot, `{"kernel_image_path":{}}`, "invalid type: map, expected a string at line 1 column 21"},
		{boot, `{"kernel_image_path":null}`, "invalid type: null, expected a string at line 1 column 25"},
		{boot, `{"kernel_image_path":"/k","boot_args":null,"initrd_path":null}`, ""},
		{boot, `{"kernel_image_path":"/etc/hostname","boot_args":1e5}`, "invalid type: floating point `100000.0`, expected a string at line 1 column 52"},
		{boot, `{"kernel_image_path":"/etc/hostname","boot_args":"\x"}`, "invalid escape at line 1 column 52"},
		{boot, "{\"kernel_image_path\":\"/etc/hostname\",\"boot_args\":\"a\tb\"}", "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 52"},
		{boot, `{"kernel_image_path":"/etc/hostname","boot_args":tru}`, "expected ident at line 1 column 53"},
		{boot, `{"kernel_image_path":"/etc/hostname","boot_args":01}`, "invalid number at line 1 column 51"},
		{boot, `{"zzzz":1}`, "unknown field `zzzz`, expected one of `kernel_image_path`, `initrd_path`, `boot_args` at line 1 column 7"},
		{boot, `[]`, "invalid length 0, expected struct BootSourceConfig with 3 elements at line 1 column 2"},
		{machine, `{"vcpu_count":1.0,"mem_size_mib":128}`, "invalid type: floating point `1.0`, expected u8 at line 1 column 17"},
		{machine, `{"vcpu_count":"1","mem_size_mib":128}`, "invalid type: string \"1\", expected u8 at line 1 column 17"},
		{machine, `{"vcpu_count":1,"mem_size_mib":99999999999999999999999}`, "invalid type: floating point `1e23`, expected usize at line 1 column 54"},
		{machine, `{"vcpu_count":1,"mem_size_mib":1,"smt":1}`, "invalid type: integer `1`, expected a boolean at line 1 column 40"},
		{machine, `{"vcpu_count":1,"mem_size_mib":128,"smt":null}`, "invalid type: null, expected a boolean at line 1 column 45"},
		{machine, `{"vcpu_count":1,"mem_size_mib":128,"huge_pages":null}`, "expected value at line 1 column 49"},
		{machine, `{"vcpu_count":null,"mem_size_mib":128}`, "invalid type: null, expected u8 at line 1 column 18"},
		{machine, `{"vcpu_count":256,"mem_size_mib":128}`, "invalid value: integer `256`, expected u8 at line 1 column 17"},
		{machine, `{"vcpu_count":-1,"mem_size_mib":128}`, "invalid value: integer `-1`, expected u8 at line 1 column 16"},
		{machine, `[1,128]`, ""},
		{machine, `[1,128,true,"T2",false,"None",7]`, "trailing characters at line 1 column 31"},
		{machine, `{"zzzz":1}`, "unknown field `zzzz`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages` at line 1 column 7"},
		{machine, `{"huge_pages":"zz"}`, "unknown variant `zz`, expected `None` or `2M` at line 1 column 18"},
		{machine, `{"cpu_template":"zz"}`, "unknown variant `zz`, expected one of `C3`, `T2`, `T2S`, `None`, `T2CL`, `T2A` at line 1 column 20"},
		{drive, `{"drive_id":"a","path_on_host":"/x","is_root_device":false,"rate_limiter":{"bandwidth":{"size":1}}}`, "missing field `refill_time` at line 1 column 97"},
		{drive, `{"drive_id":"a","path_on_host":"/x","is_root_device":false,"rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"zz":1}}}`, ""},
		{drive, `{"drive_id":"a","path_on_host":"/x","is_root_device":false,"rate_limiter":{"bandwidth":null}}`, ""},
		{drive, `{"drive_id":"a","path_on_host":"/x","is_root_device":false,"rate_limiter":{"zz":null}}`, "unknown field `zz`, expected `bandwidth` or `ops` at line 1 column 79"},
		{drive, `{"drive_id":"a"`, "EOF while parsing an object at line 1 column 15"},
		{drive, `{"zzzz":1}`, "unknown field `zzzz`, expected one of `drive_id`, `partuuid`, `is_root_device`, `cache_type`, `is_read_only`, `path_on_host`, `rate_limiter`, `io_engine`, `socket` at line 1 column 7"},
		{vsock, `[]`, "invalid length 1, expected struct VsockDeviceConfig with 3 elements at line 1 column 2"},
		{netif, `{"iface_id":"n","host_dev_name":"fkfctap0","guest_mac":"zz"}`, "The provided MAC address is invalid. at line 1 column 60"},
		{netif, `{"iface_id":"n","host_dev_name":"t","guest_mac":"06:00:AC:10:00:02"}`, ""},
		{logger, `{"level": "zz"}`, "Invalid LevelFilter at line 1 column 15"},
		{logger, `{"level":"warn"}`, ""},
		{load, `{"zzzz":1}`, "unknown field `zzzz`, expected one of `snapshot_path`, `mem_file_path`, `mem_backend`, `enable_diff_snapshots`, `track_dirty_pages`, `resume_vm`, `network_overrides` at line 1 column 7"},
		{load, `{"snapshot_path":"/s","mem_backend":{}}`, "missing field `backend_path` at line 1 column 38"},
		{load, `{"snapshot_path":"/s","network_overrides":[{"iface_id":"a","host_dev_name":"b","x":1}]}`, ""},
	}
	for _, tc := range tests {
		_, err := decode([]byte(tc.in), tc.typ)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("decode %s as %s:\n got: %s\nwant: %s", tc.in, tc.typ.name, got, tc.want)
		}
	}
}

func TestRustFloat(t *testing.T) {
	for f, want := range map[float64]string{1: "1.0", 1.5: "1.5", 1e5: "100000.0", 1e23: "1e23", 1.5e-7: "1.5e-7", 0.001: "0.001"} {
		if got := rustFloat(f); got != want {
			t.Errorf("rustFloat(%v) = %q, want %q", f, got, want)
		}
	}
}

package testguest

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// sourceLines returns guest.S reduced to the form of inst.asm, blank lines dropped.
func sourceLines(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("guest.S")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(src), "\n") {
		if l = normalizeLine(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// normalizeLine drops the comment after an unquoted '#' and collapses runs of blanks.
func normalizeLine(line string) string {
	quoted := false
	for i := 0; i < len(line); i++ {
		switch line[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		case '#':
			if !quoted {
				line = line[:i]
			}
		}
	}
	return strings.Join(strings.Fields(line), " ")
}

func TestListingMatchesSource(t *testing.T) {
	src := sourceLines(t)
	var listing []string
	for _, in := range program() {
		listing = append(listing, in.asm)
	}
	for i := 0; i < max(len(src), len(listing)); i++ {
		var s, l string
		if i < len(src) {
			s = src[i]
		}
		if i < len(listing) {
			l = listing[i]
		}
		if s != l {
			t.Fatalf("line %d differs: guest.S has %q, guest.go's listing has %q", i+1, s, l)
		}
	}
}

// TestMatchesBinutils assembles guest.S with as and ld and checks that the linked code, the
// entry point and every label equal what the Go listing produces.
func TestMatchesBinutils(t *testing.T) {
	for _, tool := range []string{"as", "ld"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs binutils (%s) to assemble guest.S: %v", tool, err)
		}
	}
	dir := t.TempDir()
	obj, exe := filepath.Join(dir, "guest.o"), filepath.Join(dir, "guest")
	for _, args := range [][]string{
		{"as", "--64", "-o", obj, "guest.S"},
		{"ld", "-static", "-nostdlib", "--build-id=none", "-Ttext=0x1000000", "-o", exe, obj},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	text, err := f.Section(".text").Data()
	if err != nil {
		t.Fatal(err)
	}
	code, labels, err := assemble(program(), LoadAddress)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(text, code) {
		for i := range min(len(text), len(code)) {
			if text[i] != code[i] {
				t.Fatalf("code differs at offset %#x: binutils % x, Go % x", i, text[i:min(i+8, len(text))], code[i:min(i+8, len(code))])
			}
		}
		t.Fatalf("code lengths differ: binutils %d bytes, Go %d", len(text), len(code))
	}
	if f.Entry != LoadAddress {
		t.Errorf("ld entry %#x, want %#x", f.Entry, LoadAddress)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, s := range syms {
		if addr, ok := labels[s.Name]; ok {
			seen++
			if s.Value != addr {
				t.Errorf("label %s: binutils %#x, Go %#x", s.Name, s.Value, addr)
			}
		}
	}
	if seen != len(labels) {
		t.Errorf("found %d of the listing's %d labels in ld's symbol table", seen, len(labels))
	}
}

func TestELF(t *testing.T) {
	img := ELF()
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Fatalf("header: class %v data %v machine %v type %v", f.Class, f.Data, f.Machine, f.Type)
	}
	if f.Entry != LoadAddress {
		t.Errorf("entry %#x, want %#x", f.Entry, LoadAddress)
	}
	// Firecracker's loader rejects other program header sizes and offsets inside the header.
	if phentsize, phoff := uint16(img[54])|uint16(img[55])<<8, img[32]; phentsize != 56 || phoff < 64 {
		t.Errorf("e_phentsize %d e_phoff %d", phentsize, phoff)
	}
	if len(f.Progs) != 1 {
		t.Fatalf("%d program headers, want 1", len(f.Progs))
	}
	p := f.Progs[0]
	if p.Type != elf.PT_LOAD || p.Paddr != LoadAddress || p.Vaddr != LoadAddress || p.Filesz != p.Memsz || p.Filesz == 0 || p.Flags != elf.PF_R|elf.PF_X {
		t.Fatalf("segment %+v", p.ProgHeader)
	}
	if p.Off%p.Align != p.Vaddr%p.Align {
		t.Errorf("segment offset %#x and address %#x disagree modulo alignment %#x", p.Off, p.Vaddr, p.Align)
	}
	if uint64(len(img)) < p.Off+p.Filesz {
		t.Fatalf("segment runs past the file's end")
	}
	seg := img[p.Off : p.Off+p.Filesz]
	text := f.Section(".text")
	if text == nil || text.Addr != LoadAddress || text.Offset != p.Off || text.Size != p.Filesz {
		t.Fatalf(".text section %+v does not cover the segment", text)
	}
	code, _, err := assemble(program(), LoadAddress)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(seg, code) {
		t.Error("segment does not hold the assembled listing")
	}
	for _, s := range []string{ModeKey, MMIODeviceKey, ModeVsockEcho, HelloLine + "\n", HaltLine + "\n", ReadyLine + "\n", UnknownModeLine + "\n", TickPrefix, VsockReadyLine + "\n", NoVsockLine + "\n"} {
		if !bytes.Contains(seg, append([]byte(s), 0)) {
			t.Errorf("segment lacks %q", s)
		}
	}
	// ELF returns a copy.
	img[0] = 0
	if ELF()[0] != 0x7f {
		t.Error("ELF shares its bytes between calls")
	}
}

func TestAssembleRelaxesJumps(t *testing.T) {
	pad := op("pad", make([]byte, 200)...)
	prog := []inst{
		label("a"),
		jump("jz", "b"),  // forward past 200 bytes: rel32
		jump("jmp", "b"), // rel32
		pad,
		label("b"),
		jump("jne", "b"), // short, backwards
		jump("jmp", "a"), // backwards past 200 bytes: rel32
	}
	code, labels, err := assemble(prog, 0x1000)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0x0f, 0x84, 205, 0, 0, 0, 0xe9, 200, 0, 0, 0}
	want = append(want, make([]byte, 200)...)
	want = append(want, 0x75, 0xfe, 0xe9, 0x26, 0xff, 0xff, 0xff) // -(211+2+5) = -0xda
	if !bytes.Equal(code, want) {
		t.Errorf("code\n% x\nwant\n% x", code, want)
	}
	if labels["b"] != 0x1000+211 {
		t.Errorf("label b at %#x", labels["b"])
	}
	if _, _, err := assemble([]inst{call("nowhere")}, 0); err == nil || !strings.Contains(err.Error(), "nowhere") {
		t.Errorf("undefined label: err %v", err)
	}
	if _, _, err := assemble([]inst{jump("jmp", "nowhere")}, 0); err == nil {
		t.Error("undefined jump target: no error")
	}
}

func TestBootArgs(t *testing.T) {
	for _, tc := range []struct{ mode, want string }{
		{ModeCounter, "console=ttyS0 reboot=k panic=1 smartvm.test=counter"},
		{ModeHalt, "console=ttyS0 reboot=k panic=1 smartvm.test=halt"},
		{"", "console=ttyS0 reboot=k panic=1 smartvm.test=hello"},
	} {
		if got := BootArgs(tc.mode); got != tc.want {
			t.Errorf("BootArgs(%q) = %q, want %q", tc.mode, got, tc.want)
		}
	}
}

func TestModeFromCmdline(t *testing.T) {
	for _, tc := range []struct {
		cmdline, mode string
		known         bool
	}{
		{"", ModeHello, true},
		{"console=ttyS0 reboot=k panic=1", ModeHello, true},
		{BootArgs(ModeCAD), ModeCAD, true},
		{BootArgs(ModeCounter) + " pci=off", ModeCounter, true},
		{"smartvm.test=halt smartvm.test=cad", ModeHalt, true},
		{"xsmartvm.test=halt", ModeHello, true},
		{"a  smartvm.test=halt", ModeHalt, true},
		{"smartvm.test=halting", "halting", false},
		{"smartvm.test=", "", false},
	} {
		mode, known := ModeFromCmdline(tc.cmdline)
		if mode != tc.mode || known != tc.known {
			t.Errorf("ModeFromCmdline(%q) = %q, %v; want %q, %v", tc.cmdline, mode, known, tc.mode, tc.known)
		}
	}
}

func TestLines(t *testing.T) {
	if got := TickLine(42); got != "smartvm-testguest: tick 42" {
		t.Errorf("TickLine(42) = %q", got)
	}
	for _, tc := range []struct {
		line string
		n    uint64
		ok   bool
	}{
		{"smartvm-testguest: tick 0\n", 0, true},
		{"smartvm-testguest: tick 17", 17, true},
		{"smartvm-testguest: tick 017", 0, false},
		{"smartvm-testguest: tick ", 0, false},
		{HelloLine, 0, false},
	} {
		n, ok := ParseTick(tc.line)
		if ok != tc.ok || (ok && n != tc.n) {
			t.Errorf("ParseTick(%q) = %d, %v; want %d, %v", tc.line, n, ok, tc.n, tc.ok)
		}
	}
	want := map[string]string{ModeHello: HelloLine, ModeHalt: HaltLine, ModeCounter: TickLine(0), ModeCAD: ReadyLine, ModeVsockEcho: VsockReadyLine, "bogus": UnknownModeLine}
	for mode, line := range want {
		if got := FirstLine(mode); got != line {
			t.Errorf("FirstLine(%q) = %q, want %q", mode, got, line)
		}
	}
	if !slices.Equal(Modes(), []string{ModeHello, ModeHalt, ModeCounter, ModeCAD, ModeVsockEcho}) {
		t.Errorf("Modes() = %q", Modes())
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(p); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ELF()) {
		t.Error("written file differs from ELF()")
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the kernel", len(entries))
	}

	err = Write(filepath.Join(dir, "missing", "vmlinux"))
	if err == nil || !strings.Contains(err.Error(), "write test guest") || !os.IsNotExist(err) && !strings.Contains(err.Error(), "no such file") {
		t.Errorf("Write into a missing directory: err %v", err)
	}
	if err := Write(dir); err == nil {
		t.Error("Write over a directory: no error")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("failed writes left files: %v", entries)
	}
}

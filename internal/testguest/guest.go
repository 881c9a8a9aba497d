package testguest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Modes: the values of smartvm.test= that the guest knows.
const (
	ModeHello   = "hello"
	ModeHalt    = "halt"
	ModeCounter = "counter"
	ModeCAD     = "cad"
	// ModeVsockEcho drives the virtio-mmio vsock device: it echoes every byte of every
	// connection made to VsockEchoPort, and calls the host back on VsockEchoPort.
	ModeVsockEcho = "vsock-echo"
)

// VsockEchoPort is the vsock port the vsock-echo guest accepts connections on, and the host
// port it connects to: once its driver is up, and again about VsockCallbackPause after each
// time Firecracker turns the connection down or ends it.
const VsockEchoPort = 52

// VsockCallbackPause is how long the vsock-echo guest waits before it calls the host again.
const VsockCallbackPause = 50 * time.Millisecond

// The serial output, one line per constant; the guest ends each with "\n".
const (
	HelloLine       = "smartvm-testguest: hello"
	HaltLine        = "smartvm-testguest: halt"
	ReadyLine       = "smartvm-testguest: ready"
	VsockReadyLine  = "smartvm-testguest: vsock ready"
	NoVsockLine     = "smartvm-testguest: no vsock device"
	UnknownModeLine = "smartvm-testguest: unknown mode"
	// TickPrefix starts each counter line; the tick number in decimal follows (TickLine).
	TickPrefix = "smartvm-testguest: tick "
)

// ModeKey is the kernel command-line key the guest looks for: a word "smartvm.test=<mode>".
const ModeKey = "smartvm.test="

// BaseBootArgs is the command line BootArgs starts from, Firecracker's recommended one.
const BaseBootArgs = "console=ttyS0 reboot=k panic=1"

// LoadAddress is where the guest is linked and loaded, and its entry point.
const LoadAddress = 0x1000000

// BootArgs returns the kernel command line that runs the guest in mode:
// "console=ttyS0 reboot=k panic=1 smartvm.test=<mode>". An empty mode means ModeHello.
func BootArgs(mode string) string {
	if mode == "" {
		mode = ModeHello
	}
	return BaseBootArgs + " " + ModeKey + mode
}

// Modes returns the modes the guest knows, ModeHello first.
func Modes() []string { return []string{ModeHello, ModeHalt, ModeCounter, ModeCAD, ModeVsockEcho} }

// ModeFromCmdline returns the mode the guest runs for a kernel command line, parsed as the
// guest parses it: the value of the first space-separated word that starts with ModeKey, or
// ModeHello when there is none. known is false when that value is not one of Modes; the guest
// then prints UnknownModeLine and resets.
func ModeFromCmdline(cmdline string) (mode string, known bool) {
	mode = ModeHello
	for _, w := range strings.Split(cmdline, " ") {
		if v, ok := strings.CutPrefix(w, ModeKey); ok {
			mode = v
			break
		}
	}
	for _, m := range Modes() {
		if m == mode {
			return mode, true
		}
	}
	return mode, false
}

// FirstLine returns the first line (without "\n") the guest prints in mode: the marker that
// shows it booted. Unknown modes give UnknownModeLine.
func FirstLine(mode string) string {
	switch mode {
	case ModeHello:
		return HelloLine
	case ModeHalt:
		return HaltLine
	case ModeCounter:
		return TickLine(0)
	case ModeCAD:
		return ReadyLine
	case ModeVsockEcho:
		return VsockReadyLine
	}
	return UnknownModeLine
}

// TickLine returns the counter line for tick n, without "\n".
func TickLine(n uint64) string { return TickPrefix + strconv.FormatUint(n, 10) }

// ParseTick returns the tick number of a counter line (with or without its "\n"); ok is false
// when line is not one.
func ParseTick(line string) (n uint64, ok bool) {
	s, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), TickPrefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil && s == strconv.FormatUint(n, 10)
}

// ELF returns the guest kernel: an x86-64 ELF executable with one PT_LOAD segment at
// LoadAddress. Each call returns a new slice.
func ELF() []byte { return bytes.Clone(image()) }

// Write writes the guest kernel (ELF) to path with mode 0644, replacing any file there. It
// writes a temporary file in the same directory and renames it, so path never holds a partial
// kernel.
func Write(path string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write test guest %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("write test guest %s: %w", path, err)
		}
	}()
	if _, err := f.Write(image()); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// image builds the ELF once.
var image = sync.OnceValue(func() []byte {
	code, _, err := assemble(program, LoadAddress)
	if err != nil {
		panic("testguest: listing does not assemble: " + err.Error()) // a listing bug; tests catch it
	}
	return buildELF(code)
})

// ELF layout: the file header, one program header, the code at codeOffset, then the section
// name table and three section headers (null, .text, .shstrtab) so that objdump -d works.
const (
	ehdrSize   = 64
	phdrSize   = 56
	shdrSize   = 64
	codeOffset = 0x80
	shstrtab   = "\x00.text\x00.shstrtab\x00"
)

func buildELF(code []byte) []byte {
	le := binary.LittleEndian
	strOff := uint64(codeOffset + len(code))
	shOff := (strOff + uint64(len(shstrtab)) + 7) &^ 7

	b := make([]byte, 0, shOff+3*shdrSize)
	// Elf64_Ehdr
	b = append(b, 0x7f, 'E', 'L', 'F', 2 /* ELFCLASS64 */, 1 /* ELFDATA2LSB */, 1 /* EV_CURRENT */, 0 /* ELFOSABI_NONE */)
	b = append(b, make([]byte, 8)...) // ABI version and padding
	b = le.AppendUint16(b, 2)         // e_type: ET_EXEC
	b = le.AppendUint16(b, 62)        // e_machine: EM_X86_64
	b = le.AppendUint32(b, 1)         // e_version
	b = le.AppendUint64(b, LoadAddress)
	b = le.AppendUint64(b, ehdrSize) // e_phoff
	b = le.AppendUint64(b, shOff)    // e_shoff
	b = le.AppendUint32(b, 0)        // e_flags
	b = le.AppendUint16(b, ehdrSize)
	b = le.AppendUint16(b, phdrSize)
	b = le.AppendUint16(b, 1) // e_phnum
	b = le.AppendUint16(b, shdrSize)
	b = le.AppendUint16(b, 3) // e_shnum
	b = le.AppendUint16(b, 2) // e_shstrndx
	// Elf64_Phdr: PT_LOAD, R+X, the code at LoadAddress (virtual and physical)
	b = le.AppendUint32(b, 1)
	b = le.AppendUint32(b, 5)
	b = le.AppendUint64(b, codeOffset)
	b = le.AppendUint64(b, LoadAddress)
	b = le.AppendUint64(b, LoadAddress)
	b = le.AppendUint64(b, uint64(len(code))) // p_filesz
	b = le.AppendUint64(b, uint64(len(code))) // p_memsz
	b = le.AppendUint64(b, 16)                // p_align
	b = append(b, make([]byte, codeOffset-len(b))...)
	b = append(b, code...)
	b = append(b, shstrtab...)
	b = append(b, make([]byte, int(shOff)-len(b))...)
	// Elf64_Shdr: null; .text (PROGBITS, ALLOC+EXECINSTR); .shstrtab (STRTAB)
	b = append(b, make([]byte, shdrSize)...)
	b = appendShdr(b, 1, 1, 6, LoadAddress, codeOffset, uint64(len(code)), 1)
	b = appendShdr(b, 7, 3, 0, 0, strOff, uint64(len(shstrtab)), 1)
	return b
}

func appendShdr(b []byte, name, typ uint32, flags, addr, off, size, align uint64) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, name)
	b = le.AppendUint32(b, typ)
	b = le.AppendUint64(b, flags)
	b = le.AppendUint64(b, addr)
	b = le.AppendUint64(b, off)
	b = le.AppendUint64(b, size)
	b = le.AppendUint32(b, 0) // sh_link
	b = le.AppendUint32(b, 0) // sh_info
	b = le.AppendUint64(b, align)
	return le.AppendUint64(b, 0) // sh_entsize
}

// program is guest.S, line for line (comments aside), with each instruction's encoding.
var program = []inst{
	directive(".code64"),
	directive(".text"),
	directive(".globl _start"),
	label("_start"),
	op("cli", 0xfa),
	op("cld", 0xfc),
	op("mov 0x228(%rsi), %ebx", 0x8b, 0x9e, 0x28, 0x02, 0x00, 0x00), // %rbx = command line (cmd_line_ptr)
	op("test %ebx, %ebx", 0x85, 0xdb),
	jump("jz", "hello"),
	label("word"), // %rbx: the next character of the command line
	op("mov (%rbx), %al", 0x8a, 0x03),
	op("test %al, %al", 0x84, 0xc0),
	jump("jz", "hello"), // end of line and no smartvm.test= word: the default
	op("cmp $0x20, %al", 0x3c, 0x20),
	jump("je", "next"), // a space between words
	leaRIP("key", "%rdi"),
	op("mov %rbx, %rsi", 0x48, 0x89, 0xde),
	call("prefix"),
	jump("je", "found"),
	label("skip"), // not our word: skip to its end
	op("inc %rbx", 0x48, 0xff, 0xc3),
	op("mov (%rbx), %al", 0x8a, 0x03),
	op("test %al, %al", 0x84, 0xc0),
	jump("jz", "hello"),
	op("cmp $0x20, %al", 0x3c, 0x20),
	jump("jne", "skip"),
	label("next"),
	op("inc %rbx", 0x48, 0xff, 0xc3),
	jump("jmp", "word"),
	label("found"),
	op("mov %rsi, %rbx", 0x48, 0x89, 0xf3), // %rbx = the mode, just past "smartvm.test="
	leaRIP("name_hello", "%rdi"),
	call("mode"),
	jump("je", "hello"),
	leaRIP("name_halt", "%rdi"),
	call("mode"),
	jump("je", "halt"),
	leaRIP("name_counter", "%rdi"),
	call("mode"),
	jump("je", "counter"),
	leaRIP("name_cad", "%rdi"),
	call("mode"),
	jump("je", "cad"),
	leaRIP("line_unknown", "%rsi"),
	call("puts"),
	jump("jmp", "reset"),

	label("hello"),
	leaRIP("line_hello", "%rsi"),
	call("puts"),
	jump("jmp", "reset"),

	label("halt"),
	leaRIP("line_halt", "%rsi"),
	call("puts"),
	jump("jmp", "hang"),

	label("cad"),
	leaRIP("line_ready", "%rsi"),
	call("puts"),
	label("cad_poll"),
	call("kbd"),
	op("pause", 0xf3, 0x90),
	jump("jmp", "cad_poll"),

	label("counter"),
	op("xor %r12d, %r12d", 0x45, 0x31, 0xe4), // %r12 = the tick number
	label("tick"),
	leaRIP("line_tick", "%rsi"),
	call("puts"),
	op("mov %r12, %rax", 0x4c, 0x89, 0xe0),
	call("putu"),
	op("mov $0xa, %al", 0xb0, 0x0a), // "\n"
	op("out %al, (%dx)", 0xee),
	op("inc %r12", 0x49, 0xff, 0xc4),
	op("rdtsc", 0x0f, 0x31),
	op("shl $32, %rdx", 0x48, 0xc1, 0xe2, 0x20),
	op("or %rdx, %rax", 0x48, 0x09, 0xd0),
	op("lea 13000000(%rax), %r13", 0x4c, 0x8d, 0xa8, 0x40, 0x5d, 0xc6, 0x00), // deadline: 5 ms at 2.6 GHz
	label("tick_wait"),
	call("kbd"),
	op("pause", 0xf3, 0x90),
	op("rdtsc", 0x0f, 0x31),
	op("shl $32, %rdx", 0x48, 0xc1, 0xe2, 0x20),
	op("or %rdx, %rax", 0x48, 0x09, 0xd0),
	op("cmp %r13, %rax", 0x4c, 0x39, 0xe8),
	jump("jb", "tick_wait"),
	jump("jmp", "tick"),

	// kbd: reset when the i8042 holds a byte (Ctrl-Alt-Del was sent).
	label("kbd"),
	op("in $0x64, %al", 0xe4, 0x64),
	op("test $1, %al", 0xa8, 0x01),
	jump("jnz", "reset"),
	op("ret", 0xc3),

	label("reset"),
	op("mov $0xfe, %al", 0xb0, 0xfe),
	op("out %al, $0x64", 0xe6, 0x64), // pulse the CPU reset line
	label("hang"),
	op("cli", 0xfa),
	op("hlt", 0xf4),
	jump("jmp", "hang"),

	// prefix: ZF=1 when the text at %rsi starts with the string at %rdi; %rsi then points past it.
	label("prefix"),
	op("mov (%rdi), %al", 0x8a, 0x07),
	op("test %al, %al", 0x84, 0xc0),
	jump("jz", "prefix_ret"),
	op("cmp (%rsi), %al", 0x3a, 0x06),
	jump("jne", "prefix_ret"),
	op("inc %rdi", 0x48, 0xff, 0xc7),
	op("inc %rsi", 0x48, 0xff, 0xc6),
	jump("jmp", "prefix"),
	label("prefix_ret"),
	op("ret", 0xc3),

	// mode: ZF=1 when the word at %rbx is the string at %rdi.
	label("mode"),
	op("mov %rbx, %rsi", 0x48, 0x89, 0xde),
	call("prefix"),
	jump("jne", "mode_ret"),
	op("mov (%rsi), %al", 0x8a, 0x06),
	op("test %al, %al", 0x84, 0xc0),
	jump("jz", "mode_ret"),
	op("cmp $0x20, %al", 0x3c, 0x20),
	label("mode_ret"),
	op("ret", 0xc3),

	// puts: write the NUL-terminated string at %rsi to the serial port; leaves %dx = 0x3f8.
	label("puts"),
	op("mov $0x3f8, %dx", 0x66, 0xba, 0xf8, 0x03),
	label("puts_loop"),
	op("lodsb", 0xac),
	op("test %al, %al", 0x84, 0xc0),
	jump("jz", "puts_ret"),
	op("out %al, (%dx)", 0xee),
	jump("jmp", "puts_loop"),
	label("puts_ret"),
	op("ret", 0xc3),

	// putu: write %rax in decimal to the serial port, the digits built on the stack.
	label("putu"),
	op("mov %rsp, %rdi", 0x48, 0x89, 0xe7),
	op("mov $10, %ecx", 0xb9, 0x0a, 0x00, 0x00, 0x00),
	label("putu_div"),
	op("xor %edx, %edx", 0x31, 0xd2),
	op("div %rcx", 0x48, 0xf7, 0xf1),
	op("add $0x30, %dl", 0x80, 0xc2, 0x30), // "0" + the digit
	op("dec %rsp", 0x48, 0xff, 0xcc),
	op("mov %dl, (%rsp)", 0x88, 0x14, 0x24),
	op("test %rax, %rax", 0x48, 0x85, 0xc0),
	jump("jnz", "putu_div"),
	op("mov $0x3f8, %dx", 0x66, 0xba, 0xf8, 0x03),
	label("putu_out"),
	op("mov (%rsp), %al", 0x8a, 0x04, 0x24),
	op("inc %rsp", 0x48, 0xff, 0xc4),
	op("out %al, (%dx)", 0xee),
	op("cmp %rdi, %rsp", 0x48, 0x39, 0xfc),
	jump("jne", "putu_out"),
	op("ret", 0xc3),

	label("key"),
	asciz(ModeKey),
	label("name_hello"),
	asciz(ModeHello),
	label("name_halt"),
	asciz(ModeHalt),
	label("name_counter"),
	asciz(ModeCounter),
	label("name_cad"),
	asciz(ModeCAD),
	label("line_hello"),
	asciz(HelloLine + "\n"),
	label("line_halt"),
	asciz(HaltLine + "\n"),
	label("line_ready"),
	asciz(ReadyLine + "\n"),
	label("line_unknown"),
	asciz(UnknownModeLine + "\n"),
	label("line_tick"),
	asciz(TickPrefix),
}

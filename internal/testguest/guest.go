package testguest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smartvm/smartvm/internal/safedir"
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

// MMIODeviceKey starts the words by which Firecracker names each virtio-mmio device on the
// kernel command line: "virtio_mmio.device=4K@0x<address>:<irq>". The vsock-echo guest finds
// its device with them.
const MMIODeviceKey = "virtio_mmio.device="

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
func Write(path string) error {
	if err := safedir.WriteFile(path, image(), 0o644); err != nil {
		return fmt.Errorf("write test guest %s: %w", path, err)
	}
	return nil
}

// image builds the ELF once.
var image = sync.OnceValue(func() []byte {
	code, _, err := assemble(program(), LoadAddress)
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

// program returns guest.S, line for line (comments aside), with each instruction's encoding.
// It is built on use, not at package initialisation, where it cost every smartvm command
// start-up time.
func program() []inst {
	return []inst{
		directive(".code64"),
		directive(".text"),
		directive(".globl _start"),
		label("_start"),
		op("cli", 0xfa),
		op("cld", 0xfc),
		op("mov %rsi, %rbp", 0x48, 0x89, 0xf5), // %rbp = boot_params
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
		leaRIP("name_vsock", "%rdi"),
		call("mode"),
		jump("je", "vsock"),
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

		label("vsock"),
		op("mov $0x1800000, %edi", 0xbf, 0x00, 0x00, 0x80, 0x01),  // map the fourth GiB: 512 pages of 2 MiB
		op("mov $0xc0000083, %eax", 0xb8, 0x83, 0x00, 0x00, 0xc0), // 3 GiB, present, writable, 2 MiB page
		op("mov $512, %ecx", 0xb9, 0x00, 0x02, 0x00, 0x00),
		label("vs_map"),
		op("mov %rax, (%rdi)", 0x48, 0x89, 0x07),
		op("add $8, %rdi", 0x48, 0x83, 0xc7, 0x08),
		op("add $0x200000, %rax", 0x48, 0x05, 0x00, 0x00, 0x20, 0x00),
		op("dec %ecx", 0xff, 0xc9),
		jump("jnz", "vs_map"),
		op("mov %cr3, %rax", 0x0f, 0x20, 0xd8), // the PML4
		op("and $0xfffff000, %eax", 0x25, 0x00, 0xf0, 0xff, 0xff),
		op("mov (%rax), %rax", 0x48, 0x8b, 0x00), // its first entry: the page directory pointer table
		op("and $0xfffff000, %eax", 0x25, 0x00, 0xf0, 0xff, 0xff),
		op("movq $0x1800003, 24(%rax)", 0x48, 0xc7, 0x40, 0x18, 0x03, 0x00, 0x80, 0x01), // its fourth entry: the new page directory
		op("mov %cr3, %rax", 0x0f, 0x20, 0xd8),
		op("mov %rax, %cr3", 0x0f, 0x22, 0xd8),
		op("mov 0x228(%rbp), %ebx", 0x8b, 0x9d, 0x28, 0x02, 0x00, 0x00), // %rbx = the command line again
		label("vs_word"),
		leaRIP("mmio_key", "%rdi"),
		op("mov %rbx, %rsi", 0x48, 0x89, 0xde),
		call("prefix"),
		jump("jne", "vs_next"),
		label("vs_at"), // skip the size, up to "@"
		op("lodsb", 0xac),
		op("test %al, %al", 0x84, 0xc0),
		jump("jz", "vs_none"),
		op("cmp $0x40, %al", 0x3c, 0x40),
		jump("jne", "vs_at"),
		op("lodsb", 0xac), // "0x"
		op("lodsb", 0xac),
		op("xor %edi, %edi", 0x31, 0xff), // %rdi = the address, in hex up to ":"
		label("vs_hex"),
		op("lodsb", 0xac),
		op("cmp $0x3a, %al", 0x3c, 0x3a),
		jump("je", "vs_probe"),
		op("shl $4, %rdi", 0x48, 0xc1, 0xe7, 0x04),
		op("sub $0x30, %al", 0x2c, 0x30),
		op("cmp $10, %al", 0x3c, 0x0a),
		jump("jb", "vs_digit"),
		op("sub $39, %al", 0x2c, 0x27), // "a" to "f"
		label("vs_digit"),
		op("movzbl %al, %eax", 0x0f, 0xb6, 0xc0),
		op("or %rax, %rdi", 0x48, 0x09, 0xc7),
		jump("jmp", "vs_hex"),
		label("vs_probe"),
		op("cmpl $19, 8(%rdi)", 0x83, 0x7f, 0x08, 0x13), // DeviceID 19: vsock
		jump("je", "vs_found"),
		label("vs_next"), // on to the next word
		op("mov (%rbx), %al", 0x8a, 0x03),
		op("test %al, %al", 0x84, 0xc0),
		jump("jz", "vs_none"),
		op("inc %rbx", 0x48, 0xff, 0xc3),
		op("cmp $0x20, %al", 0x3c, 0x20),
		jump("jne", "vs_next"),
		jump("jmp", "vs_word"),
		label("vs_none"),
		leaRIP("line_novsock", "%rsi"),
		call("puts"),
		jump("jmp", "reset"),

		label("vs_found"),
		op("mov %rdi, %rbx", 0x48, 0x89, 0xfb),
		op("movl $1, 0x70(%rbx)", 0xc7, 0x43, 0x70, 0x01, 0x00, 0x00, 0x00),  // Status: ACKNOWLEDGE
		op("movl $3, 0x70(%rbx)", 0xc7, 0x43, 0x70, 0x03, 0x00, 0x00, 0x00),  // DRIVER
		op("movl $1, 0x24(%rbx)", 0xc7, 0x43, 0x24, 0x01, 0x00, 0x00, 0x00),  // DriverFeaturesSel: bits 32 to 63
		op("movl $1, 0x20(%rbx)", 0xc7, 0x43, 0x20, 0x01, 0x00, 0x00, 0x00),  // DriverFeatures: VIRTIO_F_VERSION_1
		op("movl $11, 0x70(%rbx)", 0xc7, 0x43, 0x70, 0x0b, 0x00, 0x00, 0x00), // FEATURES_OK
		op("mov $0x1801000, %edi", 0xbf, 0x00, 0x10, 0x80, 0x01),             // rx descriptors: buffer i at 0x1804000 + i * 0x2000
		op("mov $0x1804000, %eax", 0xb8, 0x00, 0x40, 0x80, 0x01),
		op("xor %ecx, %ecx", 0x31, 0xc9),
		label("vs_fill"),
		op("mov %rax, (%rdi)", 0x48, 0x89, 0x07),
		op("movl $4140, 8(%rdi)", 0xc7, 0x47, 0x08, 0x2c, 0x10, 0x00, 0x00),               // 44 + 4096 bytes
		op("movw $2, 12(%rdi)", 0x66, 0xc7, 0x47, 0x0c, 0x02, 0x00),                       // VIRTQ_DESC_F_WRITE
		op("mov %cx, 0x1801104(,%rcx,2)", 0x66, 0x89, 0x0c, 0x4d, 0x04, 0x11, 0x80, 0x01), // available ring entry i: descriptor i
		op("add $16, %edi", 0x83, 0xc7, 0x10),
		op("add $0x2000, %eax", 0x05, 0x00, 0x20, 0x00, 0x00),
		op("inc %ecx", 0xff, 0xc1),
		op("cmp $4, %ecx", 0x83, 0xf9, 0x04),
		jump("jne", "vs_fill"),
		op("movw $4, 0x1801102", 0x66, 0xc7, 0x04, 0x25, 0x02, 0x11, 0x80, 0x01, 0x04, 0x00),               // rx available index: all four posted
		op("movl $0x1803800, 0x1803000", 0xc7, 0x04, 0x25, 0x00, 0x30, 0x80, 0x01, 0x00, 0x38, 0x80, 0x01), // event queue: one 8-byte buffer
		op("movl $8, 0x1803008", 0xc7, 0x04, 0x25, 0x08, 0x30, 0x80, 0x01, 0x08, 0x00, 0x00, 0x00),
		op("movw $2, 0x180300c", 0x66, 0xc7, 0x04, 0x25, 0x0c, 0x30, 0x80, 0x01, 0x02, 0x00),
		op("movw $1, 0x1803102", 0x66, 0xc7, 0x04, 0x25, 0x02, 0x31, 0x80, 0x01, 0x01, 0x00),
		op("xor %ecx, %ecx", 0x31, 0xc9), // queues 0 to 2, 0x1000 bytes apart
		op("mov $0x1801000, %eax", 0xb8, 0x00, 0x10, 0x80, 0x01),
		label("vs_queue"),
		op("mov %ecx, 0x30(%rbx)", 0x89, 0x4b, 0x30),                        // QueueSel
		op("movl $4, 0x38(%rbx)", 0xc7, 0x43, 0x38, 0x04, 0x00, 0x00, 0x00), // QueueNum
		op("mov %eax, 0x80(%rbx)", 0x89, 0x83, 0x80, 0x00, 0x00, 0x00),      // QueueDescLow
		op("add $0x100, %eax", 0x05, 0x00, 0x01, 0x00, 0x00),
		op("mov %eax, 0x90(%rbx)", 0x89, 0x83, 0x90, 0x00, 0x00, 0x00), // QueueDriverLow: the available ring
		op("add $0x100, %eax", 0x05, 0x00, 0x01, 0x00, 0x00),
		op("mov %eax, 0xa0(%rbx)", 0x89, 0x83, 0xa0, 0x00, 0x00, 0x00),      // QueueDeviceLow: the used ring
		op("movl $1, 0x44(%rbx)", 0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00), // QueueReady
		op("add $0xe00, %eax", 0x05, 0x00, 0x0e, 0x00, 0x00),
		op("inc %ecx", 0xff, 0xc1),
		op("cmp $3, %ecx", 0x83, 0xf9, 0x03),
		jump("jne", "vs_queue"),
		op("movl $15, 0x70(%rbx)", 0xc7, 0x43, 0x70, 0x0f, 0x00, 0x00, 0x00), // DRIVER_OK: Firecracker activates the device
		leaRIP("line_vsock", "%rsi"),
		call("puts"),
		op("xor %r12d, %r12d", 0x45, 0x31, 0xe4),
		op("mov $4, %r13d", 0x41, 0xbd, 0x04, 0x00, 0x00, 0x00),
		op("xor %r15d, %r15d", 0x45, 0x31, 0xff),
		op("xor %ebp, %ebp", 0x31, 0xed),
		op("rdtsc", 0x0f, 0x31), // call the host now
		op("shl $32, %rdx", 0x48, 0xc1, 0xe2, 0x20),
		op("or %rdx, %rax", 0x48, 0x09, 0xd0),
		op("mov %rax, %r14", 0x49, 0x89, 0xc6),
		label("vs_loop"),
		call("kbd"),
		op("movzwl 0x1803202, %eax", 0x0f, 0xb7, 0x04, 0x25, 0x02, 0x32, 0x80, 0x01), // event queue used index
		op("cmp %bp, %ax", 0x66, 0x39, 0xe8),
		jump("jne", "vs_event"),
		op("movzwl 0x1801202, %eax", 0x0f, 0xb7, 0x04, 0x25, 0x02, 0x12, 0x80, 0x01), // rx used index
		op("cmp %r12w, %ax", 0x66, 0x44, 0x39, 0xe0),
		jump("jne", "vs_rx"),
		op("test %r14, %r14", 0x4d, 0x85, 0xf6),
		jump("jz", "vs_idle"),
		op("rdtsc", 0x0f, 0x31),
		op("shl $32, %rdx", 0x48, 0xc1, 0xe2, 0x20),
		op("or %rdx, %rax", 0x48, 0x09, 0xd0),
		op("cmp %r14, %rax", 0x4c, 0x39, 0xf0),
		jump("jb", "vs_idle"),
		call("vs_call"),
		label("vs_idle"),
		op("pause", 0xf3, 0x90),
		jump("jmp", "vs_loop"),
		label("vs_event"), // a transport reset (a snapshot was taken)
		op("inc %ebp", 0xff, 0xc5),
		op("incw 0x1803102", 0x66, 0xff, 0x04, 0x25, 0x02, 0x31, 0x80, 0x01), // give the buffer back (every entry is descriptor 0)
		op("movl $2, 0x50(%rbx)", 0xc7, 0x43, 0x50, 0x02, 0x00, 0x00, 0x00),  // QueueNotify: the ack Firecracker 1.16 holds rx back for
		jump("jmp", "vs_loop"),
		label("vs_rx"),
		op("mov %r12d, %eax", 0x44, 0x89, 0xe0),
		op("and $3, %eax", 0x83, 0xe0, 0x03),
		op("mov 0x1801204(,%rax,8), %eax", 0x8b, 0x04, 0xc5, 0x04, 0x12, 0x80, 0x01), // the used entry's descriptor
		op("push %rax", 0x50),
		op("shl $13, %eax", 0xc1, 0xe0, 0x0d),
		op("add $0x1804000, %eax", 0x05, 0x00, 0x40, 0x80, 0x01),
		op("mov %eax, %edi", 0x89, 0xc7),
		call("vs_handle"),
		op("pop %rax", 0x58),
		op("mov %r13d, %ecx", 0x44, 0x89, 0xe9), // give the buffer back
		op("and $3, %ecx", 0x83, 0xe1, 0x03),
		op("mov %ax, 0x1801104(,%rcx,2)", 0x66, 0x89, 0x04, 0x4d, 0x04, 0x11, 0x80, 0x01),
		op("inc %r13d", 0x41, 0xff, 0xc5),
		op("mov %r13w, 0x1801102", 0x66, 0x44, 0x89, 0x2c, 0x25, 0x02, 0x11, 0x80, 0x01),
		op("movl $0, 0x50(%rbx)", 0xc7, 0x43, 0x50, 0x00, 0x00, 0x00, 0x00), // QueueNotify: rx
		op("inc %r12d", 0x41, 0xff, 0xc4),
		jump("jmp", "vs_loop"),

		// vs_call: ask for a connection from port 52 to the host's port 52.
		label("vs_call"),
		op("mov $0x1803400, %edi", 0xbf, 0x00, 0x34, 0x80, 0x01),
		op("mov 0x100(%rbx), %rax", 0x48, 0x8b, 0x83, 0x00, 0x01, 0x00, 0x00), // the guest's CID, from the config space
		op("mov %rax, (%rdi)", 0x48, 0x89, 0x07),
		op("movq $2, 8(%rdi)", 0x48, 0xc7, 0x47, 0x08, 0x02, 0x00, 0x00, 0x00), // the host
		op("movl $52, 16(%rdi)", 0xc7, 0x47, 0x10, 0x34, 0x00, 0x00, 0x00),
		op("movl $52, 20(%rdi)", 0xc7, 0x47, 0x14, 0x34, 0x00, 0x00, 0x00),
		op("movl $0, 24(%rdi)", 0xc7, 0x47, 0x18, 0x00, 0x00, 0x00, 0x00),
		op("xor %r14d, %r14d", 0x45, 0x31, 0xf6),
		op("xor %edx, %edx", 0x31, 0xd2),
		op("mov $1, %eax", 0xb8, 0x01, 0x00, 0x00, 0x00), // OP_REQUEST
		jump("jmp", "vs_finish"),

		// vs_handle: answer the packet at %rdi (header and payload) in place, through the tx queue.
		label("vs_handle"),
		op("movzwl 30(%rdi), %eax", 0x0f, 0xb7, 0x47, 0x1e), // op
		op("xor %edx, %edx", 0x31, 0xd2),                    // the answer's flags
		op("cmp $5, %eax", 0x83, 0xf8, 0x05),
		jump("je", "vs_rw"),
		op("cmp $1, %eax", 0x83, 0xf8, 0x01),
		jump("je", "vs_request"),
		op("cmp $7, %eax", 0x83, 0xf8, 0x07),
		jump("je", "vs_credit"),
		op("cmp $4, %eax", 0x83, 0xf8, 0x04),
		jump("je", "vs_shutdown"),
		op("cmp $3, %eax", 0x83, 0xf8, 0x03),
		jump("je", "vs_sched"), // OP_RST: no answer
		op("ret", 0xc3),        // OP_RESPONSE, OP_CREDIT_UPDATE: no answer
		label("vs_rw"),         // OP_RW: send the payload back
		op("add 24(%rdi), %r15d", 0x44, 0x03, 0x7f, 0x18),
		jump("jmp", "vs_swap"),
		label("vs_request"),
		op("mov $2, %eax", 0xb8, 0x02, 0x00, 0x00, 0x00), // OP_RESPONSE on port 52
		op("cmpl $52, 20(%rdi)", 0x83, 0x7f, 0x14, 0x34),
		jump("je", "vs_empty"),
		op("mov $3, %eax", 0xb8, 0x03, 0x00, 0x00, 0x00), // else OP_RST
		jump("jmp", "vs_empty"),
		label("vs_credit"),
		op("mov $6, %eax", 0xb8, 0x06, 0x00, 0x00, 0x00), // OP_CREDIT_UPDATE
		jump("jmp", "vs_empty"),
		label("vs_shutdown"),
		call("vs_sched"),
		op("xor %edx, %edx", 0x31, 0xd2),
		op("mov $3, %eax", 0xb8, 0x03, 0x00, 0x00, 0x00), // OP_RST: the connection is over
		label("vs_empty"),
		op("movl $0, 24(%rdi)", 0xc7, 0x47, 0x18, 0x00, 0x00, 0x00, 0x00),
		label("vs_swap"), // back to where it came from
		op("mov (%rdi), %rcx", 0x48, 0x8b, 0x0f),
		op("xchg %rcx, 8(%rdi)", 0x48, 0x87, 0x4f, 0x08),
		op("mov %rcx, (%rdi)", 0x48, 0x89, 0x0f),
		op("mov 16(%rdi), %rcx", 0x48, 0x8b, 0x4f, 0x10),
		op("rol $32, %rcx", 0x48, 0xc1, 0xc1, 0x20),
		op("mov %rcx, 16(%rdi)", 0x48, 0x89, 0x4f, 0x10),
		label("vs_finish"),
		op("mov %ax, 30(%rdi)", 0x66, 0x89, 0x47, 0x1e),
		op("movw $1, 28(%rdi)", 0x66, 0xc7, 0x47, 0x1c, 0x01, 0x00), // type: stream
		op("mov %edx, 32(%rdi)", 0x89, 0x57, 0x20),
		op("movl $0x10000, 36(%rdi)", 0xc7, 0x47, 0x24, 0x00, 0x00, 0x01, 0x00),   // buf_alloc
		op("mov %r15d, 40(%rdi)", 0x44, 0x89, 0x7f, 0x28),                         // fwd_cnt
		op("mov %rdi, 0x1802000", 0x48, 0x89, 0x3c, 0x25, 0x00, 0x20, 0x80, 0x01), // tx descriptor 0: this packet
		op("mov 24(%rdi), %eax", 0x8b, 0x47, 0x18),
		op("add $44, %eax", 0x83, 0xc0, 0x2c),
		op("mov %eax, 0x1802008", 0x89, 0x04, 0x25, 0x08, 0x20, 0x80, 0x01),
		op("incw 0x1802102", 0x66, 0xff, 0x04, 0x25, 0x02, 0x21, 0x80, 0x01), // tx available index
		op("movl $1, 0x50(%rbx)", 0xc7, 0x43, 0x50, 0x01, 0x00, 0x00, 0x00),  // QueueNotify: tx
		op("movzwl 0x1802102, %eax", 0x0f, 0xb7, 0x04, 0x25, 0x02, 0x21, 0x80, 0x01),
		label("vs_txwait"), // until Firecracker has used it
		op("cmp 0x1802202, %ax", 0x66, 0x3b, 0x04, 0x25, 0x02, 0x22, 0x80, 0x01),
		jump("jne", "vs_txwait"),
		op("ret", 0xc3),

		// vs_sched: when the packet at %rdi ends or refuses the guest's call to the host (ports
		// 52 to 52), call again in 50 ms of TSC time (at 2.6 GHz).
		label("vs_sched"),
		op("cmpl $52, 16(%rdi)", 0x83, 0x7f, 0x10, 0x34),
		jump("jne", "vs_ret"),
		op("cmpl $52, 20(%rdi)", 0x83, 0x7f, 0x14, 0x34),
		jump("jne", "vs_ret"),
		op("rdtsc", 0x0f, 0x31),
		op("shl $32, %rdx", 0x48, 0xc1, 0xe2, 0x20),
		op("or %rdx, %rax", 0x48, 0x09, 0xd0),
		op("lea 130000000(%rax), %r14", 0x4c, 0x8d, 0xb0, 0x80, 0xa4, 0xbf, 0x07),
		label("vs_ret"),
		op("ret", 0xc3),

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
		label("name_vsock"),
		asciz(ModeVsockEcho),
		label("mmio_key"),
		asciz(MMIODeviceKey),
		label("line_hello"),
		asciz(HelloLine + "\n"),
		label("line_halt"),
		asciz(HaltLine + "\n"),
		label("line_ready"),
		asciz(ReadyLine + "\n"),
		label("line_unknown"),
		asciz(UnknownModeLine + "\n"),
		label("line_vsock"),
		asciz(VsockReadyLine + "\n"),
		label("line_novsock"),
		asciz(NoVsockLine + "\n"),
		label("line_tick"),
		asciz(TickPrefix),
	}
}

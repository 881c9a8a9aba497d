package testguest

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// inst is one line of guest.S: a directive, a label, an instruction or a string. Its asm field
// is the line as written in guest.S (comments dropped, spaces collapsed); a test checks the
// listing against the file line by line, and against binutils' encoding byte by byte.
type inst struct {
	asm    string
	kind   instKind
	code   []byte // opFixed and opString: the bytes; opLEA: the bytes before the rel32
	cc     byte   // opJump: the condition code (0x0 to 0xf), or jmpAlways
	target string // opJump, opCall, opLEA: the label referred to; opLabel: its name
}

type instKind int

const (
	opDirective instKind = iota // no bytes (.code64, .text, .globl)
	opLabel                     // no bytes; defines target
	opFixed                     // code, encoded by hand
	opJump                      // jmp or jcc: rel8 when it fits, else rel32 (as GNU as relaxes)
	opCall                      // call rel32
	opLEA                       // lea label(%rip), %reg: code then rel32
	opString                    // .asciz: code is the string and its NUL
)

const jmpAlways = 0xff

// Condition codes of the jcc mnemonics the guest uses.
var conds = map[string]byte{"jb": 0x2, "je": 0x4, "jz": 0x4, "jne": 0x5, "jnz": 0x5}

func directive(asm string) inst { return inst{asm: asm, kind: opDirective} }

func label(name string) inst { return inst{asm: name + ":", kind: opLabel, target: name} }

func op(asm string, code ...byte) inst { return inst{asm: asm, kind: opFixed, code: code} }

// jump is "jmp target" or a conditional jump such as "jz target".
func jump(mnemonic, target string) inst {
	cc := byte(jmpAlways)
	if mnemonic != "jmp" {
		c, ok := conds[mnemonic]
		if !ok {
			panic("testguest: no condition code for " + mnemonic) // a listing bug
		}
		cc = c
	}
	return inst{asm: mnemonic + " " + target, kind: opJump, cc: cc, target: target}
}

func call(target string) inst { return inst{asm: "call " + target, kind: opCall, target: target} }

// leaRIP is "lea target(%rip), %reg" for the registers the guest loads addresses into:
// REX.W, 0x8d, then ModRM with mod=00 rm=101 (RIP-relative) and the register in reg.
func leaRIP(target, reg string) inst {
	modrm := map[string]byte{"%rsi": 0x35, "%rdi": 0x3d}[reg]
	if modrm == 0 {
		panic("testguest: lea into unsupported register " + reg) // a listing bug
	}
	return inst{asm: "lea " + target + "(%rip), " + reg, kind: opLEA, code: []byte{0x48, 0x8d, modrm}, target: target}
}

// asciz is a NUL-terminated string; the listing quotes it as GNU as does for printable ASCII and "\n".
func asciz(s string) inst {
	return inst{asm: ".asciz " + strconv.Quote(s), kind: opString, code: append([]byte(s), 0)}
}

// size is the encoded length of the instruction, given whether a jump uses rel32.
func (in inst) size(long bool) int {
	switch in.kind {
	case opFixed, opString:
		return len(in.code)
	case opJump:
		switch {
		case !long:
			return 2
		case in.cc == jmpAlways:
			return 5
		default:
			return 6
		}
	case opCall:
		return 5
	case opLEA:
		return len(in.code) + 4
	}
	return 0
}

// assemble lays the listing out at base and returns its machine code and the address of each
// label. Jumps start short and grow to rel32 until every displacement fits, as GNU as relaxes
// them, so both produce the same bytes.
func assemble(prog []inst, base uint64) ([]byte, map[string]uint64, error) {
	long := make([]bool, len(prog))
	for {
		addrs, labels := layout(prog, long, base)
		grew := false
		for i, in := range prog {
			if in.kind != opJump || long[i] {
				continue
			}
			dst, ok := labels[in.target]
			if !ok {
				return nil, nil, fmt.Errorf("jump to undefined label %q", in.target)
			}
			if d := int64(dst) - int64(addrs[i]+2); d < -128 || d > 127 {
				long[i], grew = true, true
			}
		}
		if !grew {
			code, err := encode(prog, long, addrs, labels)
			return code, labels, err
		}
	}
}

// layout returns each instruction's address and each label's.
func layout(prog []inst, long []bool, base uint64) ([]uint64, map[string]uint64) {
	addrs := make([]uint64, len(prog))
	labels := make(map[string]uint64)
	pc := base
	for i, in := range prog {
		addrs[i] = pc
		if in.kind == opLabel {
			labels[in.target] = pc
		}
		pc += uint64(in.size(long[i]))
	}
	return addrs, labels
}

func encode(prog []inst, long []bool, addrs []uint64, labels map[string]uint64) ([]byte, error) {
	var code []byte
	for i, in := range prog {
		next := int64(addrs[i]) + int64(in.size(long[i]))
		var rel int64
		if in.kind == opJump || in.kind == opCall || in.kind == opLEA {
			dst, ok := labels[in.target]
			if !ok {
				return nil, fmt.Errorf("%s: undefined label %q", in.asm, in.target)
			}
			rel = int64(dst) - next
		}
		switch in.kind {
		case opFixed, opString:
			code = append(code, in.code...)
		case opJump:
			switch {
			case !long[i] && in.cc == jmpAlways:
				code = append(code, 0xeb, byte(int8(rel)))
			case !long[i]:
				code = append(code, 0x70|in.cc, byte(int8(rel)))
			case in.cc == jmpAlways:
				code = binary.LittleEndian.AppendUint32(append(code, 0xe9), uint32(int32(rel)))
			default:
				code = binary.LittleEndian.AppendUint32(append(code, 0x0f, 0x80|in.cc), uint32(int32(rel)))
			}
		case opCall:
			code = binary.LittleEndian.AppendUint32(append(code, 0xe8), uint32(int32(rel)))
		case opLEA:
			code = binary.LittleEndian.AppendUint32(append(code, in.code...), uint32(int32(rel)))
		}
	}
	return code, nil
}

# smartvm's test guest: a few dozen instructions of x86-64 that Firecracker boots as its
# "kernel". This file is the source of truth; guest.go emits the same machine code (a test
# assembles this file with binutils and compares the bytes).
#
# Firecracker loads the PT_LOAD segment at 0x1000000 and enters _start in 64-bit long mode with
# the first GiB identity-mapped, interrupts off, a stack below 0x9000 and %rsi pointing at the
# Linux boot_params ("zero page"). The 32-bit kernel command line pointer is at offset 0x228.
#
# The guest reads the word smartvm.test=<mode> from the command line:
#   hello   (also when the word is absent) print the hello line, then reset
#   halt    print the halt line, then halt forever with interrupts off
#   counter print "tick N" lines about every 5 ms of TSC time, reset on i8042 data
#   cad     print the ready line, then reset on i8042 data (Ctrl-Alt-Del)
# Any other mode prints the unknown-mode line and resets.
#
# Devices: a 16550 UART at 0x3f8 (Firecracker's always reports the transmitter empty, so bytes
# are written to THR directly) and the i8042 at 0x60/0x64 (status bit 0: a byte is waiting;
# writing 0xfe to 0x64 resets the CPU, and Firecracker exits with status 0).
#
# Build: as --64 -o guest.o guest.S && ld -static -nostdlib --build-id=none -Ttext=0x1000000 -o guest guest.o
# Keep to the instructions guest.go can encode; no alignment directives.

	.code64
	.text
	.globl _start
_start:
	cli
	cld
	mov 0x228(%rsi), %ebx           # %rbx = command line (cmd_line_ptr, zero-extended)
	test %ebx, %ebx
	jz hello
word:                                   # %rbx: the next character of the command line
	mov (%rbx), %al
	test %al, %al
	jz hello                        # end of line and no smartvm.test= word: the default
	cmp $0x20, %al
	je next                         # a space between words
	lea key(%rip), %rdi
	mov %rbx, %rsi
	call prefix
	je found
skip:                                   # not our word: skip to its end
	inc %rbx
	mov (%rbx), %al
	test %al, %al
	jz hello
	cmp $0x20, %al
	jne skip
next:
	inc %rbx
	jmp word
found:
	mov %rsi, %rbx                  # %rbx = the mode, just past "smartvm.test="
	lea name_hello(%rip), %rdi
	call mode
	je hello
	lea name_halt(%rip), %rdi
	call mode
	je halt
	lea name_counter(%rip), %rdi
	call mode
	je counter
	lea name_cad(%rip), %rdi
	call mode
	je cad
	lea line_unknown(%rip), %rsi
	call puts
	jmp reset

hello:
	lea line_hello(%rip), %rsi
	call puts
	jmp reset

halt:
	lea line_halt(%rip), %rsi
	call puts
	jmp hang

cad:
	lea line_ready(%rip), %rsi
	call puts
cad_poll:
	call kbd
	pause
	jmp cad_poll

counter:
	xor %r12d, %r12d                # %r12 = the tick number
tick:
	lea line_tick(%rip), %rsi
	call puts
	mov %r12, %rax
	call putu
	mov $0xa, %al                   # "\n"
	out %al, (%dx)
	inc %r12
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	lea 13000000(%rax), %r13        # %r13 = deadline: 5 ms at 2.6 GHz
tick_wait:
	call kbd
	pause
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	cmp %r13, %rax
	jb tick_wait
	jmp tick

# kbd: reset when the i8042 holds a byte (Ctrl-Alt-Del was sent). Clobbers %al.
kbd:
	in $0x64, %al
	test $1, %al
	jnz reset
	ret

reset:
	mov $0xfe, %al
	out %al, $0x64                  # pulse the CPU reset line
hang:
	cli
	hlt
	jmp hang

# prefix: ZF=1 when the text at %rsi starts with the NUL-terminated string at %rdi, and then
# %rsi points just past it. Clobbers %al, %rsi, %rdi.
prefix:
	mov (%rdi), %al
	test %al, %al
	jz prefix_ret
	cmp (%rsi), %al
	jne prefix_ret
	inc %rdi
	inc %rsi
	jmp prefix
prefix_ret:
	ret

# mode: ZF=1 when the word at %rbx is the string at %rdi (followed by a space or the end of
# the line). Clobbers %al, %rsi, %rdi.
mode:
	mov %rbx, %rsi
	call prefix
	jne mode_ret
	mov (%rsi), %al
	test %al, %al
	jz mode_ret
	cmp $0x20, %al
mode_ret:
	ret

# puts: write the NUL-terminated string at %rsi to the serial port; leaves %dx = 0x3f8.
# Clobbers %al, %rsi.
puts:
	mov $0x3f8, %dx
puts_loop:
	lodsb
	test %al, %al
	jz puts_ret
	out %al, (%dx)
	jmp puts_loop
puts_ret:
	ret

# putu: write %rax in decimal to the serial port; leaves %dx = 0x3f8. The digits are built on
# the stack below the return address. Clobbers %rax, %rcx, %rdx, %rdi.
putu:
	mov %rsp, %rdi
	mov $10, %ecx
putu_div:
	xor %edx, %edx
	div %rcx
	add $0x30, %dl                  # "0" + the digit
	dec %rsp
	mov %dl, (%rsp)
	test %rax, %rax
	jnz putu_div
	mov $0x3f8, %dx
putu_out:
	mov (%rsp), %al
	inc %rsp
	out %al, (%dx)
	cmp %rdi, %rsp
	jne putu_out
	ret

key:
	.asciz "smartvm.test="
name_hello:
	.asciz "hello"
name_halt:
	.asciz "halt"
name_counter:
	.asciz "counter"
name_cad:
	.asciz "cad"
line_hello:
	.asciz "smartvm-testguest: hello\n"
line_halt:
	.asciz "smartvm-testguest: halt\n"
line_ready:
	.asciz "smartvm-testguest: ready\n"
line_unknown:
	.asciz "smartvm-testguest: unknown mode\n"
line_tick:
	.asciz "smartvm-testguest: tick "

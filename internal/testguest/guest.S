# smartvm's test guest: a few hundred instructions of x86-64 that Firecracker boots as its
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
#   vsock-echo
#           drive the virtio-mmio vsock device: echo every byte sent to vsock port 52, call the
#           host on port 52 (again 50 ms after each call ends or is refused), print the vsock
#           ready line once the driver is up, and reset on i8042 data
# Any other mode prints the unknown-mode line and resets.
#
# Devices: a 16550 UART at 0x3f8 (Firecracker's always reports the transmitter empty, so bytes
# are written to THR directly) and the i8042 at 0x60/0x64 (status bit 0: a byte is waiting;
# writing 0xfe to 0x64 resets the CPU, and Firecracker exits with status 0).
#
# The vsock driver (vsock-echo) polls; it takes no interrupts. Firecracker names each
# virtio-mmio device on the command line as virtio_mmio.device=4K@0x<addr>:<irq>, at addresses
# in the fourth GiB, which the guest maps with a page directory of 2 MiB pages at 0x1800000
# (so the VM needs 25 MiB of memory or more). The vsock device has ID 19 and three split
# virtqueues of 4 entries, at 0x1801000 (rx), 0x1802000 (tx) and 0x1803000 (event), each with
# its descriptors at +0, available ring at +0x100 and used ring at +0x200. The rx queue's four
# buffers (a 44-byte struct virtio_vsock_hdr and 4096 bytes of payload each) are at
# 0x1804000 + id * 0x2000. Each packet is answered in place, in its own buffer, which is then
# the one tx descriptor; the guest waits until Firecracker has used it, then gives the buffer
# back to the rx queue. Only the port numbers of a connection matter, so the guest keeps no
# connection state: credit is buf_alloc 64 KiB and fwd_cnt the bytes received on all
# connections together.
#   %rbx  the device's registers        %r12  rx used entries consumed
#   %r13  rx available entries posted   %r14  when to call the host (TSC), or 0
#   %r15  bytes received (fwd_cnt)      %rbp  boot_params, then event queue used entries
#
# Build: as --64 -o guest.o guest.S && ld -static -nostdlib --build-id=none -Ttext=0x1000000 -o guest guest.o
# Keep to the instructions guest.go can encode; no alignment directives.

	.code64
	.text
	.globl _start
_start:
	cli
	cld
	mov %rsi, %rbp                  # %rbp = boot_params
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
	lea name_vsock(%rip), %rdi
	call mode
	je vsock
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

vsock:
	mov $0x1800000, %edi            # map the fourth GiB: 512 pages of 2 MiB
	mov $0xc0000083, %eax           # 3 GiB, present, writable, 2 MiB page
	mov $512, %ecx
vs_map:
	mov %rax, (%rdi)
	add $8, %rdi
	add $0x200000, %rax
	dec %ecx
	jnz vs_map
	mov %cr3, %rax                  # the PML4
	and $0xfffff000, %eax
	mov (%rax), %rax                # its first entry: the page directory pointer table
	and $0xfffff000, %eax
	movq $0x1800003, 24(%rax)       # its fourth entry: the new page directory
	mov %cr3, %rax
	mov %rax, %cr3
	mov 0x228(%rbp), %ebx           # %rbx = the command line again
vs_word:
	lea mmio_key(%rip), %rdi
	mov %rbx, %rsi
	call prefix
	jne vs_next
vs_at:                                  # skip the size, up to "@"
	lodsb
	test %al, %al
	jz vs_none
	cmp $0x40, %al
	jne vs_at
	lodsb                           # "0x"
	lodsb
	xor %edi, %edi                  # %rdi = the address, in hex up to ":"
vs_hex:
	lodsb
	cmp $0x3a, %al
	je vs_probe
	shl $4, %rdi
	sub $0x30, %al
	cmp $10, %al
	jb vs_digit
	sub $39, %al                    # "a" to "f"
vs_digit:
	movzbl %al, %eax
	or %rax, %rdi
	jmp vs_hex
vs_probe:
	cmpl $19, 8(%rdi)               # DeviceID 19: vsock
	je vs_found
vs_next:                                # on to the next word
	mov (%rbx), %al
	test %al, %al
	jz vs_none
	inc %rbx
	cmp $0x20, %al
	jne vs_next
	jmp vs_word
vs_none:
	lea line_novsock(%rip), %rsi
	call puts
	jmp reset

vs_found:
	mov %rdi, %rbx
	movl $1, 0x70(%rbx)             # Status: ACKNOWLEDGE
	movl $3, 0x70(%rbx)             # DRIVER
	movl $1, 0x24(%rbx)             # DriverFeaturesSel: bits 32 to 63
	movl $1, 0x20(%rbx)             # DriverFeatures: VIRTIO_F_VERSION_1
	movl $11, 0x70(%rbx)            # FEATURES_OK
	mov $0x1801000, %edi            # rx descriptors: buffer i at 0x1804000 + i * 0x2000
	mov $0x1804000, %eax
	xor %ecx, %ecx
vs_fill:
	mov %rax, (%rdi)
	movl $4140, 8(%rdi)             # 44 + 4096 bytes
	movw $2, 12(%rdi)               # VIRTQ_DESC_F_WRITE
	mov %cx, 0x1801104(,%rcx,2)     # available ring entry i: descriptor i
	add $16, %edi
	add $0x2000, %eax
	inc %ecx
	cmp $4, %ecx
	jne vs_fill
	movw $4, 0x1801102              # rx available index: all four posted
	movl $0x1803800, 0x1803000      # event queue: one 8-byte buffer
	movl $8, 0x1803008
	movw $2, 0x180300c
	movw $1, 0x1803102
	xor %ecx, %ecx                  # queues 0 to 2, 0x1000 bytes apart
	mov $0x1801000, %eax
vs_queue:
	mov %ecx, 0x30(%rbx)            # QueueSel
	movl $4, 0x38(%rbx)             # QueueNum
	mov %eax, 0x80(%rbx)            # QueueDescLow
	add $0x100, %eax
	mov %eax, 0x90(%rbx)            # QueueDriverLow: the available ring
	add $0x100, %eax
	mov %eax, 0xa0(%rbx)            # QueueDeviceLow: the used ring
	movl $1, 0x44(%rbx)             # QueueReady
	add $0xe00, %eax
	inc %ecx
	cmp $3, %ecx
	jne vs_queue
	movl $15, 0x70(%rbx)            # DRIVER_OK: Firecracker activates the device
	lea line_vsock(%rip), %rsi
	call puts
	xor %r12d, %r12d
	mov $4, %r13d
	xor %r15d, %r15d
	xor %ebp, %ebp
	rdtsc                           # call the host now
	shl $32, %rdx
	or %rdx, %rax
	mov %rax, %r14
vs_loop:
	call kbd
	movzwl 0x1803202, %eax          # event queue used index
	cmp %bp, %ax
	jne vs_event
	movzwl 0x1801202, %eax          # rx used index
	cmp %r12w, %ax
	jne vs_rx
	test %r14, %r14
	jz vs_idle
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	cmp %r14, %rax
	jb vs_idle
	call vs_call
vs_idle:
	pause
	jmp vs_loop
vs_event:                               # a transport reset (a snapshot was taken)
	inc %ebp
	incw 0x1803102                  # give the buffer back (every entry is descriptor 0)
	movl $2, 0x50(%rbx)             # QueueNotify: the ack Firecracker 1.16 holds rx back for
	jmp vs_loop
vs_rx:
	mov %r12d, %eax
	and $3, %eax
	mov 0x1801204(,%rax,8), %eax    # the used entry's descriptor
	push %rax
	shl $13, %eax
	add $0x1804000, %eax
	mov %eax, %edi
	call vs_handle
	pop %rax
	mov %r13d, %ecx                 # give the buffer back
	and $3, %ecx
	mov %ax, 0x1801104(,%rcx,2)
	inc %r13d
	mov %r13w, 0x1801102
	movl $0, 0x50(%rbx)             # QueueNotify: rx
	inc %r12d
	jmp vs_loop

# vs_call: ask for a connection from port 52 to the host's port 52.
vs_call:
	mov $0x1803400, %edi
	mov 0x100(%rbx), %rax           # the guest's CID, from the config space
	mov %rax, (%rdi)
	movq $2, 8(%rdi)                # the host
	movl $52, 16(%rdi)
	movl $52, 20(%rdi)
	movl $0, 24(%rdi)
	xor %r14d, %r14d
	xor %edx, %edx
	mov $1, %eax                    # OP_REQUEST
	jmp vs_finish

# vs_handle: answer the packet at %rdi (header and payload) in place, through the tx queue.
# Clobbers %rax, %rcx, %rdx.
vs_handle:
	movzwl 30(%rdi), %eax           # op
	xor %edx, %edx                  # the answer's flags
	cmp $5, %eax
	je vs_rw
	cmp $1, %eax
	je vs_request
	cmp $7, %eax
	je vs_credit
	cmp $4, %eax
	je vs_shutdown
	cmp $3, %eax
	je vs_sched                     # OP_RST: no answer
	ret                             # OP_RESPONSE, OP_CREDIT_UPDATE: no answer
vs_rw:                                  # OP_RW: send the payload back
	add 24(%rdi), %r15d
	jmp vs_swap
vs_request:
	mov $2, %eax                    # OP_RESPONSE on port 52
	cmpl $52, 20(%rdi)
	je vs_empty
	mov $3, %eax                    # else OP_RST
	jmp vs_empty
vs_credit:
	mov $6, %eax                    # OP_CREDIT_UPDATE
	jmp vs_empty
vs_shutdown:
	call vs_sched
	xor %edx, %edx
	mov $3, %eax                    # OP_RST: the connection is over
vs_empty:
	movl $0, 24(%rdi)
vs_swap:                                # back to where it came from
	mov (%rdi), %rcx
	xchg %rcx, 8(%rdi)
	mov %rcx, (%rdi)
	mov 16(%rdi), %rcx
	rol $32, %rcx
	mov %rcx, 16(%rdi)
vs_finish:
	mov %ax, 30(%rdi)
	movw $1, 28(%rdi)               # type: stream
	mov %edx, 32(%rdi)
	movl $0x10000, 36(%rdi)         # buf_alloc
	mov %r15d, 40(%rdi)             # fwd_cnt
	mov %rdi, 0x1802000             # tx descriptor 0: this packet
	mov 24(%rdi), %eax
	add $44, %eax
	mov %eax, 0x1802008
	incw 0x1802102                  # tx available index
	movl $1, 0x50(%rbx)             # QueueNotify: tx
	movzwl 0x1802102, %eax
vs_txwait:                              # until Firecracker has used it
	cmp 0x1802202, %ax
	jne vs_txwait
	ret

# vs_sched: when the packet at %rdi ends or refuses the guest's call to the host (ports 52 to
# 52), call again in 50 ms of TSC time (at 2.6 GHz). Clobbers %rax, %rdx.
vs_sched:
	cmpl $52, 16(%rdi)
	jne vs_ret
	cmpl $52, 20(%rdi)
	jne vs_ret
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	lea 130000000(%rax), %r14
vs_ret:
	ret

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
name_vsock:
	.asciz "vsock-echo"
mmio_key:
	.asciz "virtio_mmio.device="
line_hello:
	.asciz "smartvm-testguest: hello\n"
line_halt:
	.asciz "smartvm-testguest: halt\n"
line_ready:
	.asciz "smartvm-testguest: ready\n"
line_unknown:
	.asciz "smartvm-testguest: unknown mode\n"
line_vsock:
	.asciz "smartvm-testguest: vsock ready\n"
line_novsock:
	.asciz "smartvm-testguest: no vsock device\n"
line_tick:
	.asciz "smartvm-testguest: tick "

// The emulator's fiber switch on x86-64 (System V ABI), see cuda_emu.hpp:
// saves the callee-saved registers and the stack pointer of the running
// fiber in *save_sp, then resumes the fiber whose stack pointer is to_sp.
#if defined(__x86_64__)
asm(R"(
  .text
  .globl emu_switch_stack
  .type emu_switch_stack, @function
emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch_stack, .-emu_switch_stack
  .section .note.GNU-stack,"",@progbits
)");
#endif

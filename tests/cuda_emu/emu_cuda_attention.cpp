// tests/cuda/test_cuda_attention.cu under the CPU emulator (see cuda_emu.hpp).
#include "cuda_emu.hpp"  // first: the emulated CUDA names

#include "../cuda/test_cuda_attention.cu"

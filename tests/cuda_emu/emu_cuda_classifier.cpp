// tests/cuda/test_cuda_classifier.cu under the CPU emulator (see cuda_emu.hpp).
#include "cuda_emu.hpp"  // first: the emulated CUDA names

#include "../cuda/test_cuda_classifier.cu"

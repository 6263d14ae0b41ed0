// benchmarks/bench_gpu_step.cu under the CPU emulator (see cuda_emu.hpp), with
// a one-layer model of doremi-120m's kind (head size 64, so the mma tilings
// run too; the PyTorch twin's --tiny model has its shape): a smoke run of
// every path of the GPU benchmark (the trainers' steps with and without GEMM
// tuning, the attention timings, the twin's result read back, the table and
// JSON), which otherwise runs only on a GPU.
#include "cuda_emu.hpp"  // first: the emulated CUDA names

#include "doremi/model/config.hpp"

namespace doremi::presets {
inline constexpr Spec bench_smoke{.name = "bench-smoke", .n_layer = 1, .n_embd = 128, .n_head = 2, .n_ctx = 64,
                                  .vocab = 509, .vocab_multiple = 8, .rotary_pct = 0.25, .tied_embeddings = true,
                                  .residual = Residual::parallel, .gelu = Gelu::tanh};
}  // namespace doremi::presets
#define DOREMI_BENCH_GPU_SPEC presets::bench_smoke

// Two cuBLASLt algorithms, the second the faster: the tuned run keeps it.
static const int emu_gemm_algorithms = (emu::set_gemm_algorithms(2, 1), 0);

#include "../../benchmarks/bench_gpu_step.cu"

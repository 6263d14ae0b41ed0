#pragma once
// backend::Cuda: the GPU policy of Model<Config, Backend>. One device, one
// stream, one cuBLASLt handle with one workspace, shared by every copy of the
// tag (Model holds its backend by value), so kernels of one model run in order
// on one stream. Layers live in one header each under backend/cuda/ with the
// forward and backward side by side and are found by tag dispatch
// (`layernorm_forward(Cuda, ...)`), exactly like backend::Cpu's.
//
// Every layer of Model and the trainers' optimiser runs here (see
// backend/cuda.hpp for the list); pointers passed to the layer functions are
// device pointers. Models with MatmulPrecision::bf16 keep fp32 storage and
// master weights and run their matrix products and attention on tensor cores.
//
// Needs nvcc (kernels); the program must be compiled as CUDA (CMake: link
// doremi::cuda).
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "doremi/core/error.hpp"
#include "doremi/backend/types.hpp"

namespace doremi::backend {

namespace cuda {

// Raise doremi::Error naming the failed call, where it was made and CUDA's words.
inline void check(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess)
    fail("CUDA error in {} ({}:{}): {} ({})", call, file, line, cudaGetErrorString(e), cudaGetErrorName(e));
}
inline void check(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail("cuBLAS error in {} ({}:{}): {} ({})", call, file, line, cublasLtGetStatusString(s), cublasLtGetStatusName(s));
}

}  // namespace cuda

#define DOREMI_CUDA_CHECK(call) ::doremi::backend::cuda::check((call), #call, __FILE__, __LINE__)
// Kernel launches: DOREMI_CUDA_LAUNCH(grid, block, smem, stream, kernel)(args...). The kernel comes
// last so that template arguments may hold commas. tests/cuda_emu defines its own (kernels run on
// the CPU under an emulator).
#ifndef DOREMI_CUDA_LAUNCH
#define DOREMI_CUDA_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif
// After a kernel launch: launch-configuration errors surface here.
#define DOREMI_CUDA_CHECK_LAUNCH(what) ::doremi::backend::cuda::check(cudaGetLastError(), what, __FILE__, __LINE__)

// True when a CUDA driver and at least one device are present. Never throws:
// tests and the example program use it to skip or to say why CUDA is absent.
inline bool cuda_available() noexcept {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device / no driver" state
    return false;
  }
  return n > 0;
}

namespace cuda {

// Why CUDA is not usable, for error messages ("" when it is).
inline std::string unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return fmt::format("{} ({})", cudaGetErrorString(e), cudaGetErrorName(e));
  }
  if (n == 0) return "no CUDA device found";
  return "";
}

// A device allocation of n elements of T: size(), data() (a device pointer),
// resize() (keeps the first min(old, new) elements), no host access.
// Move-only; copies go through copy_to_device / copy_to_host.
template <class T>
class DeviceBuffer {
 public:
  using value_type = T;
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) { resize(n); }
  // Filled with value (zero bytes through cudaMemset, anything else by a kernel in fill()).
  DeviceBuffer(std::size_t n, T value);
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  std::size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  T* data() { return p_; }
  const T* data() const { return p_; }

  void resize(std::size_t n) {
    if (n == n_) return;
    T* q = nullptr;
    if (n) allocate(reinterpret_cast<void**>(&q), n * sizeof(T));
    if (p_ && q) {
      // Kernels on a backend's (non-blocking) stream may still be writing the
      // old block: wait for the device before copying it, and after (a
      // device-to-device cudaMemcpy may return before it is done, and the
      // backend's stream does not wait for the legacy default stream's
      // work). Resizes are rare.
      cudaError_t e = cudaDeviceSynchronize();
      if (e == cudaSuccess) e = cudaMemcpy(q, p_, (n < n_ ? n : n_) * sizeof(T), cudaMemcpyDeviceToDevice);
      if (e == cudaSuccess) e = cudaDeviceSynchronize();
      if (e != cudaSuccess) {
        cudaFree(q);
        check(e, "cudaMemcpy (DeviceBuffer::resize)", __FILE__, __LINE__);
      }
    }
    release();
    p_ = q;
    n_ = n;
  }

 private:
  // cudaMalloc; out of memory raises doremi::Error with the sizes and what to do.
  static void allocate(void** p, std::size_t bytes) {
    const cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      std::size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) != cudaSuccess) (void)cudaGetLastError();
      constexpr double gib = double(std::size_t(1) << 30);
      fail("backend::Cuda: out of GPU memory: {:.2f} GiB requested, {:.2f} of {:.2f} GiB free on this device; "
           "use fewer sequences per micro-batch (batch_size with a larger grad_accum keeps the batch) or a shorter "
           "seq_len",
           double(bytes) / gib, double(free) / gib, double(total) / gib);
    }
    check(e, "cudaMalloc (DeviceBuffer)", __FILE__, __LINE__);
  }
  void release() noexcept {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

// cuBLASLt descriptors and the heuristic's algorithm for one GEMM shape,
// kept by the Context (matmul.hpp makes them on a shape's first call).
struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;  // false: cuBLASLt has no algorithm for the shape
  // GEMM tuning (Context::gemm_tuning; matmul.hpp): how many of the
  // heuristic's algorithms were timed (0: not tuned), the index of the one
  // kept (0: the heuristic's first) and the times per call of the first and
  // of the one kept, in ms; calls counts the plan's calls.
  int candidates = 0, chosen = 0;
  float first_ms = 0, chosen_ms = 0;
  std::int64_t calls = 0;
  LtPlan() = default;
  LtPlan(const LtPlan&) = delete;
  LtPlan& operator=(const LtPlan&) = delete;
  ~LtPlan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};
using LtKey = std::array<std::int64_t, 16>;

// The state one Cuda tag shares with its copies: device, stream, cuBLASLt
// handle and workspace, and a scratch arena for deterministic reductions.
struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  DeviceBuffer<std::byte> workspace;  // cuBLASLt's
  DeviceBuffer<std::byte> scratch;    // column-reduction partials, CUB temp storage
  DeviceBuffer<std::byte> operands;   // bf16 copies of fp32 GEMM operands (MatmulPrecision::bf16)
  std::map<LtKey, std::unique_ptr<LtPlan>> lt_plans;  // per GEMM shape, types and alignments
  // Time the heuristic's candidate algorithms of each new GEMM plan and keep
  // the fastest (matmul.hpp). Off by default: from DOREMI_CUDA_GEMM_TUNING
  // (1 or 0), or Cuda::set_gemm_tuning.
  bool gemm_tuning = false;
  // AdamW's runs of decayed and undecayed parameters as its last step had
  // them (adamw.hpp: end << 1 | decayed), and their device copy.
  std::vector<std::uint64_t> adamw_runs;
  DeviceBuffer<std::uint64_t> adamw_runs_device;

  static constexpr std::size_t workspace_bytes = std::size_t(32) << 20;

  explicit Context(int dev) : device(dev) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      fail("backend::Cuda: CUDA is not usable on this machine: {} ({}); use the CPU backend (--device cpu)",
           cudaGetErrorString(e), cudaGetErrorName(e));
    }
    if (n == 0) fail("backend::Cuda: no CUDA device found; use the CPU backend (--device cpu)");
    if (dev < 0 || dev >= n) fail("backend::Cuda: device {} does not exist (this machine has {} CUDA devices: 0..{})",
                                  dev, n, n - 1);
    DOREMI_CUDA_CHECK(cudaSetDevice(dev));
    DOREMI_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    DOREMI_CUDA_CHECK(cublasLtCreate(&lt));
    workspace.resize(workspace_bytes);
    if (const char* v = std::getenv("DOREMI_CUDA_GEMM_TUNING")) {
      const std::string_view t(v);
      if (t != "0" && t != "1") fail("DOREMI_CUDA_GEMM_TUNING = '{}': use 1 (time cuBLASLt's candidates) or 0", t);
      gemm_tuning = t == "1";
    }
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() {
    if (stream) cudaStreamSynchronize(stream);
    if (lt) cublasLtDestroy(lt);
    if (stream) cudaStreamDestroy(stream);
  }

  // At least `bytes` of scratch (grows, never shrinks; grows only while shapes grow).
  void* scratch_bytes(std::size_t bytes) { return grow(scratch, bytes); }
  // The same for operand copies; layers may use scratch while operands are held.
  void* operand_bytes(std::size_t bytes) { return grow(operands, bytes); }

 private:
  void* grow(DeviceBuffer<std::byte>& b, std::size_t bytes) {
    if (b.size() < bytes) {
      DOREMI_CUDA_CHECK(cudaStreamSynchronize(stream));  // kernels in flight may use the old one
      b.resize(0);
      b.resize(bytes);
    }
    return b.data();
  }
};

}  // namespace cuda

namespace cuda {

// O spelled as a plain type: nvcc's host stubs spell a kernel's template
// arguments by the alias they were deduced through, and an alias member of
// Model<Config<Spec{...}>> does not survive that spelling.
template <class O>
using plain_t =
    std::conditional_t<std::is_same_v<O, float>, float,
                       std::conditional_t<std::is_same_v<O, double>, double,
                                          std::conditional_t<std::is_same_v<O, __nv_bfloat16>, __nv_bfloat16, O>>>;

}  // namespace cuda

// The tag. Copies share one Context; constructing it without a usable device
// raises doremi::Error saying so.
struct Cuda {
  static constexpr const char* name = "cuda";
  static constexpr const char* gemm = "cuBLASLt";
  template <class T>
  using Buffer = cuda::DeviceBuffer<T>;
  static constexpr bool host_memory = false;  // Buffers live on the device
  // See Cpu::operand: bf16 activations and weight copies for bf16 products.
  template <MatmulPrecision P, class T>
  using operand = std::conditional_t<P == MatmulPrecision::bf16 && std::is_same_v<T, float>, __nv_bfloat16, T>;

  // Device 0; not explicit, so `Model(Backend be = {})` compiles for Cuda too.
  Cuda() : Cuda(0) {}
  explicit Cuda(int device) : ctx(std::make_shared<cuda::Context>(device)) {}

  int device() const { return ctx->device; }
  cudaStream_t stream() const { return ctx->stream; }
  cublasLtHandle_t lt() const { return ctx->lt; }
  void synchronize() const { DOREMI_CUDA_CHECK(cudaStreamSynchronize(ctx->stream)); }
  // GEMM tuning for the plans made from now on (see Context::gemm_tuning).
  void set_gemm_tuning(bool on) const { ctx->gemm_tuning = on; }
  bool gemm_tuning() const { return ctx->gemm_tuning; }

  std::shared_ptr<cuda::Context> ctx;
};

namespace cuda {

// Host <-> device copies on the backend's stream; both wait for completion.
template <class T>
void copy_to_device(const Cuda& be, T* dst, const T* src, std::size_t n) {
  if (!n) return;
  DOREMI_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, be.stream()));
  DOREMI_CUDA_CHECK(cudaStreamSynchronize(be.stream()));
}
template <class T>
void copy_to_host(const Cuda& be, T* dst, const T* src, std::size_t n) {
  if (!n) return;
  DOREMI_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost, be.stream()));
  DOREMI_CUDA_CHECK(cudaStreamSynchronize(be.stream()));
}

}  // namespace cuda

// The seam's memory moves (backend/cpu/cpu.hpp has the CPU's): blocking copies.
template <class T>
void upload(const Cuda& be, T* dst, const T* src, std::size_t n) {
  cuda::copy_to_device(be, dst, src, n);
}
template <class T>
void download(const Cuda& be, T* dst, const T* src, std::size_t n) {
  cuda::copy_to_host(be, dst, src, n);
}

// Flash-style attention keeps one logsumexp per (batch, head, query).
inline std::size_t attention_state_size(const Cuda&, int B, int H, int T) { return std::size_t(B) * H * T; }

namespace cuda {

inline unsigned blocks_for(std::size_t n, unsigned threads) {
  const std::size_t b = (n + threads - 1) / threads;
  return unsigned(b < 65535u * 16u ? b : 65535u * 16u);  // grid-stride loops cover the rest
}

// dst[i] = value (memory-bound, grid-stride).
template <class T>
__global__ void fill_kernel(T* dst, T value, std::size_t n) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    dst[i] = value;
}

}  // namespace cuda

template <class T>
cuda::DeviceBuffer<T>::DeviceBuffer(std::size_t n, T value) {
  resize(n);
  if (!n) return;
  if (value == T(0)) {
    DOREMI_CUDA_CHECK(cudaMemset(p_, 0, n * sizeof(T)));
  } else {
    DOREMI_CUDA_LAUNCH(cuda::blocks_for(n, 256), 256, 0, 0, cuda::fill_kernel)(p_, value, n);
    DOREMI_CUDA_CHECK_LAUNCH("fill_kernel (DeviceBuffer)");
  }
  // The legacy default stream does not order against a backend's non-blocking
  // stream: finish here so the first kernel on that stream sees the values.
  DOREMI_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace doremi::backend

#pragma once
// The language-model head on the GPU: logits = x·Wᵀ over the padded
// vocabulary V (W is [V, C] row-major, HuggingFace's layout), per-token
// cross-entropy ℓ_n = logsumexp(logits_n) − logits_n[target_n], and the
// gradient of Σ_n w_n·ℓ_n with per-token weights w_n that are only known
// after the forward (the DRO trainer computes them from the losses).
//
// The weight is a per-row scalar, so the forward already writes the
// UNWEIGHTED logits gradient G = softmax(logits) − onehot(target) over the
// logits (no fp32 logits are kept), and the backward applies the weights as
// row scalings around two cuBLASLt GEMMs:
//   dx  = diag(w)·(G·W)        GEMM into fp32, then one row-scale kernel
//   dW += Gᵀ·(diag(w)·x)       x's rows scaled into scratch, GEMM with beta = 1
// Forward: the logits GEMM writes into `probs` (element type T), then one
// block of 512 threads per row reads the row twice and writes it once:
// pass 1 keeps an online (max, Σexp) pair per thread over 16-byte vector
// loads (fp32 throughout), a block reduction combines them, pass 2 (in
// reverse order, so the last-read part of the row is still in L2) rewrites
// each element as softmax − onehot in T. Together with the GEMM's write that
// is four passes over the [N, V] matrix in the forward and two reads (one per
// GEMM) in the backward.
//
// Targets: target < 0 is padding (loss 0, mask 0, G row 0, weight ignored).
// A target ≥ V is an error the kernel cannot raise: that row gets loss NaN,
// mask 1 and a NaN G row, so the step's loss is not finite and the trainer's
// non-finite-loss check raises doremi::Error naming the step. Non-finite
// logits (inf/NaN from a diverged model) likewise give NaN losses.
//
// `inv_sum[n]` receives 1/Σ_j exp(logit_nj − max_j logit_nj) (0 for padding
// rows, NaN for targets ≥ V) for inspection; the backward does not read it
// (G is already normalised) and it may be nullptr.
//
// Element types: T = float (x, W, probs in fp32, GEMMs in true fp32) or
// T = __nv_bfloat16 (bf16 storage, fp32 accumulation; dW stays fp32, the
// master gradient). Losses, reductions and weights are fp32 in both.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>

#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/backend/cuda/matmul.hpp"
#include "doremi/backend/elementwise.hpp"

namespace doremi::backend {

namespace cuda {

inline constexpr int classifier_threads = 512;  // one block per row; a multiple of 32, at most 1024
inline constexpr float classifier_log2e = 1.4426950408889634f;

// Shapes must be positive; raised before any CUDA call.
inline void check_classifier_shape(const char* fn, int N, int C, int V) {
  if (N <= 0) fail("{}: N = {} tokens; need N > 0", fn, N);
  if (C <= 0) fail("{}: C = {} channels; need C > 0", fn, C);
  if (V <= 0) fail("{}: V = {} (padded vocabulary size); need V > 0", fn, V);
}

// 16 bytes of T, loaded and stored as one int4 (the address must be 16-byte aligned).
template <class T>
struct alignas(16) ClassifierPack {
  static constexpr int size = int(16 / sizeof(T));
  T v[size];
  __device__ static ClassifierPack load(const T* p) {
    ClassifierPack r;
    *reinterpret_cast<int4*>(&r) = *reinterpret_cast<const int4*>(p);
    return r;
  }
  __device__ void store(T* p) const { *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(this); }
};

// s, a sum of exponentials taken relative to the max m, rescaled to the max
// M ≥ m. m == M also covers m = M = −inf (empty: s = 0) without −inf − −inf.
__device__ inline float lse_rescale(float s, float m, float M) {
  return m == M ? s : s * exp2f((m - M) * classifier_log2e);
}

// Running max m and s = Σ exp(v − m) of the values seen. m is never NaN
// (fmaxf drops NaN against −inf); a NaN value makes s NaN and stays there.
struct OnlineLse {
  float m = -INFINITY;
  float s = 0.0f;
  template <int K>
  __device__ void add(const float (&v)[K]) {
    float cmax = v[0];
#pragma unroll
    for (int k = 1; k < K; ++k) cmax = fmaxf(cmax, v[k]);
    const float mnew = fmaxf(m, cmax);
    // All −inf so far: exponents relative to 0 give exp(−inf) = 0 (and NaN for NaN).
    const float off = mnew == -INFINITY ? 0.0f : mnew * classifier_log2e;
    float t = lse_rescale(s, m, mnew);
#pragma unroll
    for (int k = 0; k < K; ++k) t += exp2f(fmaf(v[k], classifier_log2e, -off));
    s = t;
    m = mnew;
  }
  __device__ void merge(float m2, float s2) {
    const float M = fmaxf(m, m2);
    s = lse_rescale(s, m, M) + lse_rescale(s2, m2, M);
    m = M;
  }
  __device__ void warp_merge() {
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
      merge(m2, s2);
    }
  }
};

// One block per row n: loss, mask, inv_sum, and the row of probs (logits on
// entry) overwritten with softmax − onehot(target), in T.
// write_grad = false (losses only): the row is read, not rewritten.
// Long on purpose: one kernel whose tiles and accumulators stay in registers
// across its phases; device functions would have to pass them all.
template <class T>
__global__ void __launch_bounds__(classifier_threads)
    classifier_softmax_kernel(float* losses, std::uint8_t* mask, T* probs, float* inv_sum,
                              const std::int32_t* targets, int V, bool write_grad) {
  using Pack = ClassifierPack<T>;
  constexpr int K = Pack::size;
  const int row = blockIdx.x;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  T* p = probs + std::size_t(row) * V;
  const std::int32_t t = targets[row];  // the same for the whole block: the branch below is uniform

  if (t < 0 || t >= V) {  // padding: zeros; out of range: NaN (see the header comment). No reads.
    const float g = t < 0 ? 0.0f : NAN;
    if (write_grad)
      for (int j = tid; j < V; j += nthreads) p[j] = T(g);
    if (tid == 0) {
      losses[row] = g;
      mask[row] = t < 0 ? 0 : 1;
      if (inv_sum) inv_sum[row] = g;
    }
    return;
  }

  // The target's logit, read before the __syncthreads() that precedes every write.
  float target_logit = 0.0f;
  if (tid == 0) target_logit = float(p[t]);

  // Row layout: `head` scalar elements up to the first 16-byte boundary, then
  // `nvec` packs of K, then fewer than K scalar elements from `tail` on.
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  int head = int(((16 - addr % 16) % 16) / sizeof(T));
  if (head > V) head = V;
  const int nvec = (V - head) / K;
  const int tail = head + nvec * K;  // V − tail < K ≤ nthreads, head < K

  // Pass 1: online max and Σexp per thread.
  OnlineLse acc;
  if (tid < head) {
    const float v[1] = {float(p[tid])};
    acc.add(v);
  }
  const T* body = p + head;
#pragma unroll 4
  for (int i = tid; i < nvec; i += nthreads) {
    const Pack a = Pack::load(body + std::size_t(i) * K);
    float v[K];
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = float(a.v[k]);
    acc.add(v);
  }
  if (tail + tid < V) {
    const float v[1] = {float(p[tail + tid])};
    acc.add(v);
  }

  // Block reduction of the (max, sum) pairs: warps, then warp 0 over the warps.
  __shared__ float warp_m[32], warp_s[32];
  __shared__ float row_m, row_s;
  const int lane = tid % 32, warp = tid / 32, nwarps = nthreads / 32;
  acc.warp_merge();
  if (lane == 0) {
    warp_m[warp] = acc.m;
    warp_s[warp] = acc.s;
  }
  __syncthreads();
  if (warp == 0) {
    OnlineLse all;
    if (lane < nwarps) {
      all.m = warp_m[lane];
      all.s = warp_s[lane];
    }
    all.warp_merge();
    if (lane == 0) {
      row_m = all.m;
      row_s = all.s;
    }
  }
  __syncthreads();
  const float M = row_m, S = row_s;
  if (tid == 0) {
    // S ≥ 1 for finite logits; NaN or inf logits give a NaN loss.
    losses[row] = M + logf(S) - target_logit;
    mask[row] = 1;
    if (inv_sum) inv_sum[row] = 1.0f / S;
  }

  if (!write_grad) return;
  // Pass 2: g = exp(v − M)/S − [j == t], written in place in T.
  const float off = M * classifier_log2e, inv = 1.0f / S;
  const auto grad = [&](float v, int j) {
    return exp2f(fmaf(v, classifier_log2e, -off)) * inv - (j == t ? 1.0f : 0.0f);
  };
  if (tid < head) p[tid] = T(grad(float(p[tid]), tid));
  T* wbody = p + head;
  for (int i = nvec - 1 - tid; i >= 0; i -= nthreads) {
    Pack a = Pack::load(wbody + std::size_t(i) * K);
    const int j0 = head + i * K;
#pragma unroll
    for (int k = 0; k < K; ++k) a.v[k] = T(grad(float(a.v[k]), j0 + k));
    a.store(wbody + std::size_t(i) * K);
  }
  if (tail + tid < V) p[tail + tid] = T(grad(float(p[tail + tid]), tail + tid));
}

// out[n, c] = To(w_n · in[n, c]) with w_n = 0 where targets[n] < 0 (padding
// weights are ignored, even NaN ones). in == out is allowed.
template <class To, class From>
__global__ void classifier_scale_rows_kernel(To* out, const From* in, const float* weights,
                                             const std::int32_t* targets, int N, int C) {
  for (int n = int(blockIdx.x); n < N; n += int(gridDim.x)) {  // a block per row: no division per element
    const float wn = targets[n] < 0 ? 0.0f : weights[n];
    const std::size_t o = std::size_t(n) * C;
    for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) out[o + c] = To(wn * float(in[o + c]));
  }
}

template <class To, class From>
void classifier_scale_rows(const Cuda& be, To* out, const From* in, const float* weights,
                           const std::int32_t* targets, int N, int C, const char* what) {
  DOREMI_CUDA_LAUNCH(blocks_for(std::size_t(N) * 256, 256), 256, 0, be.stream(),
                     classifier_scale_rows_kernel<plain_t<To>, plain_t<From>>)(out, in, weights, targets, N, C);
  DOREMI_CUDA_CHECK_LAUNCH(what);
}

}  // namespace cuda

// losses, mask, targets, inv_sum: [N]; probs: [N, V] (receives G = softmax −
// onehot, unweighted); x: [N, C]; w: [V, C]. All device pointers; inv_sum may
// be nullptr.
//
// T = __nv_bfloat16 is the path of P = MatmulPrecision::bf16 (Model<Cfg,
// Cuda> with bf16_matmul passes the bf16 copies of the final LayerNorm's
// output and of the output embedding). for_backward = false: only the losses
// are wanted (no backward follows): G is not written.
template <MatmulPrecision P = MatmulPrecision::native, class T>
void classifier_forward(const Cuda& be, float* losses, std::uint8_t* mask, T* probs, float* inv_sum, const T* x,
                        const T* w, const std::int32_t* targets, int N, int C, int V, bool for_backward = true) {
  static_assert(P != MatmulPrecision::bf16 || std::is_same_v<T, __nv_bfloat16>,
                "classifier_forward(Cuda): bf16 products take bf16 operands");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>,
                "classifier_forward(Cuda): float or __nv_bfloat16 storage");
  cuda::check_classifier_shape("classifier_forward(Cuda)", N, C, V);
  // logitsᵀ[V, N] = W[V, C]·xᵀ[C, N] (column-major view of row-major [N, V]).
  cuda::lt_matmul<T>(be, true, false, V, N, C, w, C, x, C, probs, V, 1.0f, 0.0f, nullptr,
                     "classifier_forward logits = x·Wᵀ");
  DOREMI_CUDA_LAUNCH(unsigned(N), cuda::classifier_threads, 0, be.stream(),
                     cuda::classifier_softmax_kernel<cuda::plain_t<T>>)(losses, mask, probs, inv_sum, targets, V,
                                                                        for_backward);
  DOREMI_CUDA_CHECK_LAUNCH("classifier_softmax_kernel");
}

// Overwrites dx [N, C]; accumulates into dw [V, C] the gradient of Σ_n w_n·ℓ_n.
// probs is the forward's G; inv_sum is not read (may be nullptr); weights [N]
// are ignored where target < 0. Scratch: N·C·sizeof(T) (+ N·C fp32 for bf16).
template <MatmulPrecision P = MatmulPrecision::native, class T, class G>
void classifier_backward(const Cuda& be, T* dx, G* dw, const T* probs, const float* inv_sum, const float* weights,
                         const T* x, const T* w, const std::int32_t* targets, int N, int C, int V) {
  static_assert(P != MatmulPrecision::bf16 || std::is_same_v<T, __nv_bfloat16>,
                "classifier_backward(Cuda): bf16 products take bf16 operands");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>,
                "classifier_backward(Cuda): float or __nv_bfloat16 storage");
  static_assert(std::is_same_v<G, float>, "classifier_backward(Cuda): dw is fp32 (the master gradient)");
  (void)inv_sum;
  cuda::check_classifier_shape("classifier_backward(Cuda)", N, C, V);
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  const std::size_t nc = std::size_t(N) * C;
  const std::size_t xs_bytes = (nc * sizeof(T) + 255) / 256 * 256;  // keeps the fp32 part 256-byte aligned
  const std::size_t gw_bytes = bf16 ? nc * sizeof(float) : 0;
  auto* scratch = static_cast<std::byte*>(be.ctx->scratch_bytes(xs_bytes + gw_bytes));
  T* xs = reinterpret_cast<T*>(scratch);

  // dW[V, C] += Gᵀ·xs, xs = diag(w)·x: column-major dWᵀ[C, V] += xsᵀ[C, N]·G[N, V].
  cuda::classifier_scale_rows(be, xs, x, weights, targets, N, C, "classifier_scale_rows_kernel (x)");
  cuda::lt_matmul<T, float>(be, false, true, C, V, N, xs, C, probs, V, dw, C, 1.0f, 1.0f, nullptr,
                            "classifier_backward dW += Gᵀ·diag(w)·x");

  // dx = diag(w)·(G·W): column-major dxᵀ[C, N] = Wᵀ[C, V]·Gᵀ[V, N], in fp32, then scaled rows.
  if constexpr (bf16) {
    float* gw = reinterpret_cast<float*>(scratch + xs_bytes);
    cuda::lt_matmul<T, float>(be, false, false, C, N, V, w, C, probs, V, gw, C, 1.0f, 0.0f, nullptr,
                              "classifier_backward G·W (bf16 -> fp32)");
    cuda::classifier_scale_rows(be, dx, static_cast<const float*>(gw), weights, targets, N, C,
                                "classifier_scale_rows_kernel (dx)");
  } else {
    cuda::lt_matmul<T>(be, false, false, C, N, V, w, C, probs, V, dx, C, 1.0f, 0.0f, nullptr,
                       "classifier_backward G·W");
    cuda::classifier_scale_rows(be, dx, static_cast<const float*>(dx), weights, targets, N, C,
                                "classifier_scale_rows_kernel (dx)");
  }
}

namespace cuda {

// A block per batch row: each thread adds the row's tokens tid, tid + 128,
// ..., then the 128 partial sums are added pairwise in a fixed order
// (deterministic; the CPU adds in token order, so the two agree to rounding).
inline constexpr int row_loss_threads = 128;

template <class T>
__global__ void row_loss_sums_kernel(RowLossSums* out, const T* losses, const std::uint8_t* mask, const T* ref,
                                     int Tn) {
  __shared__ double part[4][row_loss_threads];
  const int tid = int(threadIdx.x);
  const std::size_t row0 = std::size_t(blockIdx.x) * std::size_t(Tn);
  RowLossSums s{};
  for (int t = tid; t < Tn; t += row_loss_threads) {
    const std::size_t j = row0 + std::size_t(t);
    if (!mask[j]) continue;
    if (ref) s.add(double(losses[j]), double(ref[j]));
    else s.add(double(losses[j]));
  }
  part[0][tid] = s.loss, part[1][tid] = s.tokens, part[2][tid] = s.reference, part[3][tid] = s.excess;
  __syncthreads();
  for (int w = row_loss_threads / 2; w > 0; w /= 2) {
    if (tid < w)
      for (int q = 0; q < 4; ++q) part[q][tid] += part[q][tid + w];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = RowLossSums{part[0][0], part[1][0], part[2][0], part[3][0]};
}

}  // namespace cuda

// Per batch row, the totals the trainers read of a forward pass (see the CPU
// overload): reduced on the GPU, so only B of them, not the [B·Tn] losses and
// mask, come to the host. losses, mask, ref: device pointers (ref may be
// null). Blocks until the totals are on the host.
template <class T>
std::vector<RowLossSums> row_loss_sums(const Cuda& be, const T* losses, const std::uint8_t* mask, int B, int Tn,
                                       const T* ref = nullptr) {
  std::vector<RowLossSums> out(static_cast<std::size_t>(B));
  if (B <= 0 || Tn <= 0) return out;
  auto* d_out = static_cast<RowLossSums*>(be.ctx->scratch_bytes(out.size() * sizeof(RowLossSums)));
  DOREMI_CUDA_LAUNCH(unsigned(B), cuda::row_loss_threads, 0, be.stream(),
                     cuda::row_loss_sums_kernel<cuda::plain_t<T>>)(d_out, losses, mask, ref, Tn);
  DOREMI_CUDA_CHECK_LAUNCH("row_loss_sums_kernel");
  cuda::copy_to_host(be, out.data(), d_out, out.size());
  return out;
}

}  // namespace doremi::backend

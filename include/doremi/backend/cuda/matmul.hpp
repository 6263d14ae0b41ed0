#pragma once
// Linear layer y = x·Wᵀ + b with W stored [out, in] row-major (HuggingFace's
// layout), through cuBLASLt. Compute-bound: the three products are GEMMs on
// the backend's stream with its one workspace; the forward fuses the bias
// into the GEMM epilogue. cuBLASLt is column-major, so a row-major [r, c]
// matrix is read as a column-major [c, r] one:
//   forward   yᵀ[out,N]  = W[out,in] · xᵀ[in,N]          (A = W as [in,out] transposed)
//   dx        dxᵀ[in,N]  = Wᵀ[in,out] · dyᵀ[out,N]
//   dW        dWᵀ[in,out] += xᵀ[in,N] · dy[N,out]       (B = dy as [out,N] transposed)
// fp32 uses CUBLAS_COMPUTE_32F (true fp32, no TF32) so it matches the CPU;
// fp64 uses CUBLAS_COMPUTE_64F. Backward overwrites dx and accumulates into
// dW, db (parameter gradients add up across micro-batches), like the CPU's.
//
// MatmulPrecision::bf16 (fp32 model): bf16 operands, fp32 accumulation and
// fp32 outputs. x and W may come as fp32 (rounded into bf16 copies in the
// context's operand area) or already as bf16 (Cuda::operand: the model keeps
// the LayerNorm and GELU outputs and a copy of its weights in bf16). The fp32
// bias goes into the GEMM's epilogue; the backward's bias-gradient pass also
// writes dout's bf16 copy. dout and dx may also be bf16 (activation gradients
// as autocast keeps them), and the forward may add a residual as the GEMM's C
// matrix. The GPU suite's kernel and whole-step tests cover it (under the
// CPU emulator in CI; docs/cuda-performance.md keeps the GPU runs' status).
// bf16 storage: the overloads at the end take bf16 activations and weights,
// accumulate in fp32 and keep parameter gradients in fp32.
// Descriptors and the heuristic's algorithm are made once per shape, types
// and alignments and kept in the backend's context (LtPlan).
// matmul_gelu_forward fuses the tanh GELU into the MLP's first GEMM
// (GELU_AUX_BIAS epilogue), matmul_backward_into_gelu its backward into the
// second's dx GEMM (DGELU epilogue).
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include <cuda_bf16.h>

#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/backend/cuda/convert.hpp"
#include "doremi/backend/cuda/gelu.hpp"
#include "doremi/backend/cuda/reduce.hpp"
#include "doremi/backend/elementwise.hpp"
#include "doremi/backend/types.hpp"

namespace doremi::backend {

namespace cuda {

// cuBLASLt types per element type: data type, compute type and the type of
// alpha/beta. bf16 computes and accumulates in fp32.
template <class T>
struct LtTypes;
template <>
struct LtTypes<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  using scale = float;
};
template <>
struct LtTypes<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
  static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_64F;
  using scale = double;
};
template <>
struct LtTypes<__nv_bfloat16> {
  static constexpr cudaDataType_t data = CUDA_R_16BF;
  static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  using scale = float;
};

// The largest power of two (at most 256) dividing the address.
inline std::uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t r = 256;
  while (r > 1 && (a % r) != 0) r >>= 1;
  return r;
}

// GEMM tuning (Context::gemm_tuning): a new plan asks the heuristic for up
// to this many algorithms and times them (lt_tune).
inline constexpr int lt_tuning_candidates = 8;

// Times each candidate algorithm on the call's own operands (run(algo)
// launches the call with it on `stream`): one warm-up run, then the fastest
// of three timed runs. The plan keeps the fastest, but the heuristic's first
// unless another beats it by more than 3 % (near ties would otherwise flip
// between runs of a program, and with them the last bits of the results).
// Candidates that fail to run are skipped; if all fail, the plan keeps the
// first (its call then reports the failure as without tuning).
template <class Run>
void lt_tune(LtPlan& p, const std::vector<cublasLtMatmulHeuristicResult_t>& candidates, Run&& run,
             cudaStream_t stream) {
  cudaEvent_t ev[2] = {nullptr, nullptr};
  struct Events {
    cudaEvent_t* e;
    ~Events() {
      for (int i = 0; i < 2; ++i)
        if (e[i]) cudaEventDestroy(e[i]);
    }
  } owner{ev};
  DOREMI_CUDA_CHECK(cudaEventCreate(&ev[0]));
  DOREMI_CUDA_CHECK(cudaEventCreate(&ev[1]));
  constexpr float none = 3.0e38f;
  float first = none, best = none;
  int best_i = 0;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    if (candidates[i].state != CUBLAS_STATUS_SUCCESS || run(candidates[i].algo) != CUBLAS_STATUS_SUCCESS) continue;
    float t = none;
    for (int r = 0; r < 3; ++r) {
      DOREMI_CUDA_CHECK(cudaEventRecord(ev[0], stream));
      (void)run(candidates[i].algo);  // ran once already
      DOREMI_CUDA_CHECK(cudaEventRecord(ev[1], stream));
      DOREMI_CUDA_CHECK(cudaEventSynchronize(ev[1]));
      float ms = 0;
      DOREMI_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
      t = ms < t ? ms : t;
    }
    if (i == 0) first = t;
    if (t < best) best = t, best_i = int(i);
  }
  if (best == none) return;  // none ran: untuned
  if (best_i != 0 && first != none && best > 0.97f * first) best = first, best_i = 0;
  p.algo = candidates[std::size_t(best_i)].algo;
  p.candidates = int(candidates.size());
  p.chosen = best_i;
  p.first_ms = first == none ? 0.0f : first;
  p.chosen_ms = best;
}

// Column-major D[m,n] = alpha·op(A)·op(B) + beta·C (+ bias[m] broadcast over
// columns when bias is given). A is stored [ta ? k : m, ta ? m : k] with
// leading dimension lda, likewise B; C (D itself when null) and D have
// leading dimension ldd. Inputs A, B of type In; C, D and the bias of type
// Out (bf16 inputs may accumulate into fp32 outputs: parameter gradients stay
// fp32). gelu_aux (bf16 products, optional; D's layout): forward, D =
// GELU_tanh(product + bias) with the GELU's input stored in gelu_aux
// (cuBLASLt's GELU_AUX(_BIAS) epilogue); gelu_grad, D = product ⊙
// GELU_tanh'(gelu_aux) (DGELU epilogue, no bias). bias_grad (optional, no
// bias or GELU): also bias_grad[j] = Σ_k op(B)[k, j], overwritten (BGRADB
// epilogue). Returns false, having done nothing, when cuBLASLt has no
// algorithm for the call (lt_matmul below raises an error instead).
// Long on purpose: one cuBLASLt call's descriptor, epilogue and algorithm
// choice in the order the API needs them; the plan is cached per shape.
template <class In, class Out = In>
bool lt_matmul_try(const Cuda& be, bool ta, bool tb, int m, int n, int k, const In* A, int lda, const In* B, int ldb,
                   Out* D, int ldd, typename LtTypes<In>::scale alpha, typename LtTypes<In>::scale beta,
                   const std::type_identity_t<Out>* bias, const std::type_identity_t<Out>* C = nullptr,
                   const std::type_identity_t<Out>* gelu_aux = nullptr, bool gelu_grad = false,
                   std::type_identity_t<Out>* bias_grad = nullptr) {
  using Ty = LtTypes<In>;
  if (!C) C = D;
  const std::size_t ws = be.ctx->workspace.size();
  // The descriptors and the heuristic's choice depend on the shape, the types
  // and the operands' alignments: made once per such key, then reused.
  const LtKey key{Ty::data, LtTypes<Out>::data, ta, tb, m, n, k, lda, ldb, ldd,
                  (bias != nullptr) + 2 * (gelu_aux != nullptr) + 4 * gelu_grad + 8 * (bias_grad != nullptr),
                  alignment_of(A), alignment_of(B), alignment_of(C),
                  alignment_of(D) * 512 + (bias ? alignment_of(bias) : bias_grad ? alignment_of(bias_grad) : 0),
                  gelu_aux ? alignment_of(gelu_aux) : 0};
  // The optional epilogues (GELU, bias gradient): any refusal means "no algorithm".
  const bool optional = gelu_aux || bias_grad;
  const void* bias_ptr = bias_grad ? static_cast<const void*>(bias_grad) : bias;
  std::unique_ptr<LtPlan>& slot = be.ctx->lt_plans[key];
  std::vector<cublasLtMatmulHeuristicResult_t> candidates;  // a new plan's, to be timed (GEMM tuning)
  if (!slot) {
    auto p = std::make_unique<LtPlan>();
    const auto scale = std::is_same_v<typename Ty::scale, double> ? CUDA_R_64F : CUDA_R_32F;
    DOREMI_CUDA_CHECK(cublasLtMatmulDescCreate(&p->op, Ty::compute, scale));
    const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    DOREMI_CUDA_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
    DOREMI_CUDA_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
    if (bias || gelu_aux || bias_grad) {
      const cublasLtEpilogue_t epi = bias_grad  ? CUBLASLT_EPILOGUE_BGRADB
                                     : !gelu_aux ? CUBLASLT_EPILOGUE_BIAS
                                     : gelu_grad ? CUBLASLT_EPILOGUE_DGELU
                                     : bias      ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                                 : CUBLASLT_EPILOGUE_GELU_AUX;
      DOREMI_CUDA_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    }
    if (gelu_aux) {
      const std::int64_t aux_ld = ldd;
      DOREMI_CUDA_CHECK(
          cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &gelu_aux, sizeof(gelu_aux)));
      DOREMI_CUDA_CHECK(
          cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld)));
    }
    if (bias_ptr) {
      DOREMI_CUDA_CHECK(
          cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)));
      const cudaDataType_t bt = LtTypes<Out>::data;
      DOREMI_CUDA_CHECK(
          cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    }
    DOREMI_CUDA_CHECK(cublasLtMatrixLayoutCreate(&p->a, Ty::data, ta ? k : m, ta ? m : k, lda));
    DOREMI_CUDA_CHECK(cublasLtMatrixLayoutCreate(&p->b, Ty::data, tb ? n : k, tb ? k : n, ldb));
    DOREMI_CUDA_CHECK(cublasLtMatrixLayoutCreate(&p->c, LtTypes<Out>::data, m, n, ldd));
    cublasLtMatmulPreference_t pref = nullptr;
    DOREMI_CUDA_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    using PrefOwner = std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>,
                                      cublasStatus_t (*)(cublasLtMatmulPreference_t)>;
    const PrefOwner pref_owner(pref, cublasLtMatmulPreferenceDestroy);
    DOREMI_CUDA_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    // The heuristic assumes 256-byte-aligned pointers unless told otherwise;
    // views into the flat parameter buffer are often less aligned.
    const auto set_alignment = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* ptr) {
      const std::uint32_t a = alignment_of(ptr);
      DOREMI_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &a, sizeof(a)));
    };
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, A);
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, B);
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, C);
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, D);
    std::vector<cublasLtMatmulHeuristicResult_t> heuristic(be.ctx->gemm_tuning ? lt_tuning_candidates : 1);
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(be.lt(), p->op, p->a, p->b, p->c, p->c, pref,
                                                             int(heuristic.size()), heuristic.data(), &found);
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && !optional) DOREMI_CUDA_CHECK(st);
    p->found = st == CUBLAS_STATUS_SUCCESS && found > 0;
    p->algo = heuristic[0].algo;
    if (p->found && found > 1) candidates.assign(heuristic.begin(), heuristic.begin() + found);
    slot = std::move(p);
  }
  LtPlan& p = *slot;
  if (!p.found) return false;
  // The plan's descriptor, pointed at this call's bias and aux (same alignments: part of the key).
  if (bias_ptr)
    DOREMI_CUDA_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)));
  if (gelu_aux)
    DOREMI_CUDA_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &gelu_aux, sizeof(gelu_aux)));
  const auto run = [&](const cublasLtMatmulAlgo_t& algo, Out* d) {
    return cublasLtMatmul(be.lt(), p.op, &alpha, A, p.a, B, p.b, &beta, C, p.c, d, p.c, &algo,
                          be.ctx->workspace.data(), ws, be.stream());
  };
  if (!candidates.empty()) {
    // The timing runs write D and the epilogue's outputs, which this call
    // then overwrites; where D is also an input (accumulation), a temporary
    // D (no memory for it: no tuning, the heuristic's first).
    const bool d_is_input = (beta != 0 && C == D) || (gelu_grad && gelu_aux == D);
    DeviceBuffer<Out> tmp;
    try {
      if (d_is_input) tmp.resize(std::size_t(ldd) * std::size_t(n));
    } catch (const Error&) {
      candidates.clear();
    }
    Out* const d = d_is_input ? tmp.data() : D;
    if (!candidates.empty())
      lt_tune(p, candidates, [&](const cublasLtMatmulAlgo_t& algo) { return run(algo, d); }, be.stream());
  }
  ++p.calls;
  const cublasStatus_t st = run(p.algo, D);
  if (st != CUBLAS_STATUS_SUCCESS && optional) {  // an optional epilogue refused at run time: never again
    p.found = false;
    return false;
  }
  DOREMI_CUDA_CHECK(st);
  return true;
}

// A plan's shape as lt_matmul_try keys it: cuBLASLt's column-major m, n, k
// and the epilogue bits (bias 1, GELU 2, GELU backward 4, bias gradient 8).
struct LtShape {
  std::int64_t m, n, k, epilogue;
};
inline LtShape lt_shape(const LtKey& key) { return {key[4], key[5], key[6], key[10]}; }

// What cuBLASLt answered for the GEMMs planned so far on this backend's
// context: plans with a bias, GELU or bias-gradient epilogue that found an
// algorithm, and those it refused (their callers then ran the fallback
// passes); with GEMM tuning, the plans tuned, those that kept another
// algorithm than the heuristic's first, and the tuned plans' time over all
// their calls by the tuning's timings, with the first and the kept algorithms.
struct LtPlanCounts {
  int plans = 0, bias_found = 0, bias_refused = 0, gelu_found = 0, gelu_refused = 0, bgrad_found = 0,
      bgrad_refused = 0;
  int tuned = 0, switched = 0;
  double first_ms = 0, chosen_ms = 0;
};
inline LtPlanCounts lt_plan_counts(const Cuda& be) {
  LtPlanCounts c;
  for (const auto& [key, plan] : be.ctx->lt_plans) {
    ++c.plans;
    if (plan->candidates > 0) {
      ++c.tuned;
      c.switched += plan->chosen != 0;
      c.first_ms += double(plan->calls) * plan->first_ms;
      c.chosen_ms += double(plan->calls) * plan->chosen_ms;
    }
    const std::int64_t epilogue = lt_shape(key).epilogue;
    if (epilogue & 8) ++(plan->found ? c.bgrad_found : c.bgrad_refused);
    else if (epilogue & 2) ++(plan->found ? c.gelu_found : c.gelu_refused);
    else if (epilogue & 1) ++(plan->found ? c.bias_found : c.bias_refused);
  }
  return c;
}

template <class In, class Out = In>
void lt_matmul(const Cuda& be, bool ta, bool tb, int m, int n, int k, const In* A, int lda, const In* B, int ldb,
               Out* D, int ldd, typename LtTypes<In>::scale alpha, typename LtTypes<In>::scale beta,
               const std::type_identity_t<Out>* bias, const char* what, const std::type_identity_t<Out>* C = nullptr) {
  if (!lt_matmul_try<In, Out>(be, ta, tb, m, n, k, A, lda, B, ldb, D, ldd, alpha, beta, bias, C))
    fail("cuBLASLt: no algorithm for {} (m={}, n={}, k={}, {}{}{})", what, m, n, k, ta ? "Aᵀ" : "A",
         tb ? "·Bᵀ" : "·B", bias ? ", bias epilogue" : "");
}

template <class T>
struct RowOf {
  const T* m;
  int width;
  __device__ Acc<T> operator()(int n, int j) const { return Acc<T>(m[std::size_t(n) * width + j]); }
};

// dout[n, j] of a bf16-operand backward for the bias-gradient pass, which
// also leaves its bf16 rounding in `copy` (the GEMMs' operand): one read of
// dout for both. Dout maps the flat index to the fp32 value, reading through
// __ldg (read-only for the kernel): so the compiler may issue the loads of
// several rows before the stores of the copy, which it could not otherwise
// tell apart from them.
template <class Dout>
struct DoutToBf16 {
  Dout dout;
  int width;
  __nv_bfloat16* copy;
  __device__ float operator()(int n, int j) const {
    const std::size_t o = std::size_t(n) * width + j;
    const float v = dout(o);
    copy[o] = __float2bfloat16_rn(v);
    return v;
  }
};
struct StoredDout {  // dout as stored
  const float* p;
  __device__ float operator()(std::size_t o) const { return __ldg(p + o); }
};
template <Gelu G, class Pre = float, class Dy = float>
struct GeluDout {  // dout = dy ⊙ gelu'(pre): the GELU's backward in the same pass (gelu_backward's arithmetic)
  const Dy* dy;    // fp32, or bf16 as bf16 models store it
  const Pre* pre;  // likewise
  __device__ float operator()(std::size_t o) const {
    return float(__ldg(dy + o)) * backend::gelu_grad<G>(float(__ldg(pre + o)));
  }
};

// y[n, j] = Y(acc[n, j] + bias[j]) in A's arithmetic; acc may be y itself
// (y += bias). Outside cuBLASLt's bias epilogue: fp64, and the fallback where
// a bias epilogue finds no algorithm (bf16 y: from the fp32 product, rounded
// once). A thread per column keeps its bias in a register and walks the rows
// (no index division); a warp's stores are contiguous.
template <class Y, class A>
__global__ void add_bias_kernel(Y* y, const A* acc, const Y* bias, int N, int width) {
  const int col = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (col >= width) return;
  const A b = A(bias[col]);
  for (int row = int(blockIdx.y); row < N; row += int(gridDim.y)) {
    const std::size_t o = std::size_t(row) * width + col;
    y[o] = Y(acc[o] + b);
  }
}

template <class Y, class A>
void add_bias(const Cuda& be, Y* y, const A* acc, const Y* bias, int N, int width) {
  const dim3 grid(unsigned((width + 255) / 256), unsigned(N < 2048 ? N : 2048));
  DOREMI_CUDA_LAUNCH(grid, 256, 0, be.stream(), add_bias_kernel<plain_t<Y>, A>)(y, acc, bias, N, width);
  DOREMI_CUDA_CHECK_LAUNCH("add_bias_kernel");
}

}  // namespace cuda

namespace cuda {

// A GEMM operand of n elements: fp32 (rounded into a bf16 copy), already bf16
// (read as it is), or a null fp32 pointer (n elements of space, written by
// the caller).
struct Bf16Operand {
  const float* f32 = nullptr;
  const __nv_bfloat16* b16 = nullptr;
  std::size_t n = 0;
  Bf16Operand(const float* p, std::size_t count) : f32(p), n(count) {}
  Bf16Operand(const __nv_bfloat16* p, std::size_t count) : b16(p), n(count) {}
};

// The operands as bf16, in order: bf16 ones as they are, the others in the
// context's operand area (one block, each copy 256-byte aligned).
template <std::size_t K>
std::array<const __nv_bfloat16*, K> to_bf16_operands(const Cuda& be, const std::array<Bf16Operand, K>& ops) {
  std::array<std::size_t, K + 1> at{};
  for (std::size_t i = 0; i < K; ++i) at[i + 1] = at[i] + (ops[i].b16 ? 0 : (ops[i].n * 2 + 255) / 256 * 256);
  auto* base = at[K] ? static_cast<std::byte*>(be.ctx->operand_bytes(at[K])) : nullptr;
  std::array<const __nv_bfloat16*, K> out{};
  for (std::size_t i = 0; i < K; ++i) {
    if (ops[i].b16) {
      out[i] = ops[i].b16;
      continue;
    }
    auto* copy = reinterpret_cast<__nv_bfloat16*>(base + at[i]);
    if (ops[i].f32) convert(be, copy, ops[i].f32, ops[i].n);
    out[i] = copy;
  }
  return out;
}

template <MatmulPrecision P, class T, class X, class W>
constexpr void check_matmul_types() {
  if constexpr (P == MatmulPrecision::bf16) {
    static_assert(std::is_same_v<T, float>, "bf16 matrix products need an fp32 model");
    static_assert((std::is_same_v<X, float> || std::is_same_v<X, __nv_bfloat16>) &&
                      (std::is_same_v<W, float> || std::is_same_v<W, __nv_bfloat16>),
                  "bf16 matrix products take fp32 or bf16 operands");
  } else {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "matmul (Cuda): float or double");
    static_assert(std::is_same_v<X, T> && std::is_same_v<W, T>, "matmul (Cuda): operands of the model's type");
  }
}

}  // namespace cuda

// P = MatmulPrecision::bf16 (fp32 model): the operands are rounded to bf16
// (fp32 ones into copies; x and w may already be bf16: Cuda::operand), the
// GEMMs accumulate in fp32 and write fp32, as backend::Cpu does. out may be
// bf16 with a bf16 bias (an output that only feeds products): the epilogue
// adds the bias to the fp32 sum and rounds once, as the CPU does.
// residual (fp32/fp64 out only; may be out itself): out = residual + x·Wᵀ + b,
// the residual stream's add done by the GEMM (its C matrix, beta = 1).
template <MatmulPrecision P = MatmulPrecision::native, class T, class X, class W>
void matmul_forward(const Cuda& be, T* out, const X* x, const W* w, const T* bias, int N, int in, int out_dim,
                    const T* residual = nullptr) {
  const float beta = residual ? 1.0f : 0.0f;
  if constexpr (P == MatmulPrecision::bf16) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "bf16 products: fp32 or bf16 out");
    cuda::check_matmul_types<P, float, X, W>();
    if (N <= 0) return;
    if (!std::is_same_v<T, float> && residual) fail("matmul_forward (cuda): a residual needs an fp32 output");
    const auto [xb, wb] = cuda::to_bf16_operands<2>(be, {{{x, std::size_t(N) * in}, {w, std::size_t(out_dim) * in}}});
    // The bias in the GEMM's epilogue (cuBLASLt: the bias has D's type); where
    // that finds no algorithm, the product, then a bias pass.
    if (bias && cuda::lt_matmul_try<__nv_bfloat16, T>(be, true, false, out_dim, N, in, wb, in, xb, in, out, out_dim,
                                                      1.0f, beta, bias, residual))
      return;
    const auto product = [&](auto* d) {
      using D = std::remove_pointer_t<decltype(d)>;
      const D* c = nullptr;  // the residual: fp32 outputs only (checked above)
      if constexpr (std::is_same_v<D, T>) c = residual;
      cuda::lt_matmul<__nv_bfloat16, D>(be, true, false, out_dim, N, in, wb, in, xb, in, d, out_dim, 1.0f, beta,
                                        static_cast<const D*>(nullptr), "matmul_forward (bf16 operands)", c);
    };
    if constexpr (std::is_same_v<T, float>) {
      product(out);
      if (bias) cuda::add_bias(be, out, static_cast<const float*>(out), bias, N, out_dim);
    } else if (!bias) {
      product(out);
    } else {  // bf16 out: the fp32 product in scratch, then the bias and one rounding
      float* acc = static_cast<float*>(be.ctx->scratch_bytes(std::size_t(N) * out_dim * sizeof(float)));
      product(acc);
      cuda::add_bias(be, out, static_cast<const float*>(acc), bias, N, out_dim);
    }
  } else {
    cuda::check_matmul_types<P, T, X, W>();
    if (N <= 0) return;
    // fp32: the bias in the epilogue where cuBLASLt has an algorithm for it;
    // fp64, and fp32 otherwise: a bias pass after the product.
    if constexpr (std::is_same_v<T, float>)
      if (bias && cuda::lt_matmul_try<T>(be, true, false, out_dim, N, in, w, in, x, in, out, out_dim, T(1), T(beta),
                                         bias, residual))
        return;
    cuda::lt_matmul<T>(be, true, false, out_dim, N, in, w, in, x, in, out, out_dim, T(1), T(beta),
                       static_cast<const T*>(nullptr), "matmul_forward", residual);
    if (bias) cuda::add_bias(be, out, static_cast<const T*>(out), bias, N, out_dim);
  }
}

// No bias spelled as a literal nullptr (as generation's logits product
// [N, C]·[V, C]ᵀ into fp32 calls it): the overload above with a typed null.
template <MatmulPrecision P = MatmulPrecision::native, class T, class X, class W>
void matmul_forward(const Cuda& be, T* out, const X* x, const W* w, std::nullptr_t, int N, int in, int out_dim) {
  matmul_forward<P>(be, out, x, w, static_cast<const T*>(nullptr), N, in, out_dim);
}

// out = GELU(x·Wᵀ + b) with the GELU's input kept in pre (the MLP's first
// layer: its backward reads pre). With bf16 products, bf16 out and pre and
// the tanh GELU (the one cuBLASLt's epilogue computes), one GEMM writes both
// (GELU_AUX_BIAS epilogue: the GELU of the fp32 sum, both rounded once);
// otherwise, and where cuBLASLt has no algorithm for it, matmul_forward then
// gelu_forward (the GELU of the rounded pre, as the CPU computes it).
template <MatmulPrecision P, Gelu G, class O, class X, class W>
void matmul_gelu_forward(const Cuda& be, O* out, O* pre, const X* x, const W* w, const O* bias, int N, int in,
                         int out_dim) {
  using Ob = cuda::plain_t<O>;
  if constexpr (P == MatmulPrecision::bf16 && G == Gelu::tanh && std::is_same_v<Ob, __nv_bfloat16>) {
    cuda::check_matmul_types<P, float, X, W>();
    if (N <= 0) return;
    const auto [xb, wb] = cuda::to_bf16_operands<2>(be, {{{x, std::size_t(N) * in}, {w, std::size_t(out_dim) * in}}});
    Ob* const o = out;
    if (cuda::lt_matmul_try<__nv_bfloat16, Ob>(be, true, false, out_dim, N, in, wb, in, xb, in, o, out_dim, 1.0f, 0.0f,
                                               bias, nullptr, pre))
      return;
  }
  matmul_forward<P>(be, pre, x, w, bias, N, in, out_dim);
  gelu_forward<G>(be, out, static_cast<const O*>(pre), std::size_t(N) * out_dim);
}

namespace cuda {

// The bf16-operand backward: dx = dout·W and dW += doutᵀ·x. dout is bf16
// (read as it is; the bias-gradient pass sums it) or fp32 / computed: then
// the bias-gradient pass, reading `rows` (a DoutToBf16 source), also makes
// its bf16 copy (one read for both); without a bias, dout_f32 is converted.
template <class Dout, class DX, class X, class W>
void matmul_backward_bf16(const Cuda& be, DX* dx, float* dw, float* dbias, Bf16Operand dout, Dout rows,
                          const X* x, const W* w, int N, int in, int out_dim) {
  if (dbias && !dout.b16) dout.f32 = nullptr;  // space for the copy the bias pass writes
  const auto [dyb, xb, wb] = to_bf16_operands<3>(be, {{dout, {x, std::size_t(N) * in}, {w, std::size_t(out_dim) * in}}});
  // dW += doutᵀ·x: column-major dWᵀ[in, out] += xᵀ[in, N]·dout[N, out].
  bool dw_done = false;
  if (dbias && dout.b16) {
    // dout's column sums in that product's BGRADB epilogue where cuBLASLt
    // has one (it overwrites: into scratch, then added), else in a pass.
    auto* sums = static_cast<float*>(be.ctx->scratch_bytes(std::size_t(out_dim) * sizeof(float)));
    dw_done = lt_matmul_try<__nv_bfloat16, float>(be, false, true, in, out_dim, N, xb, in, dyb, out_dim, dw, in, 1.0f,
                                                  1.0f, nullptr, nullptr, nullptr, false, sums);
    if (dw_done)
      add_bias(be, dbias, static_cast<const float*>(dbias), sums, 1, out_dim);
    else
      column_reduce_add<float>(be, dbias, N, out_dim, RowOf<__nv_bfloat16>{dout.b16, out_dim});
  } else if (dbias) {
    column_reduce_add<float>(be, dbias, N, out_dim,
                             DoutToBf16<Dout>{rows, out_dim, const_cast<__nv_bfloat16*>(dyb)});  // our copy's space
  }
  if (dx)
    lt_matmul<__nv_bfloat16, DX>(be, false, false, in, N, out_dim, wb, in, dyb, out_dim, dx, in, 1.0f, 0.0f,
                                 static_cast<const DX*>(nullptr), "matmul_backward dx (bf16 operands)");
  if (!dw_done)
    lt_matmul<__nv_bfloat16, float>(be, false, true, in, out_dim, N, xb, in, dyb, out_dim, dw, in, 1.0f, 1.0f,
                                    static_cast<const float*>(nullptr), "matmul_backward dW (bf16 operands)");
}

}  // namespace cuda

// dx and dout may be bf16 with P = bf16 (gradients of activations kept in
// bf16, as autocast keeps them: the dx GEMM rounds its fp32 sums once).
template <MatmulPrecision P = MatmulPrecision::native, class T, class DX, class DO, class X, class W>
void matmul_backward(const Cuda& be, DX* dx, T* dw, T* dbias, const DO* dout, const X* x, const W* w, int N, int in,
                     int out_dim) {
  cuda::check_matmul_types<P, T, X, W>();
  static_assert(std::is_same_v<DX, T> || (P == MatmulPrecision::bf16 && std::is_same_v<DX, __nv_bfloat16>),
                "matmul_backward: dx of the model's type, or bf16 with bf16 products");
  static_assert(std::is_same_v<DO, T> || (P == MatmulPrecision::bf16 && std::is_same_v<DO, __nv_bfloat16>),
                "matmul_backward: dout of the model's type, or bf16 with bf16 products");
  if (N <= 0) return;
  if constexpr (P == MatmulPrecision::bf16) {
    using D = cuda::plain_t<DO>;
    const auto* d = static_cast<const D*>(dout);
    const float* f32 = nullptr;
    if constexpr (std::is_same_v<D, float>) f32 = d;
    cuda::matmul_backward_bf16(be, static_cast<cuda::plain_t<DX>*>(dx), dw, dbias,
                               cuda::Bf16Operand(d, std::size_t(N) * out_dim), cuda::StoredDout{f32}, x, w, N, in,
                               out_dim);
  } else {
    if (dx)
      cuda::lt_matmul<T>(be, false, false, in, N, out_dim, w, in, dout, out_dim, dx, in, T(1), T(0), nullptr,
                         "matmul_backward dx");
    cuda::lt_matmul<T>(be, false, true, in, out_dim, N, x, in, dout, out_dim, dw, in, T(1), T(1), nullptr,
                       "matmul_backward dW");
    if (dbias) cuda::column_reduce_add<cuda::Acc<T>>(be, dbias, N, out_dim, cuda::RowOf<T>{dout, out_dim});
  }
}

namespace cuda {
template <int M, class A, class F>
struct RepeatedSum {  // f's value as each of M sums
  F f;
  __device__ ColumnSums<A, M> operator()(int n, int j) const {
    const A v = f(n, j);
    ColumnSums<A, M> s;
#pragma unroll
    for (int m = 0; m < M; ++m) s.v[m] = v;
    return s;
  }
};
}  // namespace cuda

// The bias gradients of layers that read one output gradient (a
// parallel-residual block's attention projection and MLP output):
// dbias[k] += Σ_n dout[n, ·] for each k, in one pass over dout. Returns dout
// as the layers' products read it: dout itself where O is T, else its bf16
// copy in `copy`, written by the same pass (pass it to matmul_backward with
// no bias).
template <class T, class O, std::size_t M>
const O* bias_grads(const Cuda& be, const std::array<T*, M>& dbias, O* copy, const T* dout, int N, int width) {
  constexpr int m = int(M);
  cuda::ColumnOuts<T, m> outs{};
  for (int k = 0; k < m; ++k) outs.p[k] = dbias[std::size_t(k)];
  using A = cuda::Acc<T>;
  if constexpr (std::is_same_v<cuda::plain_t<O>, T>) {
    cuda::column_reduce_add<A, m>(be, outs, N, width, cuda::RepeatedSum<m, A, cuda::RowOf<T>>{{dout, width}});
    return dout;
  } else {
    static_assert(std::is_same_v<T, float> && std::is_same_v<cuda::plain_t<O>, __nv_bfloat16>,
                  "bias_grads: an fp32 gradient with a bf16 copy");
    using F = cuda::DoutToBf16<cuda::StoredDout>;
    cuda::column_reduce_add<A, m>(be, outs, N, width,
                                  cuda::RepeatedSum<m, A, F>{F{cuda::StoredDout{dout}, width, copy}});
    return copy;
  }
}

// The backward of the MLP's second layer y = GELU(pre)·Wᵀ (+ b: the caller
// sums its gradient, see bias_grads): dW += doutᵀ·gel (gel: the stored GELU
// output) and, into dh, the gradient of the GELU's output, dout·W, or, where
// the GELU's backward is fused into that product, of its input,
// (dout·W) ⊙ GELU'(pre). Returns true in the second case; pass it on to
// gelu_matmul_backward as through_gelu. Fused for the tanh GELU with bf16
// products and bf16 dout, dh and pre (cuBLASLt's DGELU epilogue: GELU' of
// the fp32 product, rounded once), where cuBLASLt has an algorithm for it.
template <MatmulPrecision P, Gelu G, class T, class DH, class DO, class X, class Pre, class W>
bool matmul_backward_into_gelu(const Cuda& be, DH* dh, T* dw, const DO* dout, const X* gel, const Pre* pre,
                               const W* w, int N, int in, int out_dim) {
  using bf16 = __nv_bfloat16;
  using cuda::plain_t;
  if constexpr (P == MatmulPrecision::bf16 && G == Gelu::tanh && std::is_same_v<plain_t<DH>, bf16> &&
                std::is_same_v<plain_t<DO>, bf16> && std::is_same_v<plain_t<Pre>, bf16>) {
    cuda::check_matmul_types<P, T, X, W>();
    if (N <= 0) return false;
    const auto [xb, wb] =
        cuda::to_bf16_operands<2>(be, {{{gel, std::size_t(N) * in}, {w, std::size_t(out_dim) * in}}});
    const bf16* const d = dout;
    bf16* const h = dh;
    if (cuda::lt_matmul_try<bf16, bf16>(be, false, false, in, N, out_dim, wb, in, d, out_dim, h, in, 1.0f, 0.0f,
                                        nullptr, nullptr, static_cast<const bf16*>(pre), true)) {
      cuda::lt_matmul<bf16, float>(be, false, true, in, out_dim, N, xb, in, d, out_dim, dw, in, 1.0f, 1.0f,
                                   static_cast<const float*>(nullptr), "matmul_backward_into_gelu dW");
      return true;
    }
  }
  matmul_backward<P>(be, dh, dw, static_cast<T*>(nullptr), dout, gel, w, N, in, out_dim);
  return false;
}

// The backward of y = x·Wᵀ + b followed by a GELU: dy = dgelu ⊙ gelu'(pre)
// (pre = the GELU's input), then matmul_backward with dout = dy; dgelu is
// scratch afterwards (as on the CPU). With bf16 operands and a bias, dy is
// never stored: the bias-gradient pass computes it, sums it and leaves its
// bf16 copy for the GEMMs (one pass instead of three over [N, out]). dgelu
// and pre may be bf16 there (bf16 models keep them so). through_gelu: dgelu
// already holds dy (matmul_backward_into_gelu returned true).
template <MatmulPrecision P, Gelu G, class T, class DX, class DY, class Pre, class X, class W>
void gelu_matmul_backward(const Cuda& be, DX* dx, T* dw, T* dbias, DY* dgelu, const Pre* pre, const X* x, const W* w,
                          int N, int in, int out_dim, bool through_gelu = false) {
  if (through_gelu) {
    matmul_backward<P>(be, dx, dw, dbias, static_cast<const DY*>(dgelu), x, w, N, in, out_dim);
    return;
  }
  if constexpr (P == MatmulPrecision::bf16) {
    cuda::check_matmul_types<P, T, X, W>();
    if (N > 0 && dbias) {
      cuda::matmul_backward_bf16(be, static_cast<cuda::plain_t<DX>*>(dx), dw, dbias,
                                 cuda::Bf16Operand(static_cast<const float*>(nullptr), std::size_t(N) * out_dim),
                                 cuda::GeluDout<G, cuda::plain_t<Pre>, cuda::plain_t<DY>>{dgelu, pre}, x, w, N, in,
                                 out_dim);
      return;
    }
  }
  if constexpr (!std::is_same_v<DY, T> || !std::is_same_v<DX, T>) {
    fail("gelu_matmul_backward: bf16 gradients need the fused path (bf16 products and a bias)");
  } else {
    gelu_backward<G>(be, dgelu, pre, dgelu, std::size_t(N) * out_dim);
    matmul_backward<P>(be, dx, dw, dbias, static_cast<const T*>(dgelu), x, w, N, in, out_dim);
  }
}

// bf16 compute: bf16 activations and weights (the bf16
// copy of the fp32 master weights), fp32 accumulation inside the GEMM, bf16
// outputs; the parameter gradients dW, db stay fp32 (the GEMM reads bf16 and
// accumulates into fp32 D directly, beta = 1).
inline void matmul_forward(const Cuda& be, __nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* w,
                           const __nv_bfloat16* bias, int N, int in, int out_dim) {
  if (N <= 0) return;
  cuda::lt_matmul<__nv_bfloat16>(be, true, false, out_dim, N, in, w, in, x, in, out, out_dim, 1.0f, 0.0f, bias,
                                 "matmul_forward (bf16)");
}

inline void matmul_backward(const Cuda& be, __nv_bfloat16* dx, float* dw, float* dbias, const __nv_bfloat16* dout,
                            const __nv_bfloat16* x, const __nv_bfloat16* w, int N, int in, int out_dim) {
  if (N <= 0) return;
  if (dx)
    cuda::lt_matmul<__nv_bfloat16>(be, false, false, in, N, out_dim, w, in, dout, out_dim, dx, in, 1.0f, 0.0f,
                                   static_cast<const __nv_bfloat16*>(nullptr), "matmul_backward dx (bf16)");
  cuda::lt_matmul<__nv_bfloat16, float>(be, false, true, in, out_dim, N, x, in, dout, out_dim, dw, in, 1.0f, 1.0f,
                                        static_cast<const float*>(nullptr), "matmul_backward dW (bf16 -> fp32)");
  if (dbias) cuda::column_reduce_add<float>(be, dbias, N, out_dim, cuda::RowOf<__nv_bfloat16>{dout, out_dim});
}

}  // namespace doremi::backend

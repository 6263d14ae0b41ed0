// The CUDA runtime and cuBLASLt calls of doremi/backend/cuda/cuda.hpp, on
// host memory: with these, backend::Cuda's context, DeviceBuffer, copies and
// layer functions (kernels launched through cuda_emu.hpp) run on machines
// without a GPU or driver. cuBLASLt's matrix products are computed here on
// the host (plain loops, sums in double), with the descriptor attributes
// matmul.hpp sets (transposes, bias, GELU_AUX(_BIAS), DGELU and BGRADB epilogues).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
// As an H100/H200: compute capability 9.0, 227 KB of shared memory per block.
// DOREMI_EMU_CC_MAJOR (e.g. 7) poses as an older device (no tensor-core
// attention: the fp32 kernels run).
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  const char* major = std::getenv("DOREMI_EMU_CC_MAJOR");
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *v = major ? std::atoi(major) : 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = 227 * 1024; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
cudaError_t cudaGetLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "error (emulated runtime)"; }
const char* cudaGetErrorName(cudaError_t) { return "cudaError (emulated runtime)"; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = nullptr;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
// Device memory is host memory; cudaMemGetInfo reports a 16 GiB device less
// the bytes live in cudaMalloc allocations, and emu::device_allocations()
// (cuda_emu.hpp) counts the cudaMalloc calls, so tests can see allocations.
namespace {
constexpr std::size_t fake_device_bytes = std::size_t(16) << 30;
std::unordered_map<void*, std::size_t>& live_allocations() {
  static std::unordered_map<void*, std::size_t> m;
  return m;
}
std::size_t live_bytes = 0, malloc_calls = 0, refused_size = 0;
}  // namespace
cudaError_t cudaMalloc(void** p, size_t n) {
  if (refused_size && n == refused_size) {  // emu::refuse_allocations_of
    *p = nullptr;
    return cudaErrorMemoryAllocation;
  }
  *p = std::malloc(n);
  if (!*p) return cudaErrorMemoryAllocation;
  live_allocations()[*p] = n;
  live_bytes += n;
  ++malloc_calls;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (const auto it = live_allocations().find(p); it != live_allocations().end()) {
    live_bytes -= it->second;
    live_allocations().erase(it);
  }
  std::free(p);
  return cudaSuccess;
}
// What bench_gpu_step prints of the device (the emulator's smoke run of it).
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  *prop = cudaDeviceProp{};
  std::strncpy(prop->name, "CPU emulator", sizeof prop->name - 1);
  prop->multiProcessorCount = 1;
  prop->totalGlobalMem = fake_device_bytes;
  return cudaDeviceGetAttribute(&prop->major, cudaDevAttrComputeCapabilityMajor, device);
}
cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  *total = fake_device_bytes;
  *free = fake_device_bytes - live_bytes;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  std::memcpy(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  std::memset(p, v, n);
  return cudaSuccess;
}

}  // extern "C"

// Events record the host's clock: work on the emulated stream runs when it is issued.
struct CUevent_st {
  std::chrono::steady_clock::time_point t;
};
extern "C" {
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st{};
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  e->t = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
}  // extern "C"

namespace {
int gemm_algorithms = 1, fastest_gemm = -1, last_gemm = -1;
}  // namespace

namespace emu {
std::size_t device_allocations() { return malloc_calls; }
void set_gemm_algorithms(int count, int fastest) {
  gemm_algorithms = count;
  fastest_gemm = fastest;
}
int last_gemm_algorithm() { return last_gemm; }
void refuse_allocations_of(std::size_t bytes) { refused_size = bytes; }
}  // namespace emu

namespace {

struct Desc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  cudaDataType_t bias_type = CUDA_R_32F;
  void* aux = nullptr;  // GELU_AUX: the GELU's input, D's type and layout with leading dimension aux_ld
  std::int64_t aux_ld = 0;
};
struct Layout {
  cudaDataType_t type;
  std::uint64_t rows, cols;
  std::int64_t ld;
};

double load(cudaDataType_t t, const void* p, std::size_t i) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    case CUDA_R_16BF: return double(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
    default: std::abort();
  }
}
void store(cudaDataType_t t, void* p, std::size_t i, double v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = float(v); break;
    case CUDA_R_64F: static_cast<double*>(p)[i] = v; break;
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(float(v)); break;
    default: std::abort();
  }
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
  *d = reinterpret_cast<cublasLtMatmulDesc_t>(new Desc{compute, scale});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t bytes) {
  auto& desc = *reinterpret_cast<Desc*>(d);
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: std::memcpy(&desc.ta, buf, bytes); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: std::memcpy(&desc.tb, buf, bytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: std::memcpy(&desc.epilogue, buf, bytes); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: std::memcpy(&desc.bias, buf, bytes); break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: std::memcpy(&desc.bias_type, buf, bytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: std::memcpy(&desc.aux, buf, bytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: std::memcpy(&desc.aux_ld, buf, bytes); break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete reinterpret_cast<Desc*>(d);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  *l = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete reinterpret_cast<Layout*>(l);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  *p = reinterpret_cast<cublasLtMatmulPreference_t>(new char);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete reinterpret_cast<char*>(p);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void*, size_t) {
  return CUBLAS_STATUS_SUCCESS;
}
// DOREMI_EMU_NO_BIAS_EPILOGUE=1: no algorithm for bias or GELU epilogues, as
// cuBLASLt may answer for some shapes and alignments (the callers' fallbacks
// then run).
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t* r, int* found) {
  const char* no_bias = std::getenv("DOREMI_EMU_NO_BIAS_EPILOGUE");
  const bool epilogue = reinterpret_cast<const Desc*>(op)->epilogue != CUBLASLT_EPILOGUE_DEFAULT;
  *found = epilogue && no_bias && std::string_view(no_bias) == "1" ? 0 : std::min(requested, gemm_algorithms);
  for (int i = 0; i < std::max(*found, 1); ++i) {
    r[i] = {};
    r[i].algo.data[0] = std::uint64_t(i);
    r[i].state = CUBLAS_STATUS_SUCCESS;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// Column-major D = alpha·op(A)·op(B) + beta·C (+ bias[row]).
cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t op, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo, void*, size_t,
                              cudaStream_t) {
  const auto& d = *reinterpret_cast<const Desc*>(op);
  last_gemm = int(algo->data[0]);
  if (fastest_gemm >= 0 && last_gemm != fastest_gemm) {  // a slower algorithm: a millisecond more
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
    while (std::chrono::steady_clock::now() < until) {
    }
  }
  const auto &a = *reinterpret_cast<const Layout*>(Adesc), &b = *reinterpret_cast<const Layout*>(Bdesc);
  const auto &c = *reinterpret_cast<const Layout*>(Cdesc), &dl = *reinterpret_cast<const Layout*>(Ddesc);
  const bool ta = d.ta == CUBLAS_OP_T, tb = d.tb == CUBLAS_OP_T;
  const std::uint64_t m = dl.rows, n = dl.cols, k = ta ? a.rows : a.cols;
  if ((ta ? a.cols : a.rows) != m || (tb ? b.rows : b.cols) != n || (tb ? b.cols : b.rows) != k ||
      c.rows != m || c.cols != n)
    return CUBLAS_STATUS_INVALID_VALUE;
  const double al = load(d.scale, alpha, 0), be = load(d.scale, beta, 0);
  const bool gelu = d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX;
  const bool dgelu = d.epilogue == CUBLASLT_EPILOGUE_DGELU;
  const bool bias = d.epilogue == CUBLASLT_EPILOGUE_BIAS || d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const bool bgradb = d.epilogue == CUBLASLT_EPILOGUE_BGRADB;
  if (!bias && !gelu && !dgelu && !bgradb && d.epilogue != CUBLASLT_EPILOGUE_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (bgradb && !d.bias) return CUBLAS_STATUS_INVALID_VALUE;
  if ((gelu || dgelu) && (!d.aux || d.aux_ld < std::int64_t(m) || d.aux_ld % 8 != 0))
    return CUBLAS_STATUS_INVALID_VALUE;
  std::vector<double> rows(m * k), cols(n * k);  // op(A)'s rows and op(B)'s columns, contiguous
  for (std::uint64_t i = 0; i < m; ++i)
    for (std::uint64_t p = 0; p < k; ++p) rows[i * k + p] = load(a.type, A, ta ? i * a.ld + p : p * a.ld + i);
  for (std::uint64_t j = 0; j < n; ++j)
    for (std::uint64_t p = 0; p < k; ++p) cols[j * k + p] = load(b.type, B, tb ? p * b.ld + j : j * b.ld + p);
  for (std::uint64_t j = 0; j < n; ++j)
    for (std::uint64_t i = 0; i < m; ++i) {
      double s = 0;
      for (std::uint64_t p = 0; p < k; ++p) s += rows[i * k + p] * cols[j * k + p];
      double v = al * s;
      if (be != 0) v += be * load(c.type, C, j * c.ld + i);
      if (bias) v += load(d.bias_type, d.bias, i);
      if (gelu) {  // the GELU's input to aux, the tanh GELU of it to D
        store(dl.type, d.aux, j * std::uint64_t(d.aux_ld) + i, v);
        v = 0.5 * v * (1.0 + std::tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v)));
      }
      if (dgelu) {  // the product times the tanh GELU's derivative at aux
        const double x = load(dl.type, d.aux, j * std::uint64_t(d.aux_ld) + i);
        const double th = std::tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x));
        v *= 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * 0.79788456080286535588 * (1.0 + 3 * 0.044715 * x * x);
      }
      store(dl.type, D, j * dl.ld + i, v);
    }
  if (bgradb)  // bias[j] = Σ_p op(B)[p, j], overwritten
    for (std::uint64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::uint64_t p = 0; p < k; ++p) s += cols[j * k + p];
      store(d.bias_type, const_cast<void*>(d.bias), j, s);
    }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  *h = nullptr;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; }
const char* cublasLtGetStatusName(cublasStatus_t) { return "CUBLAS_STATUS (emulated runtime)"; }
const char* cublasLtGetStatusString(cublasStatus_t) { return "cuBLASLt is not emulated"; }

}  // extern "C"

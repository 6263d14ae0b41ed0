#pragma once
// NcclCommunicator: sums of device buffers across the job's GPUs with NCCL, on
// the model backend's stream (no host round trip, no synchronisation: later
// kernels on that stream see the sums). Bootstrapped over a host Comm (MPI):
// rank 0's ncclUniqueId reaches every rank through all_gather. One GPU per
// rank: the backend's device (pick it with local_gpu(comm)).
//
// Including this header (nvcc, link doremi::nccl) makes all_reduce_gradients
// of backend::Cuda use it; the NCCL communicator is made on first use for the
// backend's device and lives until the program ends.
//
// Failures: NCCL calls are checked; the communicator is non-blocking, and
// wait_ready() polls ncclCommGetAsyncError while NCCL sets up or enqueues
// (bounded: 10 minutes), aborting the communicator and raising on an error.
// A collective already running on the GPU when a peer dies is not
// interrupted here: the launcher ends the job (mpirun does when a rank dies;
// srun with --kill-on-bad-exit=1, as the Slurm scripts pass).
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>

#include "doremi/backend/cuda.hpp"
#include "doremi/core/error.hpp"
#include "doremi/dist/world.hpp"

namespace doremi::dist {

namespace nccl_detail {
inline void check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) fail("{} failed: {} ({})", what, ncclGetErrorString(r), int(r));
}
template <class T>
ncclDataType_t type_of() {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return ncclBfloat16;
  else static_assert(sizeof(T) == 0, "NcclCommunicator: float, double or bf16 buffers");
}
}  // namespace nccl_detail

// The GPU of this rank on its node: local rank modulo the visible GPUs.
inline int local_gpu(const Comm& comm) {
  int n = 0;
  DOREMI_CUDA_CHECK(cudaGetDeviceCount(&n));
  if (n == 0) fail("rank {}: no CUDA device visible", comm.rank());
  return comm.local_rank() % n;
}

class NcclCommunicator {
 public:
  NcclCommunicator(const Comm& host, int device) : rank_(host.rank()), size_(host.size()), device_(device) {
    static_assert(sizeof(ncclUniqueId) % sizeof(std::uint64_t) == 0);
    constexpr std::size_t words = sizeof(ncclUniqueId) / sizeof(std::uint64_t);
    std::uint64_t mine[words] = {};
    ncclUniqueId id;
    if (rank_ == 0) {
      nccl_detail::check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      std::memcpy(mine, &id, sizeof id);
    }
    const std::vector<std::uint64_t> all = host.all_gather(std::span<const std::uint64_t>(mine, words));
    std::memcpy(&id, all.data(), sizeof id);  // rank 0's
    DOREMI_CUDA_CHECK(cudaSetDevice(device_));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // non-blocking: errors are polled, a dead peer cannot hang init
    nccl_detail::check(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config), "ncclCommInitRankConfig");
    wait_ready("ncclCommInitRankConfig");
  }
  ~NcclCommunicator() {
    if (comm_) ncclCommDestroy(comm_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }

  // In place, on `stream`: x[i] = Σ over ranks of x[i] (device memory).
  template <class T>
  void all_reduce_sum(T* x, std::size_t n, cudaStream_t stream) {
    nccl_detail::check(ncclAllReduce(x, x, n, nccl_detail::type_of<T>(), ncclSum, comm_, stream), "ncclAllReduce");
    wait_ready("ncclAllReduce");
  }

 private:
  // Waits while NCCL reports ncclInProgress; an asynchronous error aborts the
  // communicator and raises.
  void wait_ready(const char* what) {
    ncclResult_t st = ncclInProgress;
    const auto t0 = std::chrono::steady_clock::now();
    while (true) {
      nccl_detail::check(ncclCommGetAsyncError(comm_, &st), "ncclCommGetAsyncError");
      if (st != ncclInProgress) break;
      if (std::chrono::steady_clock::now() - t0 > std::chrono::minutes(10)) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        fail("{}: rank {} waited 10 minutes for the other ranks", what, rank_);
      }
      std::this_thread::yield();
    }
    if (st != ncclSuccess) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
      nccl_detail::check(st, what);
    }
  }

  int rank_, size_, device_;
  ncclComm_t comm_ = nullptr;
};

// backend::Cuda's gradient sums go through NCCL (one communicator per process).
template <>
struct DeviceReduce<backend::Cuda> {
  template <class T>
  static void all_reduce_sum(const Comm& comm, backend::Cuda& be, T* data, std::size_t n) {
    static std::unique_ptr<NcclCommunicator> nccl;
    if (!nccl) nccl = std::make_unique<NcclCommunicator>(comm, be.device());
    if (nccl->device() != be.device())
      fail("NCCL: this rank's communicator is on GPU {} but the model is on GPU {}", nccl->device(), be.device());
    nccl->all_reduce_sum(data, n, be.stream());
  }
};

}  // namespace doremi::dist

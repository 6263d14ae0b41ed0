// The NCCL communicator of data-parallel training (dist/nccl.hpp) on one GPU,
// one rank: it bootstraps over the host communicator, sums in place on the
// backend's stream (a one-rank sum is the identity, bit for bit) and the
// trainers' gradient path dispatches to it. Multi-GPU runs: docs/distributed.md.
// Compiled where CMake found MPI and NCCL (doremi::nccl); skips without a GPU.
#ifdef DOREMI_NCCL
#include <doctest/doctest.h>

#include "cuda_test_util.hpp"
#include "doremi/dist/nccl.hpp"

using namespace cuda_test;

TEST_CASE("nccl: one-rank in-place sums on the backend's stream") {
  REQUIRE_GPU();
  const dist::Comm single;  // SingleProcess
  dist::NcclCommunicator nccl(single, gpu().device());
  CHECK(nccl.size() == 1);
  const std::vector<float> h = randn(1000, 5);
  DeviceBuffer<float> d = to_device(h);
  nccl.all_reduce_sum(d.data(), d.size(), gpu().stream());
  std::vector<float> back(h.size());
  backend::cuda::copy_to_host(gpu(), back.data(), d.data(), back.size());
  CHECK(back == h);
  std::vector<double> hd(h.begin(), h.end());
  DeviceBuffer<double> dd = to_device(hd);
  nccl.all_reduce_sum(dd.data(), dd.size(), gpu().stream());
  std::vector<double> backd(hd.size());
  backend::cuda::copy_to_host(gpu(), backd.data(), dd.data(), backd.size());
  CHECK(backd == hd);
}
#endif

#pragma once
// MpiCommunicator: the Communicator over MPI_COMM_WORLD (host buffers). Made
// once per process (dist::world() makes it when the launcher started more than
// one rank); it initialises MPI (MPI_THREAD_FUNNELED: only the thread that
// made it calls MPI) and finalises it when the last copy goes.
//
// Needs <mpi.h> and libmpi: link doremi::mpi (CMake, where find_package(MPI)
// succeeds), which also defines DOREMI_MPI.
//
// Errors: MPI's error handler is MPI_ERRORS_RETURN, and a failing call raises
// doremi::Error naming the call. abort() is MPI_Abort: it ends every rank of the
// job (mpirun / srun then exit non-zero).
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "doremi/core/error.hpp"
#include "doremi/dist/communicator.hpp"

namespace doremi::dist {

namespace mpi_detail {
inline void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("{} failed: {}", what, std::string(msg, std::size_t(len)));
}
// MPI counts are int: large buffers go in chunks of at most 2^30 elements.
constexpr std::size_t max_count = std::size_t(1) << 30;

struct Session {  // MPI_Init .. MPI_Finalize
  bool owns = false;
  Session() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owns = true;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }
  ~Session() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns && !finalized) MPI_Finalize();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};
}  // namespace mpi_detail

class MpiCommunicator {
 public:
  MpiCommunicator() : session_(std::make_shared<mpi_detail::Session>()) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    const LaunchEnv env = LaunchEnv::from_environment();
    if (env.size > 1 && env.size != size_)
      fail("the launcher ({}) started {} processes but MPI sees {} (srun needs MPI support: --mpi=pmix or pmi2; "
           "else launch with mpirun)",
           env.launcher, env.size, size_);
    local_rank_ = env.local_rank;
    // MPI's own view of the node where the launcher's is missing.
    if (env.launcher == "none") {
      MPI_Comm node;
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
      MPI_Comm_rank(node, &local_rank_);
      MPI_Comm_free(&node);
    }
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  std::string name() const { return fmt::format("MPI rank {} of {}", rank_, size_); }

  void all_reduce_sum(std::span<float> x) { sum(x.data(), x.size(), MPI_FLOAT); }
  void all_reduce_sum(std::span<double> x) { sum(x.data(), x.size(), MPI_DOUBLE); }

  std::vector<std::uint64_t> all_gather(std::span<const std::uint64_t> w) {
    std::vector<std::uint64_t> out(w.size() * std::size_t(size_));
    mpi_detail::check(MPI_Allgather(w.data(), int(w.size()), MPI_UINT64_T, out.data(), int(w.size()), MPI_UINT64_T,
                                    MPI_COMM_WORLD),
                      "MPI_Allgather");
    return out;
  }
  void barrier() { mpi_detail::check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  [[noreturn]] void abort(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  void sum(void* p, std::size_t n, MPI_Datatype t) {
    int bytes = 0;
    MPI_Type_size(t, &bytes);
    auto* c = static_cast<char*>(p);
    for (std::size_t at = 0; at < n; at += mpi_detail::max_count) {
      const std::size_t len = std::min(mpi_detail::max_count, n - at);
      mpi_detail::check(MPI_Allreduce(MPI_IN_PLACE, c + at * std::size_t(bytes), int(len), t, MPI_SUM, MPI_COMM_WORLD),
                        "MPI_Allreduce");
    }
  }

  std::shared_ptr<mpi_detail::Session> session_;
  int rank_ = 0, size_ = 1, local_rank_ = 0;
};
static_assert(Communicator<MpiCommunicator>);

}  // namespace doremi::dist

#pragma once
// dist::world(): the process's communicator, made once from the launcher's
// environment (LaunchEnv): more than one rank and DOREMI_MPI defined (link
// doremi::mpi) → MpiCommunicator; one rank → SingleProcess. More than one rank
// in a program built without MPI is an error (it would train W independent
// copies). set_world() replaces it (tests, programs with their own MPI setup).
//
// all_reduce_gradients(comm, backend, span): the gradient sum of a training
// step, in buckets of `bucket_bytes` (one collective per bucket, so a large
// model never needs one buffer-sized message). Host backends (the CPU) go
// through comm; device backends through a DeviceReduce<Backend> specialisation
// (dist/nccl.hpp for backend::Cuda: NCCL on the backend's stream), else an
// error names what to build.
//
// guarded_main(fn) / fail_job(e): on an exception, print it with the rank and,
// in a job of several ranks, MPI_Abort the job, so a rank's error ends every
// rank within MPI's abort time instead of leaving them in a collective.
// start(argc, argv): the command-line programs' start (see there).
#include <algorithm>
#include <cstdio>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

#include "doremi/core/error.hpp"
#include "doremi/dist/communicator.hpp"
#ifdef DOREMI_MPI
#include "doremi/dist/mpi.hpp"
#endif

namespace doremi::dist {

namespace detail {
inline Comm make_world() {
  const LaunchEnv env = LaunchEnv::from_environment();
#ifdef DOREMI_MPI
  if (env.size > 1) return Comm(MpiCommunicator{});
#else
  if (env.size > 1)
    fail("this process is rank {} of {} ({} launcher), but the program was built without MPI (configure with MPI "
         "found: Debian's libopenmpi-dev) and would train {} independent copies",
         env.rank, env.size, env.launcher, env.size);
#endif
  return Comm(SingleProcess{});
}
inline Comm*& world_slot() {
  static Comm* w = nullptr;
  return w;
}
}  // namespace detail

inline const Comm& world() {
  Comm*& w = detail::world_slot();
  if (!w) {
    static Comm made = detail::make_world();
    w = &made;
  }
  return *w;
}
inline void set_world(Comm& c) { detail::world_slot() = &c; }

// Device backends' gradient sums: specialise with
//   static void all_reduce_sum(const Comm&, Backend&, T* device_data, std::size_t n);
// before any trainer of that backend is instantiated (include its header first).
template <class Backend>
struct DeviceReduce {};

inline constexpr std::size_t default_bucket_bytes = std::size_t(32) << 20;

template <class Backend, class T>
void all_reduce_gradients(const Comm& comm, Backend& be, std::span<T> g,
                          std::size_t bucket_bytes = default_bucket_bytes) {
  if (comm.size() == 1 || g.empty()) return;
  if constexpr (requires { DeviceReduce<Backend>::all_reduce_sum(comm, be, g.data(), g.size()); }) {
    DeviceReduce<Backend>::all_reduce_sum(comm, be, g.data(), g.size());
  } else if constexpr (requires { requires Backend::host_memory == false; }) {
    fail("data-parallel training on the {} backend needs its device communicator (include doremi/dist/nccl.hpp and "
         "link doremi::nccl)",
         Backend::name);
  } else {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "all_reduce_gradients: float or double gradients");
    const std::size_t step = std::max<std::size_t>(1, bucket_bytes / sizeof(T));
    for (std::size_t at = 0; at < g.size(); at += step)
      comm.all_reduce_sum(g.subspan(at, std::min(step, g.size() - at)));
  }
}

// A program's error path: prints "error: ..." (naming the rank in a job of
// several) and, in such a job, ends every rank (MPI_Abort); else returns 1.
// Prints "error: message" (with the rank in a job of several ranks, which it
// then aborts) and returns 1, the exit status.
inline int report_error(std::string_view message) {
  const Comm* w = detail::world_slot();
  const bool several = w && w->size() > 1;
  if (several)
    fmt::print(stderr, "error (rank {} of {}): {}\n", w->rank(), w->size(), message);
  else
    fmt::print(stderr, "error: {}\n", message);
  std::fflush(stderr);
  if (several) w->abort(1);
  return 1;
}
inline int fail_job(const std::exception& e) { return report_error(e.what()); }

template <class F>
int guarded_main(F&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return fail_job(e);
  }
}

// A command-line program's data-parallel start: makes world() (MPI under
// mpirun/srun), checks that every rank got the same command line (error
// naming the first rank that did not), and on ranks other than 0 sends
// stdout to /dev/null (results print once; errors and stderr stay).
inline const Comm& start(int argc, char** argv) {
  const Comm& w = world();
  if (w.size() == 1) return w;
  std::string line;
  for (int i = 0; i < argc; ++i) line += std::string(argv[i]) + '\0';
  check_same(w, "start-up", {{"command line", fingerprint(line)}});
  if (!w.is_root() && !std::freopen("/dev/null", "w", stdout)) fail("rank {}: cannot silence stdout", w.rank());
  return w;
}

}  // namespace doremi::dist

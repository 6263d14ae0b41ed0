#pragma once
// The communicator seam of data-parallel training (docs/distributed.md).
//
// A communicator connects the W processes ("ranks") of one job. The trainers
// and the evaluation use it for
//   * sums of host buffers across ranks (per-domain totals, losses, token counts;
//     on the CPU backend the gradients too),
//   * a gather of 64-bit words (the start-up fingerprints),
//   * a barrier (rank 0 has finished writing a checkpoint) and an abort that
//     ends every rank (a failing rank never leaves the others waiting).
// Contract: every rank calls the same collectives in the same order with the
// same sizes; after all_reduce_sum every rank holds bit-identical sums.
//
//   doremi::dist::Comm comm = doremi::dist::world();  // from the launcher's environment
//   comm.all_reduce_sum(std::span<double>(totals));
//
// Implementations: SingleProcess (no dependency: world size 1, every
// collective is the identity; what runs without a launcher), MpiCommunicator
// (dist/mpi.hpp, built where DOREMI_MPI is defined: link doremi::mpi) and, for
// device buffers, NcclCommunicator (dist/nccl.hpp, nvcc with doremi::nccl).
// Comm holds any of them (shared; copies name the same communicator).
#include <concepts>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "doremi/core/error.hpp"

namespace doremi::dist {

template <class C>
concept Communicator = requires(C& c, const C& cc, std::span<float> f, std::span<double> d,
                                std::span<const std::uint64_t> w) {
  { cc.rank() } -> std::convertible_to<int>;
  { cc.size() } -> std::convertible_to<int>;
  { cc.local_rank() } -> std::convertible_to<int>;
  { cc.name() } -> std::convertible_to<std::string>;
  c.all_reduce_sum(f);
  c.all_reduce_sum(d);
  { c.all_gather(w) } -> std::same_as<std::vector<std::uint64_t>>;
  c.barrier();
  c.abort(1);
};

// Where this process sits in its job, as the launcher tells it: OpenMPI's
// OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK}, then Slurm's SLURM_PROCID,
// SLURM_STEP_NUM_TASKS, SLURM_LOCALID (srun), then
// PMI_RANK/PMI_SIZE (MPICH, Intel MPI); none: rank 0 of 1.
struct LaunchEnv {
  int rank = 0, size = 1, local_rank = 0;
  std::string launcher = "none";

  static LaunchEnv from_environment() {
    auto num = [](const char* var) -> int {
      const char* v = std::getenv(var);
      if (!v) return -1;
      char* end = nullptr;
      const long x = std::strtol(v, &end, 10);
      if (end == v || *end != '\0' || x < 0 || x > (1 << 24))
        fail("launcher environment: {}='{}' is not a non-negative integer", var, v);
      return int(x);
    };
    const struct {
      const char *rank, *size, *local, *who;
    } sets[] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OpenMPI"},
                // an srun step (a batch script itself also has SLURM_NTASKS, but is one process)
                {"SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "Slurm"},
                {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "PMI"}};
    for (const auto& s : sets) {
      const int r = num(s.rank), n = num(s.size);
      if (r < 0 || n < 0) continue;
      if (n == 0 || r >= n) fail("launcher environment ({}): rank {} of {} processes", s.who, r, n);
      const int l = num(s.local);
      return {r, n, l < 0 ? 0 : l, s.who};
    }
    return {};
  }
};

// World size 1: collectives are the identity, abort ends the process.
class SingleProcess {
 public:
  int rank() const { return 0; }
  int size() const { return 1; }
  int local_rank() const { return 0; }
  std::string name() const { return "single process"; }
  void all_reduce_sum(std::span<float>) {}
  void all_reduce_sum(std::span<double>) {}
  std::vector<std::uint64_t> all_gather(std::span<const std::uint64_t> w) { return {w.begin(), w.end()}; }
  void barrier() {}
  [[noreturn]] void abort(int code) { std::_Exit(code); }
};
static_assert(Communicator<SingleProcess>);

// A shared, type-erased handle to any Communicator.
class Comm {
 public:
  Comm() : Comm(SingleProcess{}) {}
  template <Communicator C>
    requires(!std::same_as<std::remove_cvref_t<C>, Comm>)
  Comm(C c) : impl_(std::make_shared<Model<C>>(std::move(c))) {}
  template <Communicator C>
  explicit Comm(std::shared_ptr<C> c) : impl_(std::make_shared<Shared<C>>(std::move(c))) {}

  int rank() const { return impl_->rank(); }
  int size() const { return impl_->size(); }
  int local_rank() const { return impl_->local_rank(); }
  std::string name() const { return impl_->name(); }
  bool is_root() const { return rank() == 0; }
  void all_reduce_sum(std::span<float> x) const { if (size() > 1) impl_->sum(x); }
  void all_reduce_sum(std::span<double> x) const { if (size() > 1) impl_->sum(x); }
  std::vector<std::uint64_t> all_gather(std::span<const std::uint64_t> w) const { return impl_->gather(w); }
  void barrier() const { if (size() > 1) impl_->barrier(); }
  [[noreturn]] void abort(int code) const { impl_->abort(code); std::_Exit(code); }

 private:
  struct Iface {
    virtual ~Iface() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    virtual int local_rank() const = 0;
    virtual std::string name() const = 0;
    virtual void sum(std::span<float>) = 0;
    virtual void sum(std::span<double>) = 0;
    virtual std::vector<std::uint64_t> gather(std::span<const std::uint64_t>) = 0;
    virtual void barrier() = 0;
    virtual void abort(int) = 0;
  };
  template <class C>
  struct Model final : Iface {
    C c;
    explicit Model(C x) : c(std::move(x)) {}
    C& get() { return c; }
    const C& get() const { return c; }
    int rank() const override { return get().rank(); }
    int size() const override { return get().size(); }
    int local_rank() const override { return get().local_rank(); }
    std::string name() const override { return get().name(); }
    void sum(std::span<float> x) override { get().all_reduce_sum(x); }
    void sum(std::span<double> x) override { get().all_reduce_sum(x); }
    std::vector<std::uint64_t> gather(std::span<const std::uint64_t> w) override { return get().all_gather(w); }
    void barrier() override { get().barrier(); }
    void abort(int code) override { get().abort(code); }
  };
  template <class C>
  struct Shared final : Iface {
    std::shared_ptr<C> p;
    explicit Shared(std::shared_ptr<C> x) : p(std::move(x)) {}
    int rank() const override { return p->rank(); }
    int size() const override { return p->size(); }
    int local_rank() const override { return p->local_rank(); }
    std::string name() const override { return p->name(); }
    void sum(std::span<float> x) override { p->all_reduce_sum(x); }
    void sum(std::span<double> x) override { p->all_reduce_sum(x); }
    std::vector<std::uint64_t> gather(std::span<const std::uint64_t> w) override { return p->all_gather(w); }
    void barrier() override { p->barrier(); }
    void abort(int code) override { p->abort(code); }
  };
  std::shared_ptr<Iface> impl_;
};

// ---- consistency -----------------------------------------------------------

// FNV-1a, 64 bits: the fingerprint of a setting's text.
inline std::uint64_t fingerprint(std::string_view s, std::uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}
template <class T>
std::uint64_t fingerprint_bytes(std::span<const T> x, std::uint64_t h = 0xcbf29ce484222325ull) {
  return fingerprint(std::string_view(reinterpret_cast<const char*>(x.data()), x.size_bytes()), h);
}

// Compares named settings across ranks (each item: what, its text or hash);
// every rank must pass the same names in the same order. Raises on every rank,
// naming the first rank and the items that differ from rank 0's.
inline void check_same(const Comm& comm, std::string_view context,
                       const std::vector<std::pair<std::string, std::uint64_t>>& items) {
  if (comm.size() == 1) return;
  std::vector<std::uint64_t> mine{std::uint64_t(items.size())};
  for (const auto& [name, h] : items) mine.push_back(fingerprint(name, h));
  const std::size_t n = mine.size();
  std::vector<std::uint64_t> mine_padded = mine;
  const std::vector<std::uint64_t> all = comm.all_gather(mine_padded);
  if (all.size() != n * std::size_t(comm.size()))
    fail("{}: the ranks compare different numbers of settings (a different program version on some rank?)",
         context);
  for (int r = 1; r < comm.size(); ++r) {
    const std::uint64_t* theirs = all.data() + std::size_t(r) * n;
    if (theirs[0] != all[0])
      fail("{}: rank {} compares {} settings, rank 0 compares {} (a different program version?)", context, r,
           theirs[0], all[0]);
    std::string diff;
    for (std::size_t i = 0; i < items.size(); ++i)
      if (theirs[i + 1] != all[i + 1]) diff += (diff.empty() ? "" : ", ") + items[i].first;
    if (!diff.empty())
      fail("{}: rank {} was started with other settings or inputs than rank 0: {} differ{} (every rank must run "
           "the same command on the same data)",
           context, r, diff, diff.find(',') == std::string::npos ? "s" : "");
  }
}

}  // namespace doremi::dist

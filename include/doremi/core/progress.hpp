#pragma once
// A one-line progress bar for long loops on a terminal; on a pipe or file it
// prints a plain line every `every` updates instead, so logs stay readable.
#include <chrono>
#include <cstdio>
#include <string>

#include <fmt/format.h>
#include <unistd.h>

namespace doremi {

class ProgressBar {
 public:
  ProgressBar(std::string label, long total, long every = 10, std::FILE* out = stderr)
      : label_(std::move(label)), total_(total), every_(every > 0 ? every : 1), out_(out),
        tty_(::isatty(::fileno(out)) != 0), start_(std::chrono::steady_clock::now()) {}

  // `done` items finished (of total); `info` is shown after the counts.
  void update(long done, const std::string& info) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double eta = done > done0_ ? elapsed / double(done - done0_) * double(total_ - done) : 0.0;
    if (tty_) {
      constexpr int width = 24;
      const int fill = total_ > 0 ? int(width * double(done) / double(total_)) : 0;
      fmt::print(out_, "\r{} [{:=<{}}{: <{}}] {}/{} {} eta {:.0f}s\x1b[K", label_, "", fill, "", width - fill, done,
                 total_, info, eta);
      if (done >= total_) fmt::print(out_, "\n");
      std::fflush(out_);
    } else if (done % every_ == 0 || done >= total_) {
      fmt::print(out_, "{} {}/{} {} eta {:.0f}s\n", label_, done, total_, info, eta);
      std::fflush(out_);
    }
  }
  // The first `done` items were finished before this bar started (a resumed run).
  void resumed_at(long done) { done0_ = done; }

 private:
  std::string label_;
  long total_, every_;
  std::FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  long done0_ = 0;
};

}  // namespace doremi

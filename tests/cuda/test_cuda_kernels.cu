// backend::Cuda against backend::Cpu: every kernel runs on the same random
// inputs on both backends and the results are compared with tolerances that
// fit fp32 (different summation orders, no TF32). Without a GPU every case
// that needs one skips with a MESSAGE; the no-device error path runs here.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <limits>

#include "cuda_test_util.hpp"

using namespace doremi;
using namespace cuda_test;
using backend::Cpu;
using backend::Cuda;
using backend::cuda::DeviceBuffer;

TEST_CASE("cuda: cuda_available never throws; a Cuda backend without a device raises doremi::Error") {
  bool available = false;
  CHECK_NOTHROW(available = backend::cuda_available());
  if (available) {
    MESSAGE("a CUDA device is present: the no-device error path is not exercised");
    CHECK_THROWS_AS(Cuda(1 << 20), Error);  // no machine has that many devices
    return;
  }
  try {
    Cuda be = {};  // as Model's `Backend be = {}` default argument does
    FAIL("constructing backend::Cuda without a device did not throw");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("backend::Cuda") != std::string::npos);
    CHECK(msg.find("cpu") != std::string::npos);  // says what to use instead
  }
}

TEST_CASE("cuda: error checks name the call and CUDA's message") {
  try {
    DOREMI_CUDA_CHECK(cudaErrorInvalidValue);
    FAIL("no throw");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("cudaErrorInvalidValue") != std::string::npos);
  }
}

TEST_CASE("cuda: running out of GPU memory raises doremi::Error with the sizes and what to do") {
  REQUIRE_GPU();
  try {
    DeviceBuffer<float> huge(std::size_t(1) << 50);  // 4 PiB
    FAIL("a 4 PiB allocation did not throw");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("out of GPU memory") != std::string::npos);
    CHECK(msg.find("4194304.00 GiB requested") != std::string::npos);
    CHECK(msg.find("grad_accum") != std::string::npos);
  }
  DeviceBuffer<float> after(16, 1.0f);  // the device is still usable
  CHECK(to_host(after) == std::vector<float>(16, 1.0f));
}

TEST_CASE("cuda: DeviceBuffer sizes, fills and keeps its contents across resize") {
  REQUIRE_GPU();
  DeviceBuffer<float> b(5, 0.0f);
  CHECK(b.size() == 5);
  CHECK(to_host(b) == std::vector<float>(5, 0.0f));
  DeviceBuffer<float> c(4, 2.5f);
  CHECK(to_host(c) == std::vector<float>(4, 2.5f));
  const std::vector<float> h{1, 2, 3, 4, 5};
  b = to_device(h);
  b.resize(8);
  const auto back = to_host(b);
  CHECK(std::vector<float>(back.begin(), back.begin() + 5) == h);
  b.resize(2);
  CHECK(to_host(b) == std::vector<float>{1, 2});
  backend::fill(gpu(), b.data(), 7.0f, b.size());
  CHECK(to_host(b) == std::vector<float>{7, 7});
}

TEST_CASE("cuda: embedding forward and backward match the CPU") {
  REQUIRE_GPU();
  const int B = 3, T = 17, C = 40, V = 11;
  std::vector<std::int32_t> tokens(std::size_t(B) * T);
  // Every third position holds token 4: a run of about 20 in sorted order
  // (the deterministic scatter's unrolled loop and its remainder).
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = i % 3 == 0 ? 4 : std::int32_t(Philox::below(V, 5, 1, i));
  const auto wte = randn(std::size_t(V) * C, 1), wpe = randn(std::size_t(T) * C, 2);
  const auto dout = randn(std::size_t(B) * T * C, 3);
  for (bool positions : {true, false}) {
    CAPTURE(positions);
    std::vector<float> out(dout.size()), dwte(wte.size(), 0.5f), dwpe(wpe.size(), -0.25f);
    backend::embedding_forward(Cpu{}, out.data(), tokens.data(), wte.data(), positions ? wpe.data() : nullptr, B, T,
                               C);
    backend::embedding_backward(Cpu{}, dwte.data(), positions ? dwpe.data() : nullptr, dout.data(), tokens.data(), B,
                                T, C);
    auto d_tok = to_device(tokens);
    auto d_wte = to_device(wte), d_wpe = to_device(wpe), d_dout = to_device(dout);
    DeviceBuffer<float> d_out(out.size());
    auto d_dwte = to_device(std::vector<float>(wte.size(), 0.5f));
    auto d_dwpe = to_device(std::vector<float>(wpe.size(), -0.25f));
    backend::embedding_forward(gpu(), d_out.data(), d_tok.data(), d_wte.data(), positions ? d_wpe.data() : nullptr,
                               B, T, C);
    backend::embedding_backward(gpu(), d_dwte.data(), positions ? d_dwpe.data() : nullptr, d_dout.data(),
                                d_tok.data(), B, T, C);
    check_close(to_host(d_out), out, 0, 0, "embedding out");
    check_close(to_host(d_dwte), dwte, 1e-5, 1e-5, "dwte");
    check_close(to_host(d_dwpe), dwpe, 1e-5, 1e-5, "dwpe");
  }
}

TEST_CASE("cuda: embedding_forward_at gathers each token at its own position") {
  REQUIRE_GPU();
  // Generation's embedding: rows at unrelated positions (each row's next position), with and without wpe.
  const int N = 5, C = 40, V = 11, n_ctx = 30;
  const std::vector<std::int32_t> tokens = {3, 10, 0, 3, 7}, positions = {0, 29, 4, 17, 4};
  const auto wte = randn(std::size_t(V) * C, 11), wpe = randn(std::size_t(n_ctx) * C, 12);
  auto d_tok = to_device(tokens), d_pos = to_device(positions);
  auto d_wte = to_device(wte), d_wpe = to_device(wpe);
  for (bool with_wpe : {true, false}) {
    CAPTURE(with_wpe);
    std::vector<float> want(std::size_t(N) * C);
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) {
        const float e = wte[std::size_t(tokens[std::size_t(n)]) * C + c];
        want[std::size_t(n) * C + c] = with_wpe ? e + wpe[std::size_t(positions[std::size_t(n)]) * C + c] : e;
      }
    auto d_out = to_device(std::vector<float>(want.size(), std::numeric_limits<float>::quiet_NaN()));
    backend::embedding_forward_at(gpu(), d_out.data(), d_tok.data(), with_wpe ? d_pos.data() : nullptr,
                                  d_wte.data(), with_wpe ? d_wpe.data() : nullptr, N, C);
    check_close(to_host(d_out), want, 0, 0, "embedding_forward_at");
  }
}

TEST_CASE("cuda: layernorm forward and backward match the CPU") {
  REQUIRE_GPU();
  // One or four channel groups per thread in the backward: 4 or 1 channels
  // at a time (C % 4 == 0 or not), G = 1 up to 1024 groups, else 4.
  for (int C : {40, 96, 771, 1031, 4100}) {
    CAPTURE(C);
    const int N = 133;  // two whole chunks of rows (reduce.hpp) and a part, the last round of 8 a part
    const auto x = randn(std::size_t(N) * C, 11, 2.0f, 0.5f), w = randn(C, 12, 0.5f, 1.0f), b = randn(C, 13, 0.1f);
    const auto dout = randn(std::size_t(N) * C, 14);
    const auto dx0 = randn(std::size_t(N) * C, 15);  // backward accumulates into dx
    std::vector<float> out(x.size()), mean(N), rstd(N), dx = dx0, dw(C, 0.1f), db(C, -0.1f);
    backend::layernorm_forward(Cpu{}, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5);
    backend::layernorm_backward(Cpu{}, dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                                rstd.data(), N, C);
    auto d_x = to_device(x), d_w = to_device(w), d_b = to_device(b), d_dout = to_device(dout), d_dx = to_device(dx0);
    DeviceBuffer<float> d_out(x.size()), d_mean(N), d_rstd(N);
    auto d_dw = to_device(std::vector<float>(C, 0.1f)), d_db = to_device(std::vector<float>(C, -0.1f));
    backend::layernorm_forward(gpu(), d_out.data(), d_mean.data(), d_rstd.data(), d_x.data(), d_w.data(), d_b.data(),
                               N, C, 1e-5);
    backend::layernorm_backward(gpu(), d_dx.data(), d_dw.data(), d_db.data(), d_dout.data(), d_x.data(), d_w.data(),
                                d_mean.data(), d_rstd.data(), N, C);
    check_close(to_host(d_out), out, 1e-5, 1e-5, "layernorm out");
    // bf16 output (Cuda::operand, what the bf16 models store): the fp32 result rounded once.
    DeviceBuffer<__nv_bfloat16> d_outb(x.size());
    backend::layernorm_forward(gpu(), d_outb.data(), d_mean.data(), d_rstd.data(), d_x.data(), d_w.data(), d_b.data(),
                               N, C, 1e-5);
    CHECK(to_float(d_outb) == round_bf16(to_host(d_out)));
    check_close(to_host(d_mean), mean, 1e-5, 1e-5, "mean");
    check_close(to_host(d_rstd), rstd, 1e-6, 1e-5, "rstd");
    check_close(to_host(d_dx), dx, 1e-4, 1e-4, "layernorm dx");
    check_close(to_host(d_dw), dw, 1e-3, 1e-4, "layernorm dw");
    check_close(to_host(d_db), db, 1e-3, 1e-4, "layernorm db");
  }
}

// Two LayerNorms of one input (parallel-residual blocks): one pass each way.
TEST_CASE("cuda: layernorm pair forward and backward match the CPU's pair") {
  REQUIRE_GPU();
  const int N = 75, C = 96;
  const auto x = randn(std::size_t(N) * C, 41, 2.0f, 0.5f), w1 = randn(C, 42, 0.5f, 1.0f), b1 = randn(C, 43, 0.1f);
  const auto w2 = randn(C, 44, 0.5f, 1.0f), b2 = randn(C, 45, 0.1f);
  const auto d1 = randn(std::size_t(N) * C, 46), d2 = randn(std::size_t(N) * C, 47), dx0 = randn(std::size_t(N) * C, 48);
  std::vector<float> o1(x.size()), o2(x.size()), mean(N), rstd(N), dx = dx0;
  std::vector<float> dw1(C, 0.1f), db1(C, 0.2f), dw2(C, 0.3f), db2(C, 0.4f);
  backend::layernorm_pair_forward(Cpu{}, o1.data(), o2.data(), mean.data(), rstd.data(), x.data(), w1.data(),
                                  b1.data(), w2.data(), b2.data(), N, C, 1e-5);
  backend::layernorm_pair_backward(Cpu{}, dx.data(), dw1.data(), db1.data(), dw2.data(), db2.data(), d1.data(),
                                   d2.data(), x.data(), w1.data(), w2.data(), mean.data(), rstd.data(), N, C);
  auto d_x = to_device(x), d_w1 = to_device(w1), d_b1 = to_device(b1), d_w2 = to_device(w2), d_b2 = to_device(b2);
  auto d_d1 = to_device(d1), d_d2 = to_device(d2), d_dx = to_device(dx0);
  auto d_dw1 = to_device(std::vector<float>(C, 0.1f)), d_db1 = to_device(std::vector<float>(C, 0.2f));
  auto d_dw2 = to_device(std::vector<float>(C, 0.3f)), d_db2 = to_device(std::vector<float>(C, 0.4f));
  DeviceBuffer<__nv_bfloat16> d_o1(x.size()), d_o2(x.size());  // as bf16 models keep them
  DeviceBuffer<float> d_mean(N), d_rstd(N);
  backend::layernorm_pair_forward(gpu(), d_o1.data(), d_o2.data(), d_mean.data(), d_rstd.data(), d_x.data(),
                                  d_w1.data(), d_b1.data(), d_w2.data(), d_b2.data(), N, C, 1e-5);
  backend::layernorm_pair_backward(gpu(), d_dx.data(), d_dw1.data(), d_db1.data(), d_dw2.data(), d_db2.data(),
                                   d_d1.data(), d_d2.data(), d_x.data(), d_w1.data(), d_w2.data(), d_mean.data(),
                                   d_rstd.data(), N, C);
  check_close(to_float(d_o1), round_bf16(o1), 1e-5, 1.0 / 128, "pair out 1 (bf16)");
  check_close(to_float(d_o2), round_bf16(o2), 1e-5, 1.0 / 128, "pair out 2 (bf16)");
  check_close(to_host(d_mean), mean, 1e-5, 1e-5, "pair mean");
  check_close(to_host(d_rstd), rstd, 1e-6, 1e-5, "pair rstd");
  check_close(to_host(d_dx), dx, 1e-4, 1e-4, "pair dx");
  check_close(to_host(d_dw1), dw1, 1e-3, 1e-4, "pair dw1");
  check_close(to_host(d_db1), db1, 1e-3, 1e-4, "pair db1");
  check_close(to_host(d_dw2), dw2, 1e-3, 1e-4, "pair dw2");
  check_close(to_host(d_db2), db2, 1e-3, 1e-4, "pair db2");

  // bf16 output gradients (bf16 models keep them so), on both backends,
  // against the CPU's pair on the rounded values in fp32.
  const auto d1r = round_bf16(d1), d2r = round_bf16(d2);
  std::vector<float> dxr = dx0, dw1r(C, 0.1f), db1r(C, 0.2f), dw2r(C, 0.3f), db2r(C, 0.4f);
  backend::layernorm_pair_backward(Cpu{}, dxr.data(), dw1r.data(), db1r.data(), dw2r.data(), db2r.data(), d1r.data(),
                                   d2r.data(), x.data(), w1.data(), w2.data(), mean.data(), rstd.data(), N, C);
  std::vector<backend::cpu::bf16> d1b(d1.size()), d2b(d2.size());
  for (std::size_t i = 0; i < d1.size(); ++i) {
    d1b[i] = backend::cpu::to_bf16(d1[i]);
    d2b[i] = backend::cpu::to_bf16(d2[i]);
  }
  std::vector<float> dxc = dx0, dw1c(C, 0.1f), db1c(C, 0.2f), dw2c(C, 0.3f), db2c(C, 0.4f);
  backend::layernorm_pair_backward(Cpu{}, dxc.data(), dw1c.data(), db1c.data(), dw2c.data(), db2c.data(), d1b.data(),
                                   d2b.data(), x.data(), w1.data(), w2.data(), mean.data(), rstd.data(), N, C);
  check_close(dxc, dxr, 0.0, 0.0, "CPU pair dx from bf16 douts");
  check_close(dw2c, dw2r, 0.0, 0.0, "CPU pair dw2 from bf16 douts");
  check_close(db1c, db1r, 0.0, 0.0, "CPU pair db1 from bf16 douts");
  auto d_d1b = to_device_bf16(d1), d_d2b = to_device_bf16(d2);
  auto d_dxb = to_device(dx0);
  auto d_dw1b = to_device(std::vector<float>(C, 0.1f)), d_db1b = to_device(std::vector<float>(C, 0.2f));
  auto d_dw2b = to_device(std::vector<float>(C, 0.3f)), d_db2b = to_device(std::vector<float>(C, 0.4f));
  backend::layernorm_pair_backward(gpu(), d_dxb.data(), d_dw1b.data(), d_db1b.data(), d_dw2b.data(), d_db2b.data(),
                                   d_d1b.data(), d_d2b.data(), d_x.data(), d_w1.data(), d_w2.data(), d_mean.data(),
                                   d_rstd.data(), N, C);
  check_close(to_host(d_dxb), dxr, 1e-4, 1e-4, "pair dx (bf16 douts)");
  check_close(to_host(d_dw1b), dw1r, 1e-3, 1e-4, "pair dw1 (bf16 douts)");
  check_close(to_host(d_db1b), db1r, 1e-3, 1e-4, "pair db1 (bf16 douts)");
  check_close(to_host(d_dw2b), dw2r, 1e-3, 1e-4, "pair dw2 (bf16 douts)");
  check_close(to_host(d_db2b), db2r, 1e-3, 1e-4, "pair db2 (bf16 douts)");
}

template <Gelu G>
void gelu_case() {
  const std::size_t n = 100003;
  const auto x = randn(n, 21, 3.0f), dout = randn(n, 22);
  std::vector<float> y(n), dx(n);
  backend::gelu_forward<G>(Cpu{}, y.data(), x.data(), n);
  backend::gelu_backward<G>(Cpu{}, dx.data(), x.data(), dout.data(), n);
  auto d_x = to_device(x), d_dout = to_device(dout);
  DeviceBuffer<float> d_y(n);
  backend::gelu_forward<G>(gpu(), d_y.data(), d_x.data(), n);
  backend::gelu_backward<G>(gpu(), d_dout.data(), d_x.data(), d_dout.data(), n);  // in place, as Model calls it
  check_close(to_host(d_y), y, 1e-6, 1e-5, "gelu forward");
  DeviceBuffer<__nv_bfloat16> d_yb(n);  // bf16 output: the fp32 result rounded once
  backend::gelu_forward<G>(gpu(), d_yb.data(), d_x.data(), n);
  CHECK(to_float(d_yb) == round_bf16(to_host(d_y)));
  // Near tanh's saturation (|u| ≈ 8) the CPU's vectorised tanh gives ±1 where
  // others give 1 ulp less; the backward's x·du·dout term scales that to ~1e-5.
  check_close(to_host(d_dout), dx, 3e-5, 1e-5, "gelu backward");
}

TEST_CASE("cuda: gelu (exact and tanh) forward and backward match the CPU") {
  REQUIRE_GPU();
  SUBCASE("exact") { gelu_case<Gelu::exact>(); }
  SUBCASE("tanh") { gelu_case<Gelu::tanh>(); }
}

TEST_CASE("cuda: copy matches the source") {
  REQUIRE_GPU();
  const std::size_t n = 5001;
  const auto a = randn(n, 31);
  auto d_a = to_device(a);
  DeviceBuffer<float> d_copy(n);
  backend::copy(gpu(), d_copy.data(), d_a.data(), n);
  check_close(to_host(d_copy), a, 0, 0, "copy");
}

TEST_CASE("cuda: fp32 -> bf16 conversion rounds as the CPU does, aligned or not, with any tail") {
  REQUIRE_GPU();
  std::vector<float> x = randn(1031, 17);
  x[0] = 1.00390625f;  // exactly between two bf16 values: ties to even
  x[1] = 1.01171875f;
  x[2] = -3.0e38f;
  for (std::size_t offset : {0, 1, 2, 3})
    for (std::size_t n : {1, 3, 4, 7, 1024, 1028}) {
      INFO("offset ", offset, ", n ", n);
      DeviceBuffer<float> d(x.size());
      backend::upload(gpu(), d.data(), x.data(), x.size());
      DeviceBuffer<__nv_bfloat16> b(n + offset);
      backend::convert(gpu(), b.data() + offset, d.data() + offset, n);
      std::vector<__nv_bfloat16> got(n + offset);
      backend::download(gpu(), got.data(), b.data(), got.size());
      std::vector<std::uint16_t> bits(got.size());
      std::memcpy(bits.data(), got.data(), bits.size() * 2);
      bool same = true;
      for (std::size_t i = 0; i < n; ++i)
        same = same && bits[offset + i] == std::uint16_t(backend::cpu::to_bf16(x[offset + i]));
      CHECK(same);
    }
}

TEST_CASE("cuda: matmul (cuBLASLt) forward and backward match the CPU") {
  REQUIRE_GPU();
  struct Shape {
    int N, in, out;
  };
  // Views into the flat parameter buffer are not 256-byte aligned: offset = 1
  // places every matrix and vector 4 bytes past an allocation's start.
  for (std::size_t off : {std::size_t(0), std::size_t(1)})
  for (Shape s : {Shape{64, 32, 96}, Shape{37, 40, 17}, Shape{130, 257, 65}}) {
    for (bool with_bias : {true, false}) {
      CAPTURE(off);
      CAPTURE(s.N);
      CAPTURE(s.in);
      CAPTURE(s.out);
      CAPTURE(with_bias);
      const auto x = randn(std::size_t(s.N) * s.in, 41), w = randn(std::size_t(s.out) * s.in, 42, 0.2f);
      const auto bias = randn(s.out, 43), dout = randn(std::size_t(s.N) * s.out, 44);
      const auto dw0 = randn(w.size(), 45), db0 = randn(s.out, 46);  // backward accumulates into dW, db
      std::vector<float> y(dout.size()), dx(x.size()), dw = dw0, db = db0;
      backend::matmul_forward(Cpu{}, y.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, s.N, s.in,
                              s.out);
      backend::matmul_backward(Cpu{}, dx.data(), dw.data(), with_bias ? db.data() : nullptr, dout.data(), x.data(),
                               w.data(), s.N, s.in, s.out);
      auto d_x = to_device_at(x, off), d_w = to_device_at(w, off), d_bias = to_device_at(bias, off);
      auto d_dout = to_device_at(dout, off), d_dw = to_device_at(dw0, off), d_db = to_device_at(db0, off);
      DeviceBuffer<float> d_y(y.size() + off), d_dx(dx.size() + off);
      backend::matmul_forward(gpu(), d_y.data() + off, d_x.data() + off, d_w.data() + off,
                              with_bias ? d_bias.data() + off : nullptr, s.N, s.in, s.out);
      backend::matmul_backward(gpu(), d_dx.data() + off, d_dw.data() + off, with_bias ? d_db.data() + off : nullptr,
                               d_dout.data() + off, d_x.data() + off, d_w.data() + off, s.N, s.in, s.out);
      check_close(to_host_at(d_y, off), y, 1e-4, 1e-4, "y = x·Wᵀ + b");
      check_close(to_host_at(d_dx, off), dx, 1e-4, 1e-4, "dx");
      // A residual (the models' residual stream) added by the product, into
      // another buffer and in place, on both backends.
      const auto r = randn(y.size(), 47);
      std::vector<float> yr_want(y.size()), yr = r;
      for (std::size_t i = 0; i < y.size(); ++i) yr_want[i] = r[i] + y[i];
      backend::matmul_forward(Cpu{}, yr.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, s.N, s.in,
                              s.out, yr.data());
      check_close(yr, yr_want, 1e-5, 1e-5, "CPU: r + x·Wᵀ + b in place");
      auto d_r = to_device_at(r, off);
      DeviceBuffer<float> d_yr(y.size() + off);
      backend::matmul_forward(gpu(), d_yr.data() + off, d_x.data() + off, d_w.data() + off,
                              with_bias ? d_bias.data() + off : nullptr, s.N, s.in, s.out,
                              static_cast<const float*>(d_r.data() + off));
      check_close(to_host_at(d_yr, off), yr_want, 1e-4, 1e-4, "r + x·Wᵀ + b");
      backend::matmul_forward(gpu(), d_r.data() + off, d_x.data() + off, d_w.data() + off,
                              with_bias ? d_bias.data() + off : nullptr, s.N, s.in, s.out,
                              static_cast<const float*>(d_r.data() + off));
      check_close(to_host_at(d_r, off), yr_want, 1e-4, 1e-4, "r + x·Wᵀ + b in place");
      check_close(to_host_at(d_dw, off), dw, 1e-3, 1e-4, "dW");
      check_close(to_host_at(d_db, off), db, 1e-3, 1e-4, "db");
      // dx = nullptr (the first layer's input needs no gradient) leaves dW, db right.
      auto d_dw2 = to_device_at(dw0, off), d_db2 = to_device_at(db0, off);
      backend::matmul_backward(gpu(), static_cast<float*>(nullptr), d_dw2.data() + off,
                               with_bias ? d_db2.data() + off : nullptr, d_dout.data() + off, d_x.data() + off,
                               d_w.data() + off, s.N, s.in, s.out);
      check_close(to_host_at(d_dw2, off), dw, 1e-3, 1e-4, "dW without dx");
      if (with_bias) check_close(to_host_at(d_db2, off), db, 1e-3, 1e-4, "db without dx");
    }
  }
}

// bf16 in, fp32 accumulation: the CPU reference gets the same bf16-rounded
// inputs in fp32, so the GPU differs only by accumulation order and by the
// final rounding of y and dx to bf16 (8 bits of mantissa: relative 2^-8).
TEST_CASE("cuda: bf16 matmul (fp32 accumulation, fp32 parameter gradients) matches the CPU on bf16-rounded inputs") {
  REQUIRE_GPU();
  const int N = 96, in = 136, out = 72;
  const auto x = round_bf16(randn(std::size_t(N) * in, 81)), w = round_bf16(randn(std::size_t(out) * in, 82, 0.2f));
  const auto bias = round_bf16(randn(out, 83)), dout = round_bf16(randn(std::size_t(N) * out, 84));
  const auto dw0 = randn(w.size(), 85), db0 = randn(out, 86);
  std::vector<float> y(dout.size()), dx(x.size()), dw = dw0, db = db0;
  backend::matmul_forward(Cpu{}, y.data(), x.data(), w.data(), bias.data(), N, in, out);
  backend::matmul_backward(Cpu{}, dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), N, in, out);

  using bf16 = __nv_bfloat16;
  auto d_x = to_device_bf16(x), d_w = to_device_bf16(w), d_bias = to_device_bf16(bias),
       d_dout = to_device_bf16(dout);
  CHECK(to_float(d_x) == x);  // the conversions are exact on bf16 values
  auto d_dw = to_device(dw0), d_db = to_device(db0);
  DeviceBuffer<bf16> d_y(y.size()), d_dx(dx.size());
  backend::matmul_forward(gpu(), d_y.data(), d_x.data(), d_w.data(), d_bias.data(), N, in, out);
  backend::matmul_backward(gpu(), d_dx.data(), d_dw.data(), d_db.data(), d_dout.data(), d_x.data(), d_w.data(), N,
                           in, out);
  check_close(to_float(d_y), y, 1e-2, 1.0 / 128, "y (bf16)");
  check_close(to_float(d_dx), dx, 1e-2, 1.0 / 128, "dx (bf16)");
  check_close(to_host(d_dw), dw, 1e-3, 1e-4, "dW (fp32)");
  check_close(to_host(d_db), db, 1e-3, 1e-4, "db (fp32)");
}

// MatmulPrecision::bf16 with fp32 storage (the GPU models' linear layers):
// operands rounded to bf16 copies, fp32 accumulation and fp32 outputs, the
// bias added in cuBLASLt's epilogue (or a separate pass where that has no
// algorithm). The CPU reference gets the bf16-rounded operands in fp32, so
// only the summation order differs; views misaligned as in the flat buffer.
TEST_CASE("cuda: matmul with bf16 operands and fp32 storage matches the CPU on bf16-rounded operands") {
  REQUIRE_GPU();
  for (std::size_t off : {std::size_t(0), std::size_t(1)}) {
    for (bool with_bias : {true, false}) {
      CAPTURE(off);
      CAPTURE(with_bias);
      const int N = 130, in = 96, out = 72;
      const auto x = randn(std::size_t(N) * in, 91), w = randn(std::size_t(out) * in, 92, 0.2f);
      const auto bias = randn(out, 93), dout = randn(std::size_t(N) * out, 94);
      const auto dw0 = randn(w.size(), 95), db0 = randn(out, 96);
      const auto xr = round_bf16(x), wr = round_bf16(w), doutr = round_bf16(dout);
      std::vector<float> y(dout.size()), dx(x.size()), dw = dw0, db = db0;
      backend::matmul_forward(Cpu{}, y.data(), xr.data(), wr.data(), with_bias ? bias.data() : nullptr, N, in, out);
      backend::matmul_backward(Cpu{}, dx.data(), dw.data(), with_bias ? db.data() : nullptr, doutr.data(), xr.data(),
                               wr.data(), N, in, out);
      auto d_x = to_device_at(x, off), d_w = to_device_at(w, off), d_bias = to_device_at(bias, off);
      auto d_dout = to_device_at(dout, off), d_dw = to_device_at(dw0, off), d_db = to_device_at(db0, off);
      DeviceBuffer<float> d_y(y.size() + off), d_dx(dx.size() + off);
      backend::matmul_forward<MatmulPrecision::bf16>(gpu(), d_y.data() + off, d_x.data() + off, d_w.data() + off,
                                                     with_bias ? d_bias.data() + off : nullptr, N, in, out);
      backend::matmul_backward<MatmulPrecision::bf16>(gpu(), d_dx.data() + off, d_dw.data() + off,
                                                      with_bias ? d_db.data() + off : nullptr, d_dout.data() + off,
                                                      d_x.data() + off, d_w.data() + off, N, in, out);
      // x and W already bf16 (the models' Cuda::operand buffers): the same results.
      const auto d_xb = to_device_bf16(x), d_wb = to_device_bf16(w);
      auto d_dw2 = to_device_at(dw0, off), d_db2 = to_device_at(db0, off);
      DeviceBuffer<float> d_y2(y.size() + off), d_dx2(dx.size() + off);
      backend::matmul_forward<MatmulPrecision::bf16>(gpu(), d_y2.data() + off, d_xb.data(), d_wb.data(),
                                                     with_bias ? d_bias.data() + off : nullptr, N, in, out);
      backend::matmul_backward<MatmulPrecision::bf16>(gpu(), d_dx2.data() + off, d_dw2.data() + off,
                                                      with_bias ? d_db2.data() + off : nullptr, d_dout.data() + off,
                                                      d_xb.data(), d_wb.data(), N, in, out);
      check_close(to_host_at(d_y2, off), to_host_at(d_y, off), 1e-6, 1e-6, "y, bf16 x and W given");
      check_close(to_host_at(d_dx2, off), to_host_at(d_dx, off), 1e-6, 1e-6, "dx, bf16 x and W given");
      check_close(to_host_at(d_dw2, off), to_host_at(d_dw, off), 1e-6, 1e-6, "dW, bf16 x and W given");
      check_close(to_host_at(d_db2, off), to_host_at(d_db, off), 1e-6, 1e-6, "db, bf16 x and W given");
      check_close(to_host_at(d_y, off), y, 1e-4, 1e-4, "y = x·Wᵀ + b (bf16 operands)");
      {  // with a residual, in place (the models' residual stream)
        const auto r = randn(y.size(), 97);
        std::vector<float> want(y.size());
        for (std::size_t i = 0; i < y.size(); ++i) want[i] = r[i] + y[i];
        auto d_r = to_device_at(r, off);
        backend::matmul_forward<MatmulPrecision::bf16>(gpu(), d_r.data() + off, d_x.data() + off, d_w.data() + off,
                                                       with_bias ? d_bias.data() + off : nullptr, N, in, out,
                                                       static_cast<const float*>(d_r.data() + off));
        check_close(to_host_at(d_r, off), want, 1e-4, 1e-4, "r + x·Wᵀ + b (bf16 operands)");
      }
      check_close(to_host_at(d_dx, off), dx, 1e-4, 1e-4, "dx (bf16 operands)");
      check_close(to_host_at(d_dw, off), dw, 1e-3, 1e-4, "dW (bf16 operands)");
      // db sums the fp32 dout (not its bf16 copy), as the CPU's bf16 path does.
      if (with_bias) {
        std::vector<float> db_ref = db0;
        for (int n = 0; n < N; ++n)
          for (int j = 0; j < out; ++j) db_ref[std::size_t(j)] += dout[std::size_t(n) * out + j];
        check_close(to_host_at(d_db, off), db_ref, 1e-3, 1e-4, "db (bf16 operands)");
      }
      // bf16 output with a bf16 bias (the models' MLP pre-activation): the
      // fp32 product plus the bias, rounded once (as the CPU does; the sums'
      // order may move a value by one bf16 step).
      const auto biasr = round_bf16(bias);
      std::vector<float> yb(y.size());
      for (int n = 0; n < N; ++n)
        for (int j = 0; j < out; ++j) {
          const std::size_t o = std::size_t(n) * out + j;
          yb[o] = with_bias ? y[o] - bias[std::size_t(j)] + biasr[std::size_t(j)] : y[o];
        }
      const auto d_biasb = to_device_bf16(bias);
      DeviceBuffer<__nv_bfloat16> d_y3(y.size());
      backend::matmul_forward<MatmulPrecision::bf16>(gpu(), d_y3.data(), d_xb.data(), d_wb.data(),
                                                     with_bias ? d_biasb.data() : nullptr, N, in, out);
      check_close(to_float(d_y3), round_bf16(yb), 1e-4, 1.0 / 128, "y in bf16 (bf16 bias)");
      // dx in bf16 (the gradient of a bf16-kept activation): the fp32 dx rounded.
      DeviceBuffer<__nv_bfloat16> d_dx3(dx.size());
      auto d_dw3 = to_device(dw0);
      backend::matmul_backward<MatmulPrecision::bf16>(gpu(), d_dx3.data(), d_dw3.data(), static_cast<float*>(nullptr),
                                                      d_dout.data() + off, d_xb.data(), d_wb.data(), N, in, out);
      check_close(to_float(d_dx3), round_bf16(to_host_at(d_dx, off)), 1e-4, 1.0 / 128, "dx in bf16");
      // dout in bf16 as well (bf16 models keep the gradients of activations
      // that feed products so): the GEMMs read it as it is, the bias
      // gradient sums the rounded values, in the dW product's BGRADB
      // epilogue where cuBLASLt has one (added to db, not written over it).
      const auto d_doutb = to_device_bf16(dout);
      DeviceBuffer<__nv_bfloat16> d_dx4(dx.size());
      auto d_dw4 = to_device(dw0), d_db4 = to_device(db0);
      backend::matmul_backward<MatmulPrecision::bf16>(gpu(), d_dx4.data(), d_dw4.data(),
                                                      with_bias ? d_db4.data() : nullptr, d_doutb.data(), d_xb.data(),
                                                      d_wb.data(), N, in, out);
      const auto plans = backend::cuda::lt_plan_counts(gpu());
      if (with_bias) CHECK(plans.bgrad_found + plans.bgrad_refused > 0);  // asked for (found or not)
      check_close(to_float(d_dx4), to_float(d_dx3), 0.0, 0.0, "dx in bf16 from a bf16 dout");
      check_close(to_host(d_dw4), to_host(d_dw3), 1e-6, 1e-6, "dW from a bf16 dout");
      if (with_bias) {
        std::vector<float> db_ref = db0;
        for (int n = 0; n < N; ++n)
          for (int j = 0; j < out; ++j) db_ref[std::size_t(j)] += doutr[std::size_t(n) * out + j];
        check_close(to_host(d_db4), db_ref, 1e-3, 1e-4, "db from a bf16 dout");
      }
    }
  }
}

// The MLP's first layer: GELU(x·Wᵀ + b) and the GELU's input, bf16 outputs
// (bf16 models). tanh: one GEMM with cuBLASLt's GELU epilogue (the GELU of
// the fp32 sum) where it has an algorithm; exact: the product, then the GELU
// of the rounded input (as the CPU). Against the CPU on bf16-rounded
// operands: one bf16 step of rounding apart at most. out = 100: the GELU
// output's leading dimension is no multiple of 8, which cuBLASLt's GELU
// epilogue refuses (the emulated one at run time: the fallback then runs).
TEST_CASE("cuda: matmul_forward into fp32 with no bias (generation's logits of the last tokens) matches the CPU") {
  REQUIRE_GPU();
  // [N, C]·[V, C]ᵀ for a few rows: fp32, and bf16 products from bf16 operands (a bf16 model's final
  // LayerNorm output and weight copy) into fp32, the bias a literal nullptr.
  const int C = 64, V = 50;
  for (const int N : {1, 3}) {
    CAPTURE(N);
    const auto x = randn(std::size_t(N) * C, 71), w = randn(std::size_t(V) * C, 72, 0.2f);
    std::vector<float> want(std::size_t(N) * V), want_b = want;
    backend::matmul_forward(Cpu{}, want.data(), x.data(), w.data(), static_cast<const float*>(nullptr), N, C, V);
    const auto xr = round_bf16(x), wr = round_bf16(w);
    backend::matmul_forward(Cpu{}, want_b.data(), xr.data(), wr.data(), static_cast<const float*>(nullptr), N, C, V);
    auto d_x = to_device(x), d_w = to_device(w);
    const auto d_xb = to_device_bf16(x), d_wb = to_device_bf16(w);
    auto d_y = to_device(std::vector<float>(want.size(), std::numeric_limits<float>::quiet_NaN()));
    auto d_yb = to_device(std::vector<float>(want.size(), std::numeric_limits<float>::quiet_NaN()));
    backend::matmul_forward(gpu(), d_y.data(), d_x.data(), d_w.data(), nullptr, N, C, V);
    backend::matmul_forward<MatmulPrecision::bf16>(gpu(), d_yb.data(), d_xb.data(), d_wb.data(), nullptr, N, C, V);
    check_close(to_host(d_y), want, 1e-5, 1e-5, "logits (fp32)");
    check_close(to_host(d_yb), want_b, 1e-5, 1e-5, "logits (bf16 operands, fp32 out)");
  }
}

template <Gelu G>
void matmul_gelu_case(int out) {
  CAPTURE(out);
  const int N = 96, in = 64;
  const auto x = round_bf16(randn(std::size_t(N) * in, 131)), w = round_bf16(randn(std::size_t(out) * in, 132, 0.2f));
  const auto bias = round_bf16(randn(out, 133));
  std::vector<float> gel(std::size_t(N) * out), pre(gel.size());
  backend::matmul_gelu_forward<MatmulPrecision::bf16, G>(Cpu{}, gel.data(), pre.data(), x.data(), w.data(),
                                                         bias.data(), N, in, out);
  std::vector<float> want(gel.size());
  for (std::size_t i = 0; i < gel.size(); ++i) want[i] = backend::gelu<G>(pre[i]);
  check_close(gel, want, 1e-6, 1e-5, "CPU: GELU of the product");
  const auto d_x = to_device_bf16(x), d_w = to_device_bf16(w), d_b = to_device_bf16(bias);
  DeviceBuffer<__nv_bfloat16> d_gel(gel.size()), d_pre(gel.size());
  const auto before = backend::cuda::lt_plan_counts(gpu());
  backend::matmul_gelu_forward<MatmulPrecision::bf16, G>(gpu(), d_gel.data(), d_pre.data(), d_x.data(), d_w.data(),
                                                         d_b.data(), N, in, out);
  const auto after = backend::cuda::lt_plan_counts(gpu());
  // The tanh GELU asks cuBLASLt for its epilogue (a new plan: found or refused); the exact one does not.
  CHECK(after.gelu_found + after.gelu_refused - before.gelu_found - before.gelu_refused == (G == Gelu::tanh));
  check_close(to_float(d_pre), round_bf16(pre), 1e-4, 1.0 / 128, "pre (bf16)");
  check_close(to_float(d_gel), round_bf16(gel), 2e-3, 1.0 / 64, "GELU (bf16)");
}

TEST_CASE("cuda: matmul_gelu_forward (GELU epilogue, or product then GELU) matches the CPU") {
  REQUIRE_GPU();
  for (int out : {136, 100}) {
    matmul_gelu_case<Gelu::tanh>(out);
    matmul_gelu_case<Gelu::exact>(out);
  }
}

// The MLP's second layer backward into its GELU (bf16 models): dW and the
// hidden gradient dout·W, or (the tanh GELU, where cuBLASLt's DGELU epilogue
// has an algorithm) that times GELU'(pre) already. Against the CPU's fp32
// products on the same bf16 values.
template <Gelu G>
void into_gelu_case() {
  const int N = 80, hidden = 136, out = 64;
  const auto pre = round_bf16(randn(std::size_t(N) * hidden, 141, 2.0f));
  std::vector<float> gel(pre.size());
  for (std::size_t i = 0; i < pre.size(); ++i) gel[i] = backend::gelu<G>(pre[i]);
  gel = round_bf16(gel);
  const auto dout = round_bf16(randn(std::size_t(N) * out, 142)), w = round_bf16(randn(std::size_t(out) * hidden, 143, 0.2f));
  std::vector<float> dh(pre.size()), dw(w.size(), 0.0f);
  backend::matmul_backward(Cpu{}, dh.data(), dw.data(), static_cast<float*>(nullptr), dout.data(), gel.data(), w.data(),
                           N, hidden, out);
  auto d_pre = to_device_bf16(pre), d_gel = to_device_bf16(gel), d_dout = to_device_bf16(dout), d_w = to_device_bf16(w);
  DeviceBuffer<__nv_bfloat16> d_dh(dh.size());
  auto d_dw = to_device(std::vector<float>(w.size(), 0.0f));
  const bool through = backend::matmul_backward_into_gelu<MatmulPrecision::bf16, G>(
      gpu(), d_dh.data(), d_dw.data(), d_dout.data(), d_gel.data(), d_pre.data(), d_w.data(), N, hidden, out);
  if (G == Gelu::exact) CHECK_FALSE(through);  // only the tanh GELU has a cuBLASLt epilogue
  MESSAGE("GELU' fused into the product: ", through);
  std::vector<float> want = dh;
  if (through)
    for (std::size_t i = 0; i < want.size(); ++i) want[i] *= backend::gelu_grad<G>(pre[i]);
  check_close(to_float(d_dh), round_bf16(want), 1e-4, 1.0 / 128, through ? "dpre (bf16)" : "dgelu (bf16)");
  check_close(to_host(d_dw), dw, 1e-3, 1e-4, "dW");
}

TEST_CASE("cuda: matmul_backward_into_gelu (DGELU epilogue, or the plain product) matches the CPU") {
  REQUIRE_GPU();
  into_gelu_case<Gelu::tanh>();
  into_gelu_case<Gelu::exact>();
}

// A parallel-residual block's two bias gradients from one sum of dout, and
// the operand copy of dout its products read (bf16 models: rounded).
TEST_CASE("cuda: bias_grads adds one column sum to several biases and leaves dout's operand copy") {
  REQUIRE_GPU();
  // 1100 rows: 18 chunks of the column reduction, so every warp of its
  // finishing kernel adds two or three partials; 72 columns: a partial block.
  const int N = 1100, width = 72;
  const auto dout = randn(std::size_t(N) * width, 121), b1 = randn(width, 122), b2 = randn(width, 123);
  std::vector<float> want1 = b1, want2 = b2;
  for (int j = 0; j < width; ++j) {
    double s = 0;
    for (int n = 0; n < N; ++n) s += dout[std::size_t(n) * width + j];
    want1[std::size_t(j)] += float(s);
    want2[std::size_t(j)] += float(s);
  }
  std::vector<float> c1 = b1, c2 = b2;
  std::vector<backend::cpu::bf16> cpu_copy(dout.size());
  const auto* cpu_r = backend::bias_grads(Cpu{}, std::array{c1.data(), c2.data()}, cpu_copy.data(), dout.data(), N,
                                          width);
  CHECK(cpu_r == cpu_copy.data());
  check_close(c1, want1, 1e-4, 1e-5, "CPU bias 1");
  check_close(c2, want2, 1e-4, 1e-5, "CPU bias 2");
  bool rounded = true;
  for (std::size_t i = 0; i < dout.size(); ++i)
    rounded = rounded && cpu_copy[i] == backend::cpu::to_bf16(dout[i]);
  CHECK(rounded);

  auto d_dout = to_device(dout), d_b1 = to_device(b1), d_b2 = to_device(b2);
  DeviceBuffer<__nv_bfloat16> d_copy(dout.size());
  const auto* r = backend::bias_grads(gpu(), std::array{d_b1.data(), d_b2.data()}, d_copy.data(), d_dout.data(), N,
                                      width);
  CHECK(r == d_copy.data());
  check_close(to_host(d_b1), want1, 1e-4, 1e-5, "bias 1");
  check_close(to_host(d_b2), want2, 1e-4, 1e-5, "bias 2");
  check_close(to_float(d_copy), round_bf16(dout), 0.0, 0.0, "bf16 copy");
  // An fp32 operand type: no copy, dout itself.
  auto d_b3 = to_device(b1);
  const float* same = backend::bias_grads(gpu(), std::array{d_b3.data()}, static_cast<float*>(nullptr), d_dout.data(),
                                          N, width);
  CHECK(same == d_dout.data());
  check_close(to_host(d_b3), want1, 1e-4, 1e-5, "bias, fp32 operands");
}

// cuBLASLt plans are kept per shape: a second call of the same shape with
// another bias (same alignment) must use that bias, not the first call's.
TEST_CASE("cuda: matmul reuses its cuBLASLt plan per shape with each call's own bias") {
  REQUIRE_GPU();
  const int N = 64, in = 32, out = 48;
  const auto x = randn(std::size_t(N) * in, 111), w = randn(std::size_t(out) * in, 112, 0.2f);
  const auto b1 = randn(out, 113), b2 = randn(out, 114);
  auto d_x = to_device(x), d_w = to_device(w), d_b1 = to_device(b1), d_b2 = to_device(b2);
  DeviceBuffer<float> d_y1(std::size_t(N) * out), d_y2(std::size_t(N) * out), d_y0(std::size_t(N) * out);
  for (int round = 0; round < 2; ++round) {  // the second round runs on plans made by the first
    backend::matmul_forward<MatmulPrecision::bf16>(gpu(), d_y1.data(), d_x.data(), d_w.data(), d_b1.data(), N, in, out);
    backend::matmul_forward<MatmulPrecision::bf16>(gpu(), d_y2.data(), d_x.data(), d_w.data(), d_b2.data(), N, in, out);
    backend::matmul_forward<MatmulPrecision::bf16>(gpu(), d_y0.data(), d_x.data(), d_w.data(),
                                                   static_cast<const float*>(nullptr), N, in, out);
    const auto y1 = to_host(d_y1), y2 = to_host(d_y2), y0 = to_host(d_y0);
    std::vector<float> want1(y0.size()), want2(y0.size());
    for (std::size_t i = 0; i < y0.size(); ++i) {
      want1[i] = y0[i] + b1[i % std::size_t(out)];
      want2[i] = y0[i] + b2[i % std::size_t(out)];
    }
    check_close(y1, want1, 1e-5, 1e-5, "y with bias 1");
    check_close(y2, want2, 1e-5, 1e-5, "y with bias 2");
  }
}

// GEMM tuning (Context::gemm_tuning, lt_tune): forward with a bias
// (epilogue), forward adding the residual in place (C = D), backward with
// fp32 dout (dW accumulates: C = D) and with bf16 dout (dW and the bias
// gradient's epilogue), on a fresh context (every plan made there).
namespace {
struct TunedProducts {
  std::vector<float> y, r, dx, dw, db, dw16, db16;
  backend::cuda::LtPlanCounts counts;
};
// before_products (if given) runs once the inputs are on the device.
TunedProducts tuning_products(bool tuning, void (*before_products)() = nullptr) {
  const Cuda be;
  be.set_gemm_tuning(tuning);
  const int N = 40, in = 24, out = 16;
  const auto x = randn(std::size_t(N) * in, 1), w = randn(std::size_t(out) * in, 2, 0.2f), b = randn(out, 3);
  const auto res = randn(std::size_t(N) * out, 4), dy = randn(std::size_t(N) * out, 5);
  const auto dw0 = randn(w.size(), 6), db0 = randn(out, 7);
  auto d_x = to_device(x), d_w = to_device(w), d_b = to_device(b), d_r = to_device(res), d_dy = to_device(dy);
  auto d_dw = to_device(dw0), d_db = to_device(db0), d_dw16 = to_device(dw0), d_db16 = to_device(db0);
  auto d_dyb = to_device_bf16(dy);
  DeviceBuffer<float> d_y(std::size_t(N) * out), d_dx(x.size()), d_dx16(x.size());
  gpu().synchronize();  // the inputs were made on the shared context's stream
  if (before_products) before_products();
  backend::matmul_forward<MatmulPrecision::bf16>(be, d_y.data(), d_x.data(), d_w.data(), d_b.data(), N, in, out);
  backend::matmul_forward<MatmulPrecision::bf16>(be, d_r.data(), d_x.data(), d_w.data(), d_b.data(), N, in, out,
                                                 static_cast<const float*>(d_r.data()));
  backend::matmul_backward<MatmulPrecision::bf16>(be, d_dx.data(), d_dw.data(), d_db.data(),
                                                  static_cast<const float*>(d_dy.data()), d_x.data(), d_w.data(), N,
                                                  in, out);
  backend::matmul_backward<MatmulPrecision::bf16>(be, d_dx16.data(), d_dw16.data(), d_db16.data(),
                                                  static_cast<const __nv_bfloat16*>(d_dyb.data()), d_x.data(),
                                                  d_w.data(), N, in, out);
  be.synchronize();
  TunedProducts r;
  r.counts = backend::cuda::lt_plan_counts(be);
  r.y = to_host(d_y), r.r = to_host(d_r), r.dx = to_host(d_dx), r.dw = to_host(d_dw), r.db = to_host(d_db);
  r.dw16 = to_host(d_dw16), r.db16 = to_host(d_db16);
  return r;
}

#ifdef DOREMI_CUDA_EMULATE
// The fake cuBLASLt offers 4 algorithms that compute alike; the third is the
// fast one. Back to one (and every allocation granted) when the test ends.
struct FakeGemmAlgorithms {
  FakeGemmAlgorithms() { emu::set_gemm_algorithms(4, 2); }
  ~FakeGemmAlgorithms() {
    emu::set_gemm_algorithms(1, -1);
    emu::refuse_allocations_of(0);
  }
};
#endif
}  // namespace

TEST_CASE("cuda: GEMM tuning keeps the fastest algorithm; its timing runs leave the results alone") {
  REQUIRE_GPU();
#ifdef DOREMI_CUDA_EMULATE
  const FakeGemmAlgorithms algorithms;
#endif
  const TunedProducts plain = tuning_products(false);
  const TunedProducts tuned = tuning_products(true);
  CHECK(plain.counts.tuned == 0);
  MESSAGE("GEMM tuning: " << tuned.counts.tuned << " of " << tuned.counts.plans << " plans tuned, "
                          << tuned.counts.switched << " switched");
#ifdef DOREMI_CUDA_EMULATE
  CHECK(emu::last_gemm_algorithm() == 2);
  CHECK(tuned.counts.tuned == tuned.counts.plans);
  CHECK(tuned.counts.switched == tuned.counts.plans);
  CHECK(tuned.counts.chosen_ms < tuned.counts.first_ms);
  const double tol = 0;  // the same algorithm arithmetic: the same bits
#else
  const double tol = 1e-4;  // another algorithm may sum in another order
#endif
  // A timing run that added into an accumulated output (r, dW) would be far off.
  check_close(tuned.y, plain.y, tol, tol, "y");
  check_close(tuned.r, plain.r, tol, tol, "residual + y, in place");
  check_close(tuned.dx, plain.dx, tol, tol, "dx");
  check_close(tuned.dw, plain.dw, tol, tol, "dW (accumulated)");
  check_close(tuned.db, plain.db, tol, tol, "db");
  check_close(tuned.dw16, plain.dw16, tol, tol, "dW, bf16 dout (accumulated)");
  check_close(tuned.db16, plain.db16, tol, tol, "db, bf16 dout (bias-gradient epilogue)");
}

#ifdef DOREMI_CUDA_EMULATE
TEST_CASE("cuda: GEMM tuning without memory for an accumulating call's temporary output leaves that plan untuned") {
  const FakeGemmAlgorithms algorithms;
  // After the inputs are made, no allocation of dW's size (16 × 24 fp32): the dW products' temporary D.
  const TunedProducts plain = tuning_products(false);
  const TunedProducts tuned = tuning_products(true, [] { emu::refuse_allocations_of(16 * 24 * sizeof(float)); });
  CHECK(tuned.counts.tuned > 0);
  CHECK(tuned.counts.tuned == tuned.counts.plans - 2);  // both dW plans (fp32 and bf16 dout) untuned
  check_close(tuned.dw, plain.dw, 0, 0, "dW (accumulated)");
  check_close(tuned.dw16, plain.dw16, 0, 0, "dW, bf16 dout (accumulated)");
  check_close(tuned.r, plain.r, 0, 0, "residual + y, in place (tuned: its temporary is another size)");
}
#endif

TEST_CASE("cuda: GEMM tuning is off by default; DOREMI_CUDA_GEMM_TUNING takes 1 or 0") {
  REQUIRE_GPU();
  ::unsetenv("DOREMI_CUDA_GEMM_TUNING");
  CHECK_FALSE(Cuda().gemm_tuning());
  ::setenv("DOREMI_CUDA_GEMM_TUNING", "1", 1);
  CHECK(Cuda().gemm_tuning());
  ::setenv("DOREMI_CUDA_GEMM_TUNING", "0", 1);
  CHECK_FALSE(Cuda().gemm_tuning());
  ::setenv("DOREMI_CUDA_GEMM_TUNING", "yes", 1);
  CHECK_THROWS_WITH_AS(Cuda(), doctest::Contains("DOREMI_CUDA_GEMM_TUNING = 'yes'"), Error);
  ::unsetenv("DOREMI_CUDA_GEMM_TUNING");
}

// The fused GELU + linear backward of the bf16 models (the bias-gradient pass
// computes dgelu ⊙ gelu'(pre), sums it and writes its bf16 copy) against
// gelu_backward then matmul_backward on the GPU, and the CPU's composition;
// without a bias it composes.
template <Gelu G>
void gelu_matmul_case(bool with_bias) {
  CAPTURE(with_bias);
  const int N = 130, in = 96, out = 72;
  const std::size_t n = std::size_t(N) * out;
  const auto x = randn(std::size_t(N) * in, 101), w = randn(std::size_t(out) * in, 102, 0.2f);
  const auto pre = randn(n, 103, 2.0f), dgelu = randn(n, 104), dw0 = randn(w.size(), 105), db0 = randn(out, 106);
  auto d_x = to_device(x), d_w = to_device(w), d_pre = to_device(pre);
  auto d_g1 = to_device(dgelu), d_g2 = to_device(dgelu);
  auto d_dw1 = to_device(dw0), d_dw2 = to_device(dw0), d_db1 = to_device(db0), d_db2 = to_device(db0);
  DeviceBuffer<float> d_dx1(x.size()), d_dx2(x.size());
  backend::gelu_matmul_backward<MatmulPrecision::bf16, G>(gpu(), d_dx1.data(), d_dw1.data(),
                                                          with_bias ? d_db1.data() : nullptr, d_g1.data(),
                                                          d_pre.data(), d_x.data(), d_w.data(), N, in, out);
  backend::gelu_backward<G>(gpu(), d_g2.data(), d_pre.data(), d_g2.data(), n);
  backend::matmul_backward<MatmulPrecision::bf16>(gpu(), d_dx2.data(), d_dw2.data(),
                                                  with_bias ? d_db2.data() : nullptr, d_g2.data(), d_x.data(),
                                                  d_w.data(), N, in, out);
  check_close(to_host(d_dx1), to_host(d_dx2), 1e-6, 1e-6, "dx: fused vs composed");
  check_close(to_host(d_dw1), to_host(d_dw2), 1e-6, 1e-6, "dW: fused vs composed");
  check_close(to_host(d_db1), to_host(d_db2), 1e-6, 1e-6, "db: fused vs composed");
  // The CPU's composition on the same inputs (bf16 products there too).
  std::vector<float> g = dgelu, dx(x.size()), dw = dw0, db = db0;
  backend::gelu_matmul_backward<MatmulPrecision::bf16, G>(Cpu{}, dx.data(), dw.data(), with_bias ? db.data() : nullptr,
                                                          g.data(), pre.data(), x.data(), w.data(), N, in, out);
  // (A dy next to a bf16 rounding boundary may round the other way: a 2^-8 step in one operand.)
  check_close(to_host(d_dx1), dx, 2e-3, 1e-2, "dx vs CPU");
  check_close(to_host(d_dw1), dw, 1e-2, 1e-2, "dW vs CPU");
  check_close(to_host(d_db1), db, 1e-3, 1e-4, "db vs CPU");
  if (!with_bias) return;
  // dgelu and pre in bf16 (as bf16 models keep them): the same as fp32 ones
  // holding the rounded values.
  auto d_g3 = to_device(round_bf16(dgelu)), d_pre3 = to_device(round_bf16(pre));
  auto d_dw3 = to_device(dw0), d_db3 = to_device(db0), d_dw4 = to_device(dw0), d_db4 = to_device(db0);
  auto d_gb = to_device_bf16(dgelu), d_preb = to_device_bf16(pre);
  DeviceBuffer<float> d_dx3(x.size()), d_dx4(x.size());
  backend::gelu_matmul_backward<MatmulPrecision::bf16, G>(gpu(), d_dx3.data(), d_dw3.data(), d_db3.data(), d_g3.data(),
                                                          d_pre3.data(), d_x.data(), d_w.data(), N, in, out);
  backend::gelu_matmul_backward<MatmulPrecision::bf16, G>(gpu(), d_dx4.data(), d_dw4.data(), d_db4.data(), d_gb.data(),
                                                          d_preb.data(), d_x.data(), d_w.data(), N, in, out);
  check_close(to_host(d_dx4), to_host(d_dx3), 1e-6, 1e-6, "dx: bf16 dgelu and pre");
  check_close(to_host(d_dw4), to_host(d_dw3), 1e-6, 1e-6, "dW: bf16 dgelu and pre");
  check_close(to_host(d_db4), to_host(d_db3), 1e-6, 1e-6, "db: bf16 dgelu and pre");
}

TEST_CASE("cuda: GELU + linear backward with bf16 operands (fused with the bias gradient) matches the composition") {
  REQUIRE_GPU();
  for (bool with_bias : {true, false}) {
    gelu_matmul_case<Gelu::tanh>(with_bias);
    gelu_matmul_case<Gelu::exact>(with_bias);
  }
}

TEST_CASE("cuda: AdamW over the flat buffer matches the CPU optimiser step for step") {
  REQUIRE_GPU();
  const std::size_t n = 10007;
  const std::vector<ParamGroup> groups{{0, 3000, true}, {3000, 7, false}, {3007, 5000, true}, {8007, 2000, false}};
  AdamWConfig cfg;
  cfg.lr = 3e-3;
  cfg.weight_decay = 0.1;
  AdamW<float> cpu_opt(n, cfg);
  auto p = randn(n, 51);
  auto d_p = to_device(p);
  DeviceBuffer<float> d_m(n, 0.0f), d_v(n, 0.0f);
  // Steps 1-3 with these groups (runs of both kinds, one of 7 parameters),
  // step 4 with others (the device's table of runs is replaced); steps 2
  // and 4 with clipping's gradient factor.
  const std::vector<ParamGroup> groups4{{0, 5000, false}, {5000, 5007, true}};
  for (int step = 1; step <= 4; ++step) {
    const auto& groups_now = step <= 3 ? groups : groups4;
    const double grad_scale = step % 2 == 0 ? 0.37 : 1.0;
    const auto g = randn(n, 60 + std::uint64_t(step), 0.01f);
    cpu_opt.step(p, g, groups_now, cfg.lr, grad_scale);
    const double bc1 = 1.0 - std::pow(cfg.beta1, step), bc2 = 1.0 - std::pow(cfg.beta2, step);
    const auto decayed =
        adamw_coefficients<float>(cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, bc1, bc2, grad_scale);
    const auto undecayed = adamw_coefficients<float>(cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, 0.0, bc1, bc2, grad_scale);
    auto d_g = to_device(g);
    backend::adamw_step(gpu(), d_p.data(), d_g.data(), d_m.data(), d_v.data(), n, groups_now, decayed, undecayed);
  }
  // Same arithmetic in the same order: equal up to the device's sqrt/division rounding.
  check_close(to_host(d_p), p, 1e-7, 1e-6, "parameters");
  check_close(to_host(d_m), std::vector<float>(cpu_opt.state_m().begin(), cpu_opt.state_m().end()), 1e-9, 1e-6, "m");
  check_close(to_host(d_v), std::vector<float>(cpu_opt.state_v().begin(), cpu_opt.state_v().end()), 1e-12, 1e-6,
              "v");
}

TEST_CASE("cuda: global gradient norm matches the CPU") {
  REQUIRE_GPU();
  for (std::size_t n : {std::size_t(1), std::size_t(1000), std::size_t(1) << 20}) {
    CAPTURE(n);
    const auto g = randn(n, 71, 0.03f);
    auto d_g = to_device(g);
    const double cpu = global_grad_norm<float>(g);
    const double gpu_norm = backend::global_grad_norm(gpu(), d_g.data(), n);
    CHECK(gpu_norm == doctest::Approx(cpu).epsilon(1e-12));
  }
  CHECK(backend::global_grad_norm(gpu(), static_cast<const float*>(nullptr), 0) == 0.0);
}

#pragma once
// Model configuration: shapes are compile-time constants so loops and kernels
// specialise. A `Spec` is a structural value used as a template argument;
// `Config<Spec, Scalar>` adds the scalar type and the derived constants.
//
//   using M = doremi::Model<doremi::presets::Tiny<float>>;
//
// Presets (namespace doremi::presets): Tiny, CpuBench, Doremi120M, Gpt2_124M,
// Pythia70M, Pythia160M. A custom shape is one aggregate initialiser:
//
//   constexpr doremi::Spec my_spec{.name = "mine", .n_layer = 6, .n_embd = 384, ...};
//   using MyModel = doremi::Model<doremi::Config<my_spec, float>>;
#include <cstddef>
#include <string_view>
#include <type_traits>

#include "doremi/backend/types.hpp"

namespace doremi {

// Gelu and MatmulPrecision (backend/types.hpp) are the layer choices a Spec selects.
enum class Residual { sequential, parallel };  // GPT-2 style or GPT-NeoX's parallel

// A fixed-capacity name usable inside a structural template argument.
struct PresetName {
  char text[32]{};
  constexpr PresetName(const char* s) {  // NOLINT: implicit from literals on purpose
    for (int i = 0; i < 31 && s[i]; ++i) text[i] = s[i];
  }
  // nvcc's host pass spells a structural argument back as an array
  // initialiser ({{'d','o',...}}), so construction from an array must work too.
  template <std::size_t M>
  constexpr PresetName(const char (&s)[M]) {  // NOLINT: implicit on purpose
    for (std::size_t i = 0; i < M && i < 31 && s[i]; ++i) text[i] = s[i];
  }
  constexpr std::string_view view() const {
    std::size_t n = 0;
    while (n < 31 && text[n]) ++n;
    return {text, n};
  }
};

struct Spec {
  PresetName name = "custom";
  int n_layer = 2;
  int n_embd = 64;
  int n_head = 4;
  int n_ctx = 64;
  int vocab = 256;            // the tokenizer's vocabulary
  int vocab_multiple = 8;     // embedding rows padded up to a multiple of this
  double rotary_pct = 0.25;   // share of each head's dims with rotary; 0 = learned positions
  double rotary_base = 10000.0;
  bool tied_embeddings = false;
  Residual residual = Residual::parallel;
  Gelu gelu = Gelu::exact;
  double ln_eps = 1e-5;
  int mlp_mult = 4;           // MLP hidden width = mlp_mult * n_embd
  MatmulPrecision matmul = MatmulPrecision::native;
};

// The same model with bf16 matrix products (fp32 scalar type only):
//   doremi::Config<doremi::bf16_matmul(doremi::presets::cpu_bench)>
constexpr Spec bf16_matmul(Spec s) {
  s.matmul = MatmulPrecision::bf16;
  return s;
}

template <Spec S, class Scalar = float>
struct Config {
  using scalar = Scalar;
  static constexpr Spec spec = S;
  static constexpr std::string_view name = S.name.view();
  static constexpr int n_layer = S.n_layer;
  static constexpr int n_embd = S.n_embd;
  static constexpr int n_head = S.n_head;
  static constexpr int head_dim = S.n_embd / S.n_head;
  static constexpr int n_ctx = S.n_ctx;
  static constexpr int vocab = S.vocab;
  static constexpr int padded_vocab = (S.vocab + S.vocab_multiple - 1) / S.vocab_multiple * S.vocab_multiple;
  static constexpr int rotary_dim = int(head_dim * S.rotary_pct);  // as GPT-NeoX: int(head_size * pct)
  static constexpr bool learned_positions = S.rotary_pct == 0.0;
  static constexpr double rotary_base = S.rotary_base;
  static constexpr bool tied = S.tied_embeddings;
  static constexpr bool parallel_residual = S.residual == Residual::parallel;
  static constexpr Gelu gelu = S.gelu;
  static constexpr double ln_eps = S.ln_eps;
  static constexpr int d_mlp = S.mlp_mult * S.n_embd;
  static constexpr MatmulPrecision matmul = S.matmul;

  static_assert(S.n_layer > 0 && S.n_embd > 0 && S.n_head > 0 && S.n_ctx > 0 && S.vocab > 0);
  static_assert(S.n_embd % S.n_head == 0, "n_embd must be a multiple of n_head");
  static_assert(S.vocab_multiple > 0);
  static_assert(S.matmul == MatmulPrecision::native || std::is_same_v<Scalar, float>,
                "bf16 matrix products need the fp32 scalar type");
  static_assert(S.rotary_pct >= 0.0 && S.rotary_pct <= 1.0);
  static_assert(rotary_dim % 2 == 0, "rotary dims per head must be even");
  static_assert(learned_positions || rotary_dim > 0, "rotary_pct too small for this head size");
};

namespace presets {

// A few-thousand-parameter model for tests and the CPU demo (byte vocabulary).
inline constexpr Spec tiny{.name = "tiny", .n_layer = 2, .n_embd = 64, .n_head = 4, .n_ctx = 128,
                           .vocab = 257, .vocab_multiple = 8, .rotary_pct = 0.25};
// llm.c's CPU shape, for side-by-side timing: GPT-2 style, learned positions.
inline constexpr Spec cpu_bench{.name = "cpu-bench", .n_layer = 4, .n_embd = 256, .n_head = 4,
                                .n_ctx = 256, .vocab = 50304, .vocab_multiple = 128,
                                .rotary_pct = 0.0, .tied_embeddings = true,
                                .residual = Residual::sequential, .gelu = Gelu::tanh};
// The public DoReMi 120M runs (docs/algorithm.md): GPT-NeoX tokenizer, rotary 25 %, tied.
inline constexpr Spec doremi_120m{.name = "doremi-120m", .n_layer = 12, .n_embd = 768, .n_head = 12,
                                  .n_ctx = 1024, .vocab = 50277, .vocab_multiple = 8,
                                  .rotary_pct = 0.25, .tied_embeddings = true,
                                  .residual = Residual::parallel, .gelu = Gelu::tanh};
inline constexpr Spec gpt2_124m{.name = "gpt2-124m", .n_layer = 12, .n_embd = 768, .n_head = 12,
                                .n_ctx = 1024, .vocab = 50257, .vocab_multiple = 1,
                                .rotary_pct = 0.0, .tied_embeddings = true,
                                .residual = Residual::sequential, .gelu = Gelu::tanh};
inline constexpr Spec pythia_70m{.name = "pythia-70m", .n_layer = 6, .n_embd = 512, .n_head = 8,
                                 .n_ctx = 2048, .vocab = 50304, .vocab_multiple = 128,
                                 .rotary_pct = 0.25, .tied_embeddings = false,
                                 .residual = Residual::parallel, .gelu = Gelu::exact};
inline constexpr Spec pythia_160m{.name = "pythia-160m", .n_layer = 12, .n_embd = 768, .n_head = 12,
                                  .n_ctx = 2048, .vocab = 50304, .vocab_multiple = 128,
                                  .rotary_pct = 0.25, .tied_embeddings = false,
                                  .residual = Residual::parallel, .gelu = Gelu::exact};

template <class T = float> using Tiny = Config<tiny, T>;
template <class T = float> using CpuBench = Config<cpu_bench, T>;
template <class T = float> using Doremi120M = Config<doremi_120m, T>;
template <class T = float> using Gpt2_124M = Config<gpt2_124m, T>;
template <class T = float> using Pythia70M = Config<pythia_70m, T>;
template <class T = float> using Pythia160M = Config<pythia_160m, T>;

}  // namespace presets
}  // namespace doremi

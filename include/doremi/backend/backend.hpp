#pragma once
// What a backend provides to Model (model/gpt.hpp) and AdamW (optim/adamw.hpp),
// written as concepts that both check with static_assert. A backend is a tag
// type (backend::Cpu, backend::Cuda) plus free functions taking the tag first,
// found by argument-dependent lookup; docs/backend.md describes each one.
//
//   Backend<B>                  memory: Buffer<T>, host_memory, operand<P, T>,
//                               upload, download, fill
//   OptimizerBackend<B, T>      + adamw_step over device memory (when !host_memory)
//   ModelBackend<B, Cfg>        + every layer Model<Cfg, B> calls, with the
//                               argument types it passes
//   GenerationBackend<B, Cfg>   + what Model's cached forward for text
//                               generation calls (checked only where
//                               generation is used: a backend without it
//                               still trains)
//
// The requirements check declarations only (the calls must resolve), not what
// the functions compute: the tests compare every backend against the CPU one.
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <ranges>
#include <span>

#include "doremi/backend/adamw_update.hpp"  // AdamWCoefficients, ParamGroup
#include "doremi/backend/elementwise.hpp"   // RowLossSums
#include "doremi/backend/types.hpp"         // MatmulPrecision, Gelu

namespace doremi::backend {

// An owning, resizable array of n elements in the backend's memory.
template <class Buf, class T>
concept BackendBuffer = std::default_initializable<Buf> && std::constructible_from<Buf, std::size_t, T> &&
                        requires(Buf b, const Buf cb, std::size_t n) {
                          { b.data() } -> std::same_as<T*>;
                          { cb.data() } -> std::same_as<const T*>;
                          { cb.size() } -> std::convertible_to<std::size_t>;
                          b.resize(n);
                        };

// Memory: the buffers, whether the host may read them, the products' operand
// type, and the copies between host and backend memory (upload: host to
// backend; download: backend to host; fill: every element set to a value).
template <class B, class T>
concept BackendMemory = BackendBuffer<typename B::template Buffer<T>, T> &&
                        requires(B be, T* dst, const T* src, T value, std::size_t n) {
                          upload(be, dst, src, n);
                          download(be, dst, src, n);
                        };

template <class B>
concept Backend = std::copy_constructible<B> && std::default_initializable<B> &&
                  requires {
                    { B::name } -> std::convertible_to<const char*>;
                    { B::host_memory } -> std::convertible_to<bool>;
                    typename B::template operand<MatmulPrecision::native, float>;
                    typename B::template operand<MatmulPrecision::bf16, float>;
                  } &&
                  BackendMemory<B, float> && BackendMemory<B, double> && BackendMemory<B, std::int32_t> &&
                  BackendMemory<B, std::uint8_t> &&
                  requires(B be, float* f, double* d, std::size_t n) {
                    fill(be, f, 0.0f, n);
                    fill(be, d, 0.0, n);
                  };

// What AdamW<T, B> calls: the memory above and, where the buffers are not
// host memory, one fused update of the flat buffer (adamw_update per element,
// `decayed` for groups with decay = true, `undecayed` for the rest).
template <class B, class T>
concept OptimizerBackend = Backend<B> && BackendMemory<B, T> &&
                           (B::host_memory || requires(B be, T* p, const T* g, T* m, T* v, std::size_t n,
                                                       std::span<const ParamGroup> groups,
                                                       const AdamWCoefficients<T>& c) {
                             adamw_step(be, p, g, m, v, n, groups, c, c);
                           });

// What Model<Cfg, B> calls, with the argument types it passes: S is the
// scalar type (parameters, gradients, residual stream, statistics), O the
// operand type (what only feeds the matrix products), P, G and HD the model's
// matmul precision, GELU and head size. The forward and backward of each
// layer; docs/backend.md gives their shapes.
template <class B, class Cfg, class S = typename Cfg::scalar,
          class O = typename B::template operand<Cfg::matmul, typename Cfg::scalar>>
concept ModelBackend =
    Backend<B> && BackendMemory<B, S> && BackendMemory<B, O> &&
    requires(B be, S* s, const S* cs, O* o, const O* co, std::uint8_t* mask, std::int32_t* tok, S value, int n,
             std::size_t size, double eps, bool flag) {
      fill(be, s, value, size);
      requires std::same_as<O, S> || requires { convert(be, o, cs, size); };
      { attention_state_size(be, n, n, n) } -> std::convertible_to<std::size_t>;
      { attention_qkvr_size<Cfg::matmul, S>(be, n, n, n, n) } -> std::convertible_to<std::size_t>;
      // forward
      embedding_forward(be, s, tok, cs, cs, n, n, n);
      layernorm_forward(be, o, s, s, s, cs, cs, n, n, eps);
      layernorm_pair_forward(be, o, o, s, s, s, cs, cs, cs, cs, n, n, eps);
      matmul_forward<Cfg::matmul>(be, o, o, co, co, n, n, n);
      matmul_forward<Cfg::matmul>(be, s, o, co, cs, n, n, n, cs);
      matmul_gelu_forward<Cfg::matmul, Cfg::gelu>(be, o, o, o, co, co, n, n, n);
      attention_forward<Cfg::matmul, Cfg::head_dim>(be, o, s, s, o, s, s, n, n, n, n, n);
      classifier_forward<Cfg::matmul>(be, s, mask, o, s, o, co, tok, n, n, n, flag);
      { row_loss_sums(be, s, mask, n, n) } -> std::ranges::range;
      requires std::convertible_to<std::ranges::range_value_t<decltype(row_loss_sums(be, s, mask, n, n))>,
                                   RowLossSums>;
      // backward
      classifier_backward<Cfg::matmul>(be, o, s, o, s, cs, o, co, tok, n, n, n);
      layernorm_backward(be, s, s, s, o, s, cs, s, s, n, n);
      layernorm_pair_backward(be, s, s, s, s, s, o, o, s, cs, cs, s, s, n, n);
      { bias_grads(be, std::array<S*, 1>{s}, o, s, n, n) } -> std::convertible_to<const O*>;
      { bias_grads(be, std::array<S*, 2>{s, s}, o, s, n, n) } -> std::convertible_to<const O*>;
      { matmul_backward_into_gelu<Cfg::matmul, Cfg::gelu>(be, o, s, co, o, o, co, n, n, n) } -> std::same_as<bool>;
      gelu_matmul_backward<Cfg::matmul, Cfg::gelu>(be, o, s, s, o, o, o, co, n, n, n, flag);
      matmul_backward<Cfg::matmul>(be, o, s, s, co, o, co, n, n, n);
      attention_backward<Cfg::matmul, Cfg::head_dim>(be, o, o, o, s, s, s, s, n, n, n, n, n);
      embedding_backward(be, s, s, s, tok, n, n, n);
    };

// What Model<Cfg, B>'s cached forward (generation, eval/generate.hpp) calls
// beyond ModelBackend: the embedding at given positions (also a row gather),
// attention of new tokens against a per-row key/value cache, and the logits'
// product with a scalar output and no bias, and a copy within backend memory
// (finished rows leave the cache).
template <class B, class Cfg, class S = typename Cfg::scalar,
          class O = typename B::template operand<Cfg::matmul, typename Cfg::scalar>>
concept GenerationBackend =
    ModelBackend<B, Cfg> &&
    requires(B be, S* s, const S* cs, O* o, const O* co, const std::int32_t* tok, int n, std::size_t size) {
      copy(be, s, cs, size);
      embedding_forward_at(be, s, tok, tok, cs, cs, n, n);
      attention_cached<Cfg::matmul, Cfg::head_dim>(be, o, co, s, s, tok, cs, cs, n, n, n, n, n, n);
      matmul_forward<Cfg::matmul>(be, s, co, co, cs, n, n, n);
    };

}  // namespace doremi::backend

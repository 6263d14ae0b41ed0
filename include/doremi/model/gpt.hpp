#pragma once
// Model<Config, Backend>: the GPT family DoReMi trains (GPT-2 and GPT-NeoX /
// Pythia shapes), forward and hand-written backward.
//
//   doremi::Model<doremi::presets::Tiny<float>> model;
//   model.init(/*seed=*/1);
//   auto out = model.forward(inputs, targets, B, T);   // per-token losses + mask
//   model.backward(token_weights);                      // d(Σ w·ℓ)/dθ into gradients()
//
// Forward returns per-token cross-entropy; backward takes one weight per token
// and accumulates the gradient of Σ_j w_j·ℓ_j, so a plain mean loss passes
// w_j = 1/tokens and the DRO trainer passes its domain weights. Parameters and
// gradients each live in one flat buffer (see params.hpp for the table of
// tensors with their HuggingFace GPT-NeoX names).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "doremi/backend/backend.hpp"
#include "doremi/backend/cpu.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/rng.hpp"
#include "doremi/model/config.hpp"
#include "doremi/model/params.hpp"

namespace doremi {

template <class Scalar>
struct ForwardResult {
  // In the backend's memory, as Model::parameters() (device memory on CUDA:
  // Model::host_losses() / host_mask() copy them; row_loss_sums reduces them
  // where they are), valid until the model's next forward.
  std::span<const Scalar> losses;      // [B·T], per-token cross-entropy (0 where masked)
  std::span<const std::uint8_t> mask;  // [B·T], 1 where the target is a real token
  std::size_t tokens = 0;              // number of unmasked targets
  double loss_sum = 0;                 // Σ losses
  double mean_loss() const { return tokens ? loss_sum / double(tokens) : 0.0; }
};

// Rotary tables [n_ctx, rot/2] (GPT-NeoX): cos and sin of t · base^(−2i/rot)
// for position t and pair i, in double, rounded once to T.
template <class T>
struct RotaryTables {
  std::vector<T> cos, sin;
};
template <class T>
RotaryTables<T> rotary_tables(int n_ctx, int rot, double base) {
  const int half = rot / 2;
  const std::size_t n = std::size_t(n_ctx) * half;
  RotaryTables<T> r{std::vector<T>(n), std::vector<T>(n)};
  for (int t = 0; t < n_ctx; ++t)
    for (int i = 0; i < half; ++i) {
      const double inv_freq = std::pow(base, -2.0 * i / rot);
      r.cos[std::size_t(t) * half + i] = T(std::cos(t * inv_freq));
      r.sin[std::size_t(t) * half + i] = T(std::sin(t * inv_freq));
    }
  return r;
}

template <class Cfg, class Backend = backend::Cpu>
class Model {
  static_assert(backend::ModelBackend<Backend, Cfg>,
                "Model<Cfg, Backend>: Backend lacks a function Model calls (backend/backend.hpp lists them)");

 public:
  using config = Cfg;
  using scalar = typename Cfg::scalar;
  using backend_type = Backend;
  template <class U>
  using Buffer = typename Backend::template Buffer<U>;
  // Element type of the activations kept at the products' precision: the
  // LayerNorm, attention and GELU outputs and the weights' copy (they only
  // feed products: rounding them once where they are made gives the numbers
  // rounding at every product would, with less memory traffic), the qkv and
  // MLP products' outputs, and these activations' gradients (rounded as
  // autocast keeps them; the elementwise math on them runs in fp32). The
  // scalar itself, or bf16 where the products take bf16 operands
  // (Cfg::matmul); the residual stream and its gradient stay in scalar. The
  // GPU's attention backward also reads the attention output, for
  // D = Σ dO·O: the rounded values, as FlashAttention does.
  using operand_type = typename Backend::template operand<Cfg::matmul, scalar>;

  static constexpr int C = Cfg::n_embd, H = Cfg::n_head, L = Cfg::n_layer, V = Cfg::padded_vocab;
  static constexpr int D = Cfg::d_mlp;

  explicit Model(Backend be = {}) : be_(be), params_(layout().total, scalar(0)) {
    if constexpr (!Cfg::learned_positions) {
      const auto rope = rotary_tables<scalar>(Cfg::n_ctx, Cfg::rotary_dim, Cfg::rotary_base);
      const std::size_t n = rope.cos.size();
      rope_cos_.resize(n);
      rope_sin_.resize(n);
      upload(be_, rope_cos_.data(), rope.cos.data(), n);
      upload(be_, rope_sin_.data(), rope.sin.data(), n);
    }
  }

  static const ParamLayout& layout() {
    static const ParamLayout l = make_param_layout<Cfg>();
    return l;
  }
  static const std::vector<TensorInfo>& tensors() { return layout().tensors; }
  std::size_t num_parameters() const { return layout().total; }

  // The flat buffers, in the backend's memory (device memory on CUDA: pass
  // them to backend calls; read or write them on the host through
  // host_parameters() / upload_parameters()).
  static constexpr bool host_memory = Backend::host_memory;
  std::span<scalar> parameters() { return {params_.data(), params_.size()}; }
  std::span<const scalar> parameters() const { return {params_.data(), params_.size()}; }
  // The gradient buffer is made (zeroed) when first needed, by backward,
  // zero_grad or this non-const gradients(): a model that only runs forward
  // (the DRO reference, evaluation) holds none, and the const gradients() is
  // empty until then.
  std::span<scalar> gradients() {
    Buffer<scalar>& g = grads();
    return {g.data(), g.size()};
  }
  std::span<const scalar> gradients() const { return {grads_.data(), grads_.size()}; }
  void zero_grad() {
    if (grads_.size() == 0) grads();  // made zeroed
    else fill(be_, grads_.data(), scalar(0), grads_.size());
  }

  // The parameters readable on the host: the buffer itself on the CPU, a
  // fresh copy (valid until the next call) on a device.
  std::span<const scalar> host_parameters() const { return host_view(params_, params_host_, params_.size()); }
  // The last forward's per-token losses and mask readable on the host: the
  // buffers themselves on the CPU, fresh copies (valid until the next call)
  // on a device.
  std::span<const scalar> host_losses() const { return host_view(losses_, losses_host_, tokens_in_batch()); }
  std::span<const std::uint8_t> host_mask() const { return host_view(mask_, mask_host_, tokens_in_batch()); }

  // Replaces every parameter with host values.
  void upload_parameters(std::span<const scalar> values) {
    if (values.size() != params_.size())
      fail("Model<{}>::upload_parameters: {} values for {} parameters", Cfg::name, values.size(), params_.size());
    upload(be_, params_.data(), values.data(), values.size());
  }

  // Deterministic initialisation: element i of tensor k is std_k · N(0,1)
  // drawn from Philox(seed, stream k, index i), independent of thread count.
  void init(std::uint64_t seed) {
    const auto& ts = tensors();
    std::vector<scalar> host(layout().total);
    for (std::size_t k = 0; k < ts.size(); ++k) {
      const TensorInfo& t = ts[k];
      scalar* p = host.data() + t.offset;
      const std::ptrdiff_t n = std::ptrdiff_t(t.size);
#pragma omp parallel for schedule(static)
      for (std::ptrdiff_t i = 0; i < n; ++i) {
        switch (t.init) {
          case TensorInfo::Init::normal: p[i] = scalar(t.init_std * Philox::normal(seed, k, std::uint64_t(i))); break;
          case TensorInfo::Init::ones: p[i] = scalar(1); break;
          case TensorInfo::Init::zeros: p[i] = scalar(0); break;
        }
      }
    }
    upload_parameters(host);
    if (grads_.size() != 0) zero_grad();  // else made (zeroed) when first needed
  }

  // inputs, targets: [B·T] token ids; a target < 0 marks padding (ignored).
  // Keeps every layer's activations for backward().
  ForwardResult<scalar> forward(std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets, int B,
                                int T) {
    return run_forward(inputs, targets, B, T, /*for_backward=*/true);
  }

  // The same losses without keeping activations for a backward (backward()
  // then raises): one layer's activation buffers serve every layer, so a model
  // that is only evaluated (the DRO reference model, perplexity) needs about
  // 1/L of the activation memory of one that trains.
  ForwardResult<scalar> forward_losses(std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets,
                                       int B, int T) {
    return run_forward(inputs, targets, B, T, /*for_backward=*/false);
  }

  // Elements of activation memory the last forward laid out (scalar and
  // operand_type buffers; grows with the largest batch seen, never shrinks).
  std::size_t activation_elements() const { return acts_.size() + op_acts_.size(); }

  // Accumulates d(Σ_j w_j·ℓ_j)/dθ into gradients(); w has one weight per
  // token of the last forward (ignored where the target is padding).
  void backward(std::span<const scalar> token_weights) {
    if (!has_forward_)
      fail("Model::backward: no forward pass to differentiate (call forward first; forward_losses keeps no "
           "activations for a backward)");
    const int B = B_, T = T_, N = B * T;
    if (token_weights.size() != std::size_t(N))
      fail("Model::backward: {} token weights for a batch of {} tokens", token_weights.size(), N);
    const scalar* P = params_.data();
    scalar* G = grads().data();
    const auto& lay = layout();
    scalar* dres = d_res();  // the residual stream's gradient, carried down through the blocks
    const scalar* tw = token_weights.data();
    if constexpr (!host_memory) {
      grow(weights_, std::size_t(N));
      upload(be_, weights_.data(), tw, std::size_t(N));
      tw = weights_.data();
    }
    classifier_backward<Cfg::matmul>(be_, d_lnf(), G + lay.embed_out, probs(), inv_sum(), tw, lnf(),
                                     weight(lay.embed_out), targets_.data(), N, C, V);
    fill(be_, dres, scalar(0), std::size_t(N) * C);
    layernorm_backward(be_, dres, G + lay.lnf_w, G + lay.lnf_b, d_lnf(), res(L), P + lay.lnf_w, lnf_stats(),
                       lnf_stats() + N, N, C);
    for (int l = L - 1; l >= 0; --l) {
      const BlockOffsets& w = lay.blocks[std::size_t(l)];
      // The branches' outputs have the gradient dres (parallel: both at once;
      // else the MLP's, then, with LN2's share added, the attention's). Its
      // bias gradients take one pass, which also leaves dres as the products
      // read it (bf16 models: rounded, as autocast has it).
      scalar* const no_bias = nullptr;
      const operand_type* dr = nullptr;
      if constexpr (Cfg::parallel_residual)
        dr = bias_grads(be_, std::array{G + w.fc2_b, G + w.proj_b}, d_res_op(), dres, N, C);
      else
        dr = bias_grads(be_, std::array{G + w.fc2_b}, d_res_op(), dres, N, C);
      // MLP branch (the GELU's backward in fc2's product where the backend fuses it).
      const bool through_gelu = matmul_backward_into_gelu<Cfg::matmul, Cfg::gelu>(
          be_, d_fc(), G + w.fc2_w, dr, gel(l), fc(l), weight(w.fc2_w), N, D, C);
      gelu_matmul_backward<Cfg::matmul, Cfg::gelu>(be_, d_ln2(), G + w.fc_w, G + w.fc_b, d_fc(), fc(l), ln2(l),
                                                   weight(w.fc_w), N, C, D, through_gelu);
      if constexpr (!Cfg::parallel_residual) {  // dres becomes d/dh = d/dx' + LN2's share
        layernorm_backward(be_, dres, G + w.ln2_w, G + w.ln2_b, d_ln2(), hres(l), P + w.ln2_w, ln2_stats(l),
                           ln2_stats(l) + N, N, C);
        dr = bias_grads(be_, std::array{G + w.proj_b}, d_res_op(), dres, N, C);
      }
      // Attention branch.
      matmul_backward<Cfg::matmul>(be_, d_atty(), G + w.proj_w, no_bias, dr, atty(l), weight(w.proj_w), N, C, C);
      attention_backward<Cfg::matmul, Cfg::head_dim>(be_, d_qkv(), d_atty(), atty(l), qkvr(l), att(l),
                                                      rope_cos_.data(), rope_sin_.data(), B, T, C, H, Cfg::rotary_dim);
      matmul_backward<Cfg::matmul>(be_, d_ln1(), G + w.qkv_w, G + w.qkv_b, d_qkv(), ln1(l), weight(w.qkv_w), N, C,
                                   3 * C);
      if constexpr (Cfg::parallel_residual)  // both LayerNorms' shares of d/dx in one pass
        layernorm_pair_backward(be_, dres, G + w.ln1_w, G + w.ln1_b, G + w.ln2_w, G + w.ln2_b, d_ln1(), d_ln2(),
                                res(l), P + w.ln1_w, P + w.ln2_w, ln1_stats(l), ln1_stats(l) + N, N, C);
      else
        layernorm_backward(be_, dres, G + w.ln1_w, G + w.ln1_b, d_ln1(), res(l), P + w.ln1_w, ln1_stats(l),
                           ln1_stats(l) + N, N, C);
    }
    embedding_backward(be_, G + lay.embed_in, Cfg::learned_positions ? G + lay.embed_pos : nullptr, dres,
                       tokens_.data(), B, T, C);
  }

  Backend& backend() { return be_; }

  // ---- Generation: a forward of new tokens against per-row key/value caches
  // (eval/generate.hpp drives it; docs/generation.md). Needs a backend with
  // backend::GenerationBackend; a forward for training does not.
  //
  // start_generation(rows, capacity): caches for `rows` sequences of at most
  // `capacity` tokens (<= n_ctx), per layer K and V [rows, H, capacity, hd] in
  // scalar, emptied; reads the parameters as they are now (uploading new ones
  // needs a new start_generation).
  void start_generation(int rows, int capacity) {
    static_assert(backend::GenerationBackend<Backend, Cfg>,
                  "Model::start_generation: Backend lacks the generation functions (backend/backend.hpp)");
    if (rows <= 0 || capacity <= 0 || capacity > Cfg::n_ctx)
      fail("Model<{}>::start_generation: {} rows of capacity {} (need rows > 0 and 0 < capacity <= context {})",
           Cfg::name, rows, capacity, Cfg::n_ctx);
    gen_rows_ = rows;
    gen_capacity_ = capacity;
    const std::size_t n = std::size_t(L) * rows * H * capacity * (C / H);
    grow(k_cache_, n);
    grow(v_cache_, n);
    refresh_product_weights();
  }
  int generation_rows() const { return gen_rows_; }
  int generation_capacity() const { return gen_capacity_; }

  // Tn new tokens for each of the cache rows [first_row, first_row + rows)
  // (within the rows started; Tn >= 1): tokens [rows·Tn] row-major; start[b] = positions row b
  // already holds (its new tokens sit at start[b] + t, all < capacity);
  // pick[b] < Tn: the new token whose next-token logits row b returns (rows of
  // different lengths share one call: shorter ones padded at the end with any
  // valid id, picking their last real token; the padding's cache entries lie
  // beyond the real tokens and are overwritten before anything reads them).
  // Returns the logits [rows, padded_vocab] in scalar, readable on the host,
  // valid until the next call. The final LayerNorm and the output product run
  // on the picked tokens only.
  std::span<const scalar> forward_cached(std::span<const std::int32_t> tokens, std::span<const std::int32_t> start,
                                         std::span<const std::int32_t> pick, int rows, int Tn, int first_row = 0) {
    const operand_type* last = cached_forward(tokens, start, pick, rows, Tn, first_row, false);
    grow(gen_logits_, std::size_t(rows) * V);
    matmul_forward<Cfg::matmul>(be_, gen_logits_.data(), last, weight(layout().embed_out),
                                static_cast<const scalar*>(nullptr), rows, C, V);
    return host_view(gen_logits_, gen_logits_host_, std::size_t(rows) * V);
  }

  // forward_cached without the output product: keeps the picked token's final
  // hidden row of each cache row first_row + b with pick[b] >= 0 (pick[b] = -1:
  // none, as for a row whose last prompt token an earlier chunk held), for
  // generation_logits. A prefill of several groups of rows then reads the
  // output embedding (the largest weight) once instead of once per group.
  void prefill_cached(std::span<const std::int32_t> tokens, std::span<const std::int32_t> start,
                      std::span<const std::int32_t> pick, int rows, int Tn, int first_row = 0) {
    const operand_type* last = cached_forward(tokens, start, pick, rows, Tn, first_row, true);
    grow(gen_hidden_, std::size_t(gen_rows_) * C);
    for (int b = 0, i = 0; b < rows; ++b)
      if (pick[b] >= 0) copy(be_, gen_hidden_.data() + std::size_t(first_row + b) * C, last + std::size_t(i++) * C, C);
  }

  // The logits [rows, padded_vocab] (host-readable, valid until the next call)
  // of the hidden rows prefill_cached kept for cache rows [0, rows).
  std::span<const scalar> generation_logits(int rows) {
    if (rows <= 0 || rows > gen_rows_ || gen_hidden_.size() < std::size_t(rows) * C)
      fail("Model<{}>::generation_logits: {} rows (need 0 < rows <= the {} started, kept by prefill_cached)",
           Cfg::name, rows, gen_rows_);
    grow(gen_logits_, std::size_t(rows) * V);
    matmul_forward<Cfg::matmul>(be_, gen_logits_.data(), static_cast<const operand_type*>(gen_hidden_.data()),
                                weight(layout().embed_out), static_cast<const scalar*>(nullptr), rows, C, V);
    return host_view(gen_logits_, gen_logits_host_, std::size_t(rows) * V);
  }

  // Keeps cache rows keep[0] < keep[1] < ... (each < the rows started) as rows
  // 0, 1, ...: finished sequences leave the batch.
  void keep_generation_rows(std::span<const int> keep) {
    const std::size_t per_row = std::size_t(H) * gen_capacity_ * (C / H);
    const std::size_t per_layer = std::size_t(gen_rows_) * per_row;
    for (std::size_t i = 0; i < keep.size(); ++i) {
      const int r = keep[i];
      if (r < int(i) || r >= gen_rows_ || (i > 0 && r <= keep[i - 1]))
        fail("Model<{}>::keep_generation_rows: rows must ascend within [0, {}) (entry {} is {})", Cfg::name,
             gen_rows_, i, r);
      if (r == int(i)) continue;
      for (int l = 0; l < L; ++l)
        for (Buffer<scalar>* c : {&k_cache_, &v_cache_}) {
          scalar* base = c->data() + l * per_layer;
          copy(be_, base + i * per_row, static_cast<const scalar*>(base + std::size_t(r) * per_row), per_row);
        }
    }
  }

 private:
  // forward_cached's checks and layers, then the final LayerNorm of the
  // picked tokens (those with pick >= 0 where optional_pick), in order, as
  // [picked, C] operands in gen_op_.
  const operand_type* cached_forward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> start,
                                     std::span<const std::int32_t> pick, int rows, int Tn, int first_row,
                                     bool optional_pick) {
    if (gen_rows_ == 0) fail("Model<{}>::forward_cached: call start_generation first", Cfg::name);
    if (rows <= 0 || first_row < 0 || first_row + rows > gen_rows_ || Tn <= 0)
      fail("Model<{}>::forward_cached: rows [{}, {}) of {} tokens (need rows within the {} started, Tn > 0)",
           Cfg::name, first_row, first_row + rows, Tn, gen_rows_);
    const int N = rows * Tn;
    if (tokens.size() != std::size_t(N) || start.size() != std::size_t(rows) || pick.size() != std::size_t(rows))
      fail("Model<{}>::forward_cached: {} tokens, {} starts and {} picks for {} rows of {} tokens", Cfg::name,
           tokens.size(), start.size(), pick.size(), rows, Tn);
    // One upload of every index: tokens, starts, the picked tokens' rows, (learned) positions.
    int picked = 0;
    for (int b = 0; b < rows; ++b) picked += pick[b] >= 0;
    const bool gather = Tn > 1 || picked < rows;
    std::vector<std::int32_t>& ids = gen_ids_host_;
    ids.assign(tokens.begin(), tokens.end());
    ids.insert(ids.end(), start.begin(), start.end());
    for (int b = 0; b < rows; ++b) {
      if (start[b] < 0 || start[b] + Tn > gen_capacity_)
        fail("Model<{}>::forward_cached: row {} holds {} positions; {} more exceed the capacity {}", Cfg::name, b,
             start[b], Tn, gen_capacity_);
      if (pick[b] < (optional_pick ? -1 : 0) || pick[b] >= Tn)
        fail("Model<{}>::forward_cached: row {} picks token {} of {}", Cfg::name, b, pick[b], Tn);
      for (int t = 0; t < Tn; ++t)
        if (const std::int32_t id = tokens[std::size_t(b) * Tn + t]; id < 0 || id >= Cfg::vocab)
          fail("Model<{}>::forward_cached: token {} at row {}, new position {} is outside the vocabulary [0, {})",
               Cfg::name, id, b, t, Cfg::vocab);
      if (gather && pick[b] >= 0) ids.push_back(b * Tn + pick[b]);
    }
    if constexpr (Cfg::learned_positions)
      for (int b = 0; b < rows; ++b)
        for (int t = 0; t < Tn; ++t) ids.push_back(start[b] + t);
    grow(gen_ids_, ids.size());
    upload(be_, gen_ids_.data(), ids.data(), ids.size());
    const std::int32_t* tok = gen_ids_.data();
    const std::int32_t* starts = tok + N;
    const std::int32_t* rows_picked = starts + rows;
    const std::int32_t* positions = rows_picked + (gather ? picked : 0);

    // One layer's activations for N tokens (stride 0, as forward_losses), in place in one residual buffer.
    const std::size_t Nz = std::size_t(N), Cs = C;
    grow(gen_acts_, Nz * Cs * (Cfg::parallel_residual ? 1 : 2) + 2 * Nz + std::size_t(rows) * Cs);
    grow(gen_op_, Nz * Cs * 6 + 2 * Nz * D);
    scalar* x = gen_acts_.data();
    scalar* stats = x + Nz * Cs;
    scalar* h = Cfg::parallel_residual ? x : stats + 2 * Nz;  // sequential: h = x + attn(x)
    scalar* final_rows = stats + 2 * Nz + (Cfg::parallel_residual ? 0 : Nz * Cs);
    operand_type* o_ln1 = gen_op_.data();
    operand_type* o_ln2 = o_ln1 + Nz * Cs;
    operand_type* o_qkv = o_ln2 + Nz * Cs;
    operand_type* o_atty = o_qkv + 3 * Nz * Cs;
    operand_type* o_fc = o_atty + Nz * Cs;
    operand_type* o_gel = o_fc + Nz * D;
    const scalar* P = params_.data();
    const auto& lay = layout();
    embedding_forward_at(be_, x, tok, positions, P + lay.embed_in, Cfg::learned_positions ? P + lay.embed_pos : nullptr,
                         N, C);
    const std::size_t per_row = std::size_t(H) * gen_capacity_ * (C / H), per_layer = gen_rows_ * per_row;
    const std::size_t first = std::size_t(first_row) * per_row;
    for (int l = 0; l < L; ++l) {
      const BlockOffsets& w = lay.blocks[std::size_t(l)];
      if constexpr (Cfg::parallel_residual)
        layernorm_pair_forward(be_, o_ln1, o_ln2, stats, stats + N, x, P + w.ln1_w, P + w.ln1_b, P + w.ln2_w,
                               P + w.ln2_b, N, C, Cfg::ln_eps);
      else
        layernorm_forward(be_, o_ln1, stats, stats + N, x, P + w.ln1_w, P + w.ln1_b, N, C, Cfg::ln_eps);
      matmul_forward<Cfg::matmul>(be_, o_qkv, o_ln1, weight(w.qkv_w), weight(w.qkv_b), N, C, 3 * C);
      attention_cached<Cfg::matmul, Cfg::head_dim>(be_, o_atty, static_cast<const operand_type*>(o_qkv),
                                                    k_cache_.data() + l * per_layer + first,
                                                    v_cache_.data() + l * per_layer + first,
                                                    starts, rope_cos_.data(), rope_sin_.data(), rows, Tn, C, H,
                                                    Cfg::rotary_dim, gen_capacity_);
      matmul_forward<Cfg::matmul>(be_, h, o_atty, weight(w.proj_w), P + w.proj_b, N, C, C, static_cast<const scalar*>(x));
      if constexpr (!Cfg::parallel_residual)
        layernorm_forward(be_, o_ln2, stats, stats + N, h, P + w.ln2_w, P + w.ln2_b, N, C, Cfg::ln_eps);
      matmul_gelu_forward<Cfg::matmul, Cfg::gelu>(be_, o_gel, o_fc, o_ln2, weight(w.fc_w), weight(w.fc_b), N, C, D);
      matmul_forward<Cfg::matmul>(be_, x, o_gel, weight(w.fc2_w), P + w.fc2_b, N, D, C, static_cast<const scalar*>(h));
    }
    // The final LayerNorm of the picked tokens only.
    if (picked == 0) return o_ln1;
    const scalar* last = x;
    if (gather) {
      embedding_forward_at(be_, final_rows, rows_picked, static_cast<const std::int32_t*>(nullptr),
                           static_cast<const scalar*>(x), static_cast<const scalar*>(nullptr), picked, C);
      last = final_rows;
    }
    layernorm_forward(be_, o_ln1, stats, stats + rows, last, P + lay.lnf_w, P + lay.lnf_b, picked, C, Cfg::ln_eps);
    return o_ln1;
  }

  // The first n elements of a backend buffer readable on the host: the
  // buffer itself, or their copy in `host`.
  template <class U>
  std::span<const U> host_view(const Buffer<U>& b, std::vector<U>& host, std::size_t n) const {
    if constexpr (host_memory) {
      return {b.data(), n};
    } else {
      host.resize(n);
      download(be_, host.data(), b.data(), n);
      return {host.data(), n};
    }
  }
  std::size_t tokens_in_batch() const { return std::size_t(B_) * std::size_t(T_); }

  // Per-token buffers hold the largest batch seen: batches of changing shape
  // (a DRO step's passes, evaluation between training steps) reuse them
  // instead of reallocating (on a GPU: a synchronisation and a cudaMalloc).
  template <class U>
  static void grow(Buffer<U>& b, std::size_t n) {
    if (b.size() < n) b.resize(n);
  }

  void check_batch(std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets, int B, int T) const {
    if (B <= 0 || T <= 0 || T > Cfg::n_ctx)
      fail("Model<{}>::forward: batch {}x{} is invalid (need B > 0 and 0 < T <= context {})", Cfg::name, B, T,
           Cfg::n_ctx);
    const std::size_t N = std::size_t(B) * std::size_t(T);
    if (inputs.size() != N || targets.size() != N)
      fail("Model<{}>::forward: {} inputs and {} targets for a {}x{} batch (expected {} each)", Cfg::name,
           inputs.size(), targets.size(), B, T, N);
    for (std::size_t i = 0; i < N; ++i) {
      if (inputs[i] < 0 || inputs[i] >= Cfg::vocab)
        fail("Model<{}>::forward: input token {} at batch row {}, position {} is outside the vocabulary [0, {})",
             Cfg::name, inputs[i], i / std::size_t(T), i % std::size_t(T), Cfg::vocab);
      if (targets[i] >= Cfg::vocab || targets[i] < -1)
        fail("Model<{}>::forward: target {} at batch row {}, position {} is outside [0, {}) (use -1 for padding)",
             Cfg::name, targets[i], i / std::size_t(T), i % std::size_t(T), Cfg::vocab);
    }
  }

  // The weights as the products read them: the parameters themselves, or
  // (operand_type not scalar) their copy, which the forward makes and the
  // backward reuses. It covers the blocks' tensors (contiguous, from the
  // first block's to the final LayerNorm's) and the output embedding: with
  // tied embeddings the input embedding, first in the layout (with learned
  // positions after it), else the last tensor (after the final LayerNorm).
  static std::pair<std::size_t, std::size_t> weight_copy_range() {
    const ParamLayout& lay = layout();
    const std::size_t out_end = lay.embed_out + std::size_t(V) * C;
    return {std::min(lay.blocks.front().ln1_w, lay.embed_out), std::max(lay.lnf_w, out_end)};
  }
  const operand_type* weight(std::size_t offset) const {
    if constexpr (std::is_same_v<operand_type, scalar>) return params_.data() + offset;
    else return params_op_.data() + (offset - weight_copy_range().first);
  }
  void refresh_product_weights() {
    if constexpr (!std::is_same_v<operand_type, scalar>) {
      const auto [first, end] = weight_copy_range();
      params_op_.resize(end - first);
      convert(be_, params_op_.data(), params_.data() + first, end - first);
    }
  }

  ForwardResult<scalar> run_forward(std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets,
                                    int B, int T, bool for_backward) {
    check_batch(inputs, targets, B, T);
    has_forward_ = false;
    B_ = B;
    T_ = T;
    const int N = B * T;
    allocate(B, T, for_backward);
    grow(tokens_, std::size_t(N));
    grow(targets_, std::size_t(N));
    upload(be_, tokens_.data(), inputs.data(), std::size_t(N));
    upload(be_, targets_.data(), targets.data(), std::size_t(N));
    const scalar* P = params_.data();
    refresh_product_weights();
    const auto& lay = layout();
    embedding_forward(be_, res(0), tokens_.data(), P + lay.embed_in,
                      Cfg::learned_positions ? P + lay.embed_pos : nullptr, B, T, C);
    for (int l = 0; l < L; ++l) {
      const BlockOffsets& w = lay.blocks[std::size_t(l)];
      scalar* x = res(l);
      if constexpr (Cfg::parallel_residual)  // both LayerNorms read x: one pass, one set of statistics
        layernorm_pair_forward(be_, ln1(l), ln2(l), ln1_stats(l), ln1_stats(l) + N, x, P + w.ln1_w, P + w.ln1_b,
                               P + w.ln2_w, P + w.ln2_b, N, C, Cfg::ln_eps);
      else
        layernorm_forward(be_, ln1(l), ln1_stats(l), ln1_stats(l) + N, x, P + w.ln1_w, P + w.ln1_b, N, C,
                          Cfg::ln_eps);
      matmul_forward<Cfg::matmul>(be_, qkv(), ln1(l), weight(w.qkv_w), weight(w.qkv_b), N, C, 3 * C);
      attention_forward<Cfg::matmul, Cfg::head_dim>(be_, atty(l), qkvr(l), att(l), qkv(), rope_cos_.data(),
                                                     rope_sin_.data(), B, T, C, H, Cfg::rotary_dim);
      // The residual adds happen in the products (x + branch: the GEMM's C
      // matrix): parallel, res(l+1) = x + attn(x), then += mlp(x); else
      // h = x + attn(x), res(l+1) = h + mlp(h).
      scalar* const h = Cfg::parallel_residual ? res(l + 1) : hres(l);
      matmul_forward<Cfg::matmul>(be_, h, atty(l), weight(w.proj_w), P + w.proj_b, N, C, C, x);
      if constexpr (!Cfg::parallel_residual)
        layernorm_forward(be_, ln2(l), ln2_stats(l), ln2_stats(l) + N, h, P + w.ln2_w, P + w.ln2_b, N, C,
                          Cfg::ln_eps);
      matmul_gelu_forward<Cfg::matmul, Cfg::gelu>(be_, gel(l), fc(l), ln2(l), weight(w.fc_w), weight(w.fc_b), N, C, D);
      matmul_forward<Cfg::matmul>(be_, res(l + 1), gel(l), weight(w.fc2_w), P + w.fc2_b, N, D, C,
                                  static_cast<const scalar*>(h));
    }
    layernorm_forward(be_, lnf(), lnf_stats(), lnf_stats() + N, res(L), P + lay.lnf_w, P + lay.lnf_b, N, C,
                      Cfg::ln_eps);
    classifier_forward<Cfg::matmul>(be_, losses_.data(), mask_.data(), probs(), inv_sum(), lnf(),
                                    weight(lay.embed_out), targets_.data(), N, C, V, for_backward);
    ForwardResult<scalar> r;
    r.losses = {losses_.data(), std::size_t(N)};
    r.mask = {mask_.data(), std::size_t(N)};
    for (const backend::RowLossSums& row : row_loss_sums(be_, losses_.data(), mask_.data(), B, T)) {
      r.tokens += std::size_t(row.tokens);
      r.loss_sum += row.loss;
    }
    has_forward_ = for_backward;
    return r;
  }

  // Activation buffers: one allocation per element type, laid out for the
  // largest batch seen. Without a backward to follow, every layer shares one
  // set of per-layer buffers (stride 0) and the gradient buffers are left out.
  void allocate(int B, int T, bool for_backward) {
    const std::size_t layers = for_backward ? std::size_t(L) : 1;
    const std::size_t N = std::size_t(B) * T, Cs = C;
    std::size_t at = 0;  // the next free element of the buffer being laid out
    auto take = [&](std::size_t n) {
      const std::size_t o = at;
      at += (n + 31) / 32 * 32;  // keep every view 64-byte aligned (also in 2-byte types)
      return o;
    };
    // One layer of operand_type buffers.
    o_ln1_ = take(N * Cs);
    o_ln2_ = take(N * Cs);
    o_gel_ = take(N * D);
    o_fc_ = take(N * D);
    o_atty_ = take(N * Cs);
    op_layer_stride_ = for_backward ? at : 0;
    at *= layers;
    o_qkv_ = take(3 * N * Cs);  // read only by the attention forward (its rotated copy, qkvr, is kept)
    o_lnf_ = take(N * Cs);
    o_probs_ = take(N * V);  // the classifier's [N, V] matrix (bf16 models: in bf16)
    if (for_backward) {  // the gradients of the activations above
      o_dlnf_ = take(N * Cs);
      o_dfc_ = take(N * D);
      o_dln1_ = take(N * Cs);
      o_dln2_ = take(N * Cs);
      o_datty_ = take(N * Cs);
      o_dqkv_ = take(3 * N * Cs);
      o_dres_op_ = std::is_same_v<operand_type, scalar> ? 0 : take(N * Cs);
    }
    if (op_acts_.size() < at) op_acts_.resize(at);
    // One layer of scalar buffers, then the ones used once per pass.
    at = 0;
    o_res_ = take(N * Cs);
    o_ln1s_ = take(2 * N);
    o_qkvr_ = take(attention_qkvr_size<Cfg::matmul, scalar>(be_, B, T, C, H));
    o_att_ = take(attention_state_size(be_, B, H, T));
    o_h_ = Cfg::parallel_residual ? 0 : take(N * Cs);
    o_ln2s_ = Cfg::parallel_residual ? 0 : take(2 * N);  // parallel: LN2 shares LN1's statistics (same input)
    layer_stride_ = for_backward ? at : 0;
    at *= layers;
    o_final_res_ = take(N * Cs);
    o_lnfs_ = take(2 * N);
    o_inv_sum_ = take(N);
    if (for_backward) o_dres_ = take(N * Cs);
    if (acts_.size() < at) acts_.resize(at);
    grow(losses_, N);
    grow(mask_, N);
  }

  scalar* act(std::size_t o) { return acts_.data() + o; }
  scalar* layer(int l, std::size_t o) { return acts_.data() + std::size_t(l) * layer_stride_ + o; }
  operand_type* op_layer(int l, std::size_t o) { return op_acts_.data() + std::size_t(l) * op_layer_stride_ + o; }
  scalar* res(int l) { return l == L ? act(o_final_res_) : layer(l, o_res_); }
  operand_type* ln1(int l) { return op_layer(l, o_ln1_); }
  scalar* ln1_stats(int l) { return layer(l, o_ln1s_); }
  operand_type* qkv() { return op_acts_.data() + o_qkv_; }
  scalar* qkvr(int l) { return layer(l, o_qkvr_); }
  scalar* att(int l) { return layer(l, o_att_); }
  operand_type* atty(int l) { return op_layer(l, o_atty_); }
  scalar* hres(int l) { return layer(l, o_h_); }
  operand_type* ln2(int l) { return op_layer(l, o_ln2_); }
  scalar* ln2_stats(int l) { return layer(l, o_ln2s_); }
  operand_type* fc(int l) { return op_layer(l, o_fc_); }
  operand_type* gel(int l) { return op_layer(l, o_gel_); }
  operand_type* lnf() { return op_acts_.data() + o_lnf_; }
  scalar* lnf_stats() { return act(o_lnfs_); }
  operand_type* probs() { return op_acts_.data() + o_probs_; }
  scalar* inv_sum() { return act(o_inv_sum_); }
  scalar* d_res() { return act(o_dres_); }
  operand_type* d_lnf() { return op_acts_.data() + o_dlnf_; }
  operand_type* d_ln1() { return op_acts_.data() + o_dln1_; }
  operand_type* d_ln2() { return op_acts_.data() + o_dln2_; }
  operand_type* d_atty() { return op_acts_.data() + o_datty_; }
  operand_type* d_qkv() { return op_acts_.data() + o_dqkv_; }
  operand_type* d_fc() { return op_acts_.data() + o_dfc_; }
  operand_type* d_res_op() { return op_acts_.data() + o_dres_op_; }  // dres as the products read it

  Buffer<scalar>& grads() {
    if (grads_.size() == 0) {
      grads_.resize(layout().total);
      fill(be_, grads_.data(), scalar(0), grads_.size());
    }
    return grads_;
  }

  Backend be_;
  Buffer<scalar> params_, grads_, acts_;
  Buffer<operand_type> params_op_, op_acts_;  // see operand_type and weight() (params_op_: empty when it is scalar)
  Buffer<scalar> rope_cos_, rope_sin_, losses_, weights_;
  Buffer<std::uint8_t> mask_;
  Buffer<std::int32_t> tokens_, targets_;
  // Host mirrors for device backends (unused on the CPU).
  mutable std::vector<scalar> params_host_;
  mutable std::vector<scalar> losses_host_;
  mutable std::vector<std::uint8_t> mask_host_;
  // Generation (start_generation, forward_cached): the key/value caches, one
  // layer's activations and the picked tokens' logits.
  Buffer<scalar> k_cache_, v_cache_, gen_acts_, gen_logits_;
  Buffer<operand_type> gen_op_, gen_hidden_;
  Buffer<std::int32_t> gen_ids_;
  std::vector<std::int32_t> gen_ids_host_;
  mutable std::vector<scalar> gen_logits_host_;
  int gen_rows_ = 0, gen_capacity_ = 0;
  int B_ = 0, T_ = 0;
  bool has_forward_ = false;
  std::size_t layer_stride_ = 0, op_layer_stride_ = 0;  // elements between layers' buffers (0: shared)
  std::size_t o_res_ = 0, o_ln1_ = 0, o_ln1s_ = 0, o_qkv_ = 0, o_qkvr_ = 0, o_att_ = 0, o_atty_ = 0, o_h_ = 0,
              o_ln2_ = 0, o_ln2s_ = 0, o_fc_ = 0, o_gel_ = 0;
  std::size_t o_final_res_ = 0, o_lnf_ = 0, o_lnfs_ = 0, o_probs_ = 0, o_inv_sum_ = 0,
              o_dres_ = 0, o_dlnf_ = 0, o_dln1_ = 0, o_dln2_ = 0, o_datty_ = 0, o_dqkv_ = 0, o_dfc_ = 0,
              o_dres_op_ = 0;
};

}  // namespace doremi

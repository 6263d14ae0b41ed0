#pragma once
// The parameter table of a GPT model: every tensor's HuggingFace GPT-NeoX name,
// shape, place in the one flat buffer, whether weight decay applies, and its
// initial standard deviation. Checkpoints, the optimizer and initialisation all
// read this one table.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace doremi {

struct TensorInfo {
  std::string name;                 // HuggingFace GPT-NeoX name
  std::vector<std::int64_t> shape;  // row-major, [out, in] for linear weights
  std::size_t offset = 0;           // into the flat parameter buffer
  std::size_t size = 0;             // element count
  bool decay = false;               // AdamW weight decay (off for biases and LayerNorm)
  enum class Init { normal, zeros, ones } init = Init::zeros;
  double init_std = 0.0;
};

// Offsets of one transformer block's tensors, relative to the flat buffer.
struct BlockOffsets {
  std::size_t ln1_w, ln1_b, ln2_w, ln2_b, qkv_w, qkv_b, proj_w, proj_b, fc_w, fc_b, fc2_w, fc2_b;
};

struct ParamLayout {
  std::vector<TensorInfo> tensors;
  std::size_t total = 0;
  std::size_t embed_in = 0, embed_pos = 0, lnf_w = 0, lnf_b = 0, embed_out = 0;
  std::vector<BlockOffsets> blocks;
};

template <class Cfg>
ParamLayout make_param_layout() {
  ParamLayout L;
  const std::int64_t C = Cfg::n_embd, V = Cfg::padded_vocab;
  // GPT-NeoX / GPT-2 initialisation: N(0, 0.02), output projections of each
  // residual branch scaled by 1/√(2·n_layer) so the residual stream's variance
  // does not grow with depth.
  const double std0 = 0.02, std_out = 0.02 / std::sqrt(2.0 * Cfg::n_layer);
  auto add = [&](std::string name, std::vector<std::int64_t> shape, bool decay, TensorInfo::Init init,
                 double sd = 0.0) {
    std::size_t n = 1;
    for (auto d : shape) n *= std::size_t(d);
    L.tensors.push_back({std::move(name), std::move(shape), L.total, n, decay, init, sd});
    L.total += n;
    return L.tensors.back().offset;
  };
  using I = TensorInfo::Init;
  L.embed_in = add("gpt_neox.embed_in.weight", {V, C}, true, I::normal, std0);
  if constexpr (Cfg::learned_positions)
    L.embed_pos = add("gpt_neox.embed_pos.weight", {Cfg::n_ctx, C}, true, I::normal, std0);
  for (int l = 0; l < Cfg::n_layer; ++l) {
    const std::string p = fmt::format("gpt_neox.layers.{}.", l);
    BlockOffsets b{};
    b.ln1_w = add(p + "input_layernorm.weight", {C}, false, I::ones);
    b.ln1_b = add(p + "input_layernorm.bias", {C}, false, I::zeros);
    b.ln2_w = add(p + "post_attention_layernorm.weight", {C}, false, I::ones);
    b.ln2_b = add(p + "post_attention_layernorm.bias", {C}, false, I::zeros);
    b.qkv_w = add(p + "attention.query_key_value.weight", {3 * C, C}, true, I::normal, std0);
    b.qkv_b = add(p + "attention.query_key_value.bias", {3 * C}, false, I::zeros);
    b.proj_w = add(p + "attention.dense.weight", {C, C}, true, I::normal, std_out);
    b.proj_b = add(p + "attention.dense.bias", {C}, false, I::zeros);
    b.fc_w = add(p + "mlp.dense_h_to_4h.weight", {Cfg::d_mlp, C}, true, I::normal, std0);
    b.fc_b = add(p + "mlp.dense_h_to_4h.bias", {Cfg::d_mlp}, false, I::zeros);
    b.fc2_w = add(p + "mlp.dense_4h_to_h.weight", {C, Cfg::d_mlp}, true, I::normal, std_out);
    b.fc2_b = add(p + "mlp.dense_4h_to_h.bias", {C}, false, I::zeros);
    L.blocks.push_back(b);
  }
  L.lnf_w = add("gpt_neox.final_layer_norm.weight", {C}, false, I::ones);
  L.lnf_b = add("gpt_neox.final_layer_norm.bias", {C}, false, I::zeros);
  L.embed_out = Cfg::tied ? L.embed_in : add("embed_out.weight", {V, C}, true, I::normal, std0);
  return L;
}

}  // namespace doremi

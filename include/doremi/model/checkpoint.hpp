#pragma once
// Model weights in and out of the HuggingFace ecosystem: a folder with
// `model.safetensors` (GPT-NeoX tensor names) and `config.json`, exactly what
// `GPTNeoXForCausalLM.save_pretrained` writes and `from_pretrained` reads.
//
//   doremi::save_model(model, "out/ckpt");   // transformers can load this
//   doremi::load_model(model, "pythia-dir");  // and we load what it wrote
//
// Loading checks config.json against the compiled Config and every tensor's
// shape, naming the file and tensor on a mismatch; weights stored in fp16 or
// bf16 are widened.
#include <filesystem>
#include <set>
#include <string>

#include <span>
#include <vector>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/core/safetensors.hpp"
#include "doremi/model/hf_config.hpp"
#include "doremi/model/params.hpp"

namespace doremi {

// Adds every parameter of `model` to `w` under its HuggingFace name.
template <class M>
void add_model_tensors(SafetensorsWriter& w, const M& model) {
  const auto params = model.host_parameters();
  for (const TensorInfo& t : M::tensors())
    w.add(t.name, t.shape, params.subspan(t.offset, t.size));
}

// Writes model.safetensors and config.json into `dir` (created if missing);
// each file is written atomically.
template <class M>
void save_model(const M& model, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  SafetensorsWriter w;
  w.set_metadata("format", "pt");  // what transformers expects in its own files
  add_model_tensors(w, model);
  w.write(dir / "model.safetensors");
  write_file_atomic(dir / "config.json", hf_config_json<typename M::config>().dump(2) + "\n");
}

// Loads weights from a folder written by save_model or by transformers.
template <class M>
void load_model(M& model, const std::filesystem::path& dir) {
  using Cfg = typename M::config;
  const auto config_path = dir / "config.json";
  check_hf_config<Cfg>(read_json_file(config_path), config_path);
  const auto weights_path = dir / "model.safetensors";
  if (!std::filesystem::exists(weights_path))
    fail("load_model: {} not found (sharded or .bin checkpoints are not supported; save with "
         "safe_serialization=True as one file)",
         weights_path.string());
  const SafetensorsFile file(weights_path);
  std::vector<typename M::scalar> staging;  // device backends: read on the host, upload once
  std::span<typename M::scalar> params;
  if constexpr (M::host_memory) {
    params = model.parameters();
  } else {
    staging.resize(model.num_parameters());
    params = staging;
  }
  std::set<std::string> used;
  for (const TensorInfo& t : M::tensors()) {
    std::string name = t.name;
    // transformers drops one of two tied tensors when saving; either may remain.
    if (Cfg::tied && name == "gpt_neox.embed_in.weight" && !file.contains(name) && file.contains("embed_out.weight"))
      name = "embed_out.weight";
    if (!file.contains(name)) fail("load_model: {} has no tensor '{}' that the model needs", weights_path.string(), name);
    file.read(name, t.shape, params.subspan(t.offset, t.size));
    used.insert(name);
  }
  for (const std::string& name : file.names()) {
    if (used.count(name)) continue;
    // Buffers older transformers versions save beside the weights.
    const bool buffer = name.ends_with(".attention.bias") || name.ends_with(".attention.masked_bias") ||
                        name.ends_with("rotary_emb.inv_freq");
    const bool tied_copy = Cfg::tied && (name == "embed_out.weight" || name == "gpt_neox.embed_in.weight");
    if (!buffer && !tied_copy)
      fail("load_model: {} holds tensor '{}' that model preset '{}' does not have", weights_path.string(), name,
           Cfg::name);
  }
  if constexpr (!M::host_memory) model.upload_parameters(staging);
}

}  // namespace doremi

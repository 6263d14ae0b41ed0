// One translation unit composing DoReMi from the library's templates, as a
// researcher would in their own code: a custom compile-time model shape for
// the reference and proxy, a preset for the main model, and the pipeline.
//
//   compose DATA_DIR OUTPUT_DIR      (DATA_DIR from `doremi preprocess`, byte tokenizer)
#include <doremi/doremi.hpp>

// A 3-layer, 96-wide GPT-NeoX-style proxy: every shape is a compile-time constant.
constexpr doremi::Spec small_proxy{.name = "small-proxy", .n_layer = 3, .n_embd = 96, .n_head = 4, .n_ctx = 128,
                                   .vocab = 257, .vocab_multiple = 8, .rotary_pct = 0.25,
                                   .tied_embeddings = true, .residual = doremi::Residual::parallel,
                                   .gelu = doremi::Gelu::tanh};

int main(int argc, char** argv) {
  if (argc != 3) {
    fmt::print(stderr, "usage: {} DATA_DIR OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  try {
    doremi::RunConfig cfg;
    cfg.data = argv[1];
    cfg.output = argv[2];
    cfg.seq_len = 128;
    cfg.reference_weights = "pack";        // by size
    cfg.reference.steps = cfg.proxy.steps = cfg.main.steps = 200;
    cfg.proxy.dro = doremi::DroConfig{/*eta=*/1.0, /*smoothing=*/1e-3};
    doremi::StagesFor<doremi::Config<small_proxy, float>> small;   // reference + proxy
    doremi::StagesFor<doremi::presets::Tiny<float>> main_model;      // main models
    const auto result = doremi::run_pipeline(cfg, small, main_model);
    fmt::print("{}\n", result.to_json().dump(2));
  } catch (const doremi::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}

// Training a language model with Trainer on one text file (the README's first
// example): presets::tiny (2 layers, 64 wide, a byte vocabulary) on random
// 128-token windows of the file's bytes, AdamW with DoReMi's schedule, then a
// checkpoint that transformers.GPTNeoXForCausalLM.from_pretrained loads.
//
//   train TEXT_FILE OUTPUT_DIR [STEPS]        (200 steps by default)
//
// The last tenth of the file is held out: the program prints the model's
// loss there before and after training. Run it again with the same
// OUTPUT_DIR and it continues from the last checkpoint there.
#include <doremi/doremi.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) doremi::fail("cannot open {}", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

long parse_steps(const char* text) {
  char* end = nullptr;
  const long steps = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || steps <= 0) doremi::fail("STEPS must be a positive integer (got '{}')", text);
  return steps;
}

// Mean loss over up to 16 consecutive 128-token windows of `tokens`
// (forward_losses: no activations kept for a backward pass).
template <class M>
double held_out_loss(M& model, const std::vector<std::int32_t>& tokens) {
  constexpr int T = 128;
  const int B = int(std::min<std::size_t>(16, (tokens.size() - 1) / T));
  if (B == 0) doremi::fail("the held-out part has {} tokens, fewer than one window of {}", tokens.size(), T + 1);
  std::vector<std::int32_t> inputs(std::size_t(B) * T), targets(std::size_t(B) * T);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = tokens[i];
    targets[i] = tokens[i + 1];
  }
  return model.forward_losses(inputs, targets, B, T).mean_loss();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    fmt::print(stderr, "usage: {} TEXT_FILE OUTPUT_DIR [STEPS]\n", argv[0]);
    return 2;
  }
  try {
    const std::filesystem::path output = argv[2];
    const long steps = argc > 3 ? parse_steps(argv[3]) : 200;
    std::vector<std::int32_t> tokens = doremi::ByteTokenizer().encode(read_file(argv[1]));  // bytes as token ids
    const auto split = tokens.end() - std::ptrdiff_t(tokens.size() / 10);
    const std::vector<std::int32_t> held_out(split, tokens.end());
    tokens.erase(split, tokens.end());

    using Cfg = doremi::presets::Tiny<float>;  // compile-time shapes
    doremi::Model<Cfg> model;                   // backend::Cpu by default
    model.init(/*seed=*/1);
    const double before = held_out_loss(model, held_out);

    doremi::WindowSampler sampler(tokens, /*batch=*/16, /*seq_len=*/128, /*seed=*/1);
    doremi::TrainConfig cfg;
    cfg.steps = steps;
    cfg.schedule = doremi::LrSchedule::doremi_default(cfg.steps);  // warmup + exponential decay
    cfg.output_dir = output;                                         // metrics.jsonl + checkpoints
    doremi::Trainer trainer(model, sampler, cfg);
    trainer.resume_if_possible();
    trainer.run();
    doremi::save_model(model, output / "final");  // transformers.GPTNeoXForCausalLM.from_pretrained(...)

    fmt::print("held-out loss at initialisation: {:.4f}\n", before);
    fmt::print("held-out loss after {} steps: {:.4f}\n", trainer.step(), held_out_loss(model, held_out));
    fmt::print("model: {}\n", (output / "final").string());
  } catch (const doremi::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}

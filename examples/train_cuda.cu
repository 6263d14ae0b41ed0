// train.cpp on a GPU: the same Trainer and WindowSampler with the model on
// backend::Cuda, here with bf16 matrix products (fp32 accumulation, fp32
// master weights and AdamW state), as the pipeline runs on a GPU. The
// checkpoint is the same files as on the CPU: a CPU model reads it back and
// gives the GPU model's held-out loss up to bf16 rounding.
//
//   train_cuda TEXT_FILE OUTPUT_DIR [STEPS [DEVICE]]     (200 steps on GPU 0 by default)
//
// The last tenth of the file is held out. Compiled by nvcc, linked to
// doremi::cuda (CMake: target_link_libraries(app PRIVATE doremi::cuda)).
// Without a usable GPU it says so and exits with status 1.
#include <doremi/backend/cuda.hpp>
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

long parse_int(const char* text, const char* what, long min) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || v < min) doremi::fail("{} must be an integer >= {} (got '{}')", what, min, text);
  return v;
}

// Mean loss over up to 16 consecutive 128-token windows of `tokens`, on
// whichever backend the model lives (forward_losses keeps no activations).
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
  if (argc < 3 || argc > 5) {
    fmt::print(stderr, "usage: {} TEXT_FILE OUTPUT_DIR [STEPS [DEVICE]]\n", argv[0]);
    return 2;
  }
  try {
    if (!doremi::backend::cuda_available()) {
      fmt::print(stderr, "no usable GPU: {} (train.cpp is the CPU version)\n",
                 doremi::backend::cuda::unavailable_reason());
      return 1;
    }
    const std::filesystem::path output = argv[2];
    const long steps = argc > 3 ? parse_int(argv[3], "STEPS", 1) : 200;
    const int device = argc > 4 ? int(parse_int(argv[4], "DEVICE", 0)) : 0;
    std::vector<std::int32_t> tokens = doremi::ByteTokenizer().encode(read_file(argv[1]));  // bytes as token ids
    const auto split = tokens.end() - std::ptrdiff_t(tokens.size() / 10);
    const std::vector<std::int32_t> held_out(split, tokens.end());
    tokens.erase(split, tokens.end());

    using Cfg = doremi::Config<doremi::bf16_matmul(doremi::presets::tiny), float>;
    doremi::Model<Cfg, doremi::backend::Cuda> model{doremi::backend::Cuda(device)};  // bf16 products, fp32 master weights
    model.init(/*seed=*/1);
    const double before = held_out_loss(model, held_out);

    doremi::WindowSampler sampler(tokens, /*batch=*/16, /*seq_len=*/128, /*seed=*/1);
    doremi::TrainConfig cfg;
    cfg.steps = steps;
    cfg.schedule = doremi::LrSchedule::doremi_default(cfg.steps);
    cfg.output_dir = output;
    doremi::Trainer trainer(model, sampler, cfg);
    trainer.resume_if_possible();
    trainer.run();
    doremi::save_model(model, output / "final");
    const double after = held_out_loss(model, held_out);

    doremi::Model<doremi::presets::Tiny<float>> cpu_model;  // fp32 on the CPU
    doremi::load_model(cpu_model, output / "final");
    const double on_cpu = held_out_loss(cpu_model, held_out);

    fmt::print("held-out loss at initialisation: {:.4f}\n", before);
    fmt::print("held-out loss after {} steps: {:.4f}\n", trainer.step(), after);
    fmt::print("held-out loss of the checkpoint on the CPU: {:.4f}\n", on_cpu);
    fmt::print("model: {}\n", (output / "final").string());
  } catch (const doremi::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}

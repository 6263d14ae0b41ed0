// Compiles and runs a tiny model through the public header only.
#include <doremi/doremi.hpp>
#include <fmt/format.h>

int main() {
  doremi::Model<doremi::presets::Tiny<float>> model;
  model.init(1);
  std::vector<std::int32_t> in(16, 3), tg(16, 4);
  const auto out = model.forward(in, tg, 2, 8);
  fmt::print("consumer ok: {} parameters, loss {:.3f}\n", model.num_parameters(), out.mean_loss());
  return out.tokens == 16 ? 0 : 1;
}

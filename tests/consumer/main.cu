// A downstream CUDA program: Model<Config, backend::Cuda> through the public
// headers, built against doremi::cuda. Compiles and links everywhere nvcc is;
// runs a forward pass where a GPU is present, else says why and succeeds.
#include <doremi/backend/cuda.hpp>
#include <doremi/doremi.hpp>
#include <fmt/format.h>

int main() {
  if (!doremi::backend::cuda_available()) {
    fmt::print("consumer_cuda built; not run: {}\n", doremi::backend::cuda::unavailable_reason());
    return 0;
  }
  doremi::Model<doremi::presets::Tiny<float>, doremi::backend::Cuda> model;
  model.init(1);
  std::vector<std::int32_t> in(16, 3), tg(16, 4);
  const auto out = model.forward(in, tg, 2, 8);
  fmt::print("consumer_cuda ok: {} parameters, loss {:.3f}\n", model.num_parameters(), out.mean_loss());
  return out.tokens == 16 ? 0 : 1;
}

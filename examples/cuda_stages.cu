// The command-line program's GPU stages: every preset's StagesFor on
// backend::Cuda (bf16 matrix products, fp32 master weights), compiled by
// nvcc when the build has the CUDA backend. doremi.cpp calls this for
// --device cuda[:N]; without a usable GPU, backend::Cuda raises doremi::Error.
#include <memory>
#include <string>

#include "doremi/backend/cuda.hpp"
#ifdef DOREMI_NCCL
#include "doremi/dist/nccl.hpp"  // data-parallel gradient sums between the ranks' GPUs
#endif
#include "doremi/eval/generate.hpp"
#include "doremi/model/checkpoint.hpp"
#include "doremi/pipeline/pipeline.hpp"

namespace doremi_cli {

// Data-parallel (several ranks): `--device cuda` (or cuda:0) is each rank's
// own GPU, its local rank modulo the GPUs it sees.
std::unique_ptr<doremi::ModelStages> make_cuda_stages(const std::string& preset, int device) {
#ifdef DOREMI_NCCL
  if (doremi::dist::world().size() > 1 && device == 0) device = doremi::dist::local_gpu(doremi::dist::world());
#endif
  return doremi::make_stages(preset, doremi::backend::Cuda(device));
}

// `doremi generate --device cuda[:N]`: the preset with bf16 products, as the
// GPU stages run it, where the CUDA backend has the generation functions
// (backend::GenerationBackend); else an error saying so.
std::vector<doremi::GeneratedRow> generate_cuda(const std::string& preset, int device, const std::filesystem::path& dir,
                                                const std::vector<std::vector<std::int32_t>>& prompts,
                                                const doremi::GenerationConfig& config, const doremi::Tokenizer& tokenizer) {
  using B = doremi::backend::Cuda;
  return doremi::dispatch_preset<float>(preset, [&]<class Base>() -> std::vector<doremi::GeneratedRow> {
    using Cfg = doremi::Config<doremi::bf16_matmul(Base::spec), float>;
    if constexpr (doremi::backend::GenerationBackend<B, Cfg>) {
      doremi::Model<Cfg, B> model{B(device)};
      doremi::load_model(model, dir);
      return doremi::generate(model, prompts, config, &tokenizer);
    } else {
      doremi::fail("--device cuda: this build's CUDA backend has no generation functions yet; use --device cpu");
    }
  });
}

}  // namespace doremi_cli

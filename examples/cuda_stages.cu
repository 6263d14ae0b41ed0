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

}  // namespace doremi_cli

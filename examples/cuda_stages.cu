// The command-line program's GPU stages: every preset's StagesFor on
// backend::Cuda (bf16 matrix products, fp32 master weights), compiled by
// nvcc when the build has the CUDA backend. doremi.cpp calls this for
// --device cuda[:N]; without a usable GPU, backend::Cuda raises doremi::Error.
#include <memory>
#include <string>

#include "doremi/backend/cuda.hpp"
#include "doremi/pipeline/pipeline.hpp"

namespace doremi_cli {

std::unique_ptr<doremi::ModelStages> make_cuda_stages(const std::string& preset, int device) {
  return doremi::make_stages(preset, doremi::backend::Cuda(device));
}

}  // namespace doremi_cli

#pragma once
// The compile-time choices a backend's layers take as template arguments,
// which model::Spec selects per model (names in namespace doremi, as before:
// doremi::Gelu, doremi::MatmulPrecision). Here, below the model, so the
// backends need not include model/.
namespace doremi {

enum class Gelu { exact, tanh };  // erf GELU (Pythia) or tanh approximation (GPT-2)

// Inputs of the matrix products: the model's scalar type, or bf16 (weights,
// activations and gradients rounded to bf16 at the product, fp32 accumulation,
// fp32 master weights and everything else: mixed precision as on GPUs).
enum class MatmulPrecision { native, bf16 };

}  // namespace doremi

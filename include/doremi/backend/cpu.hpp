#pragma once
// backend::Cpu and its layers (each header: forward and backward side by side).
#include "doremi/backend/cpu/cpu.hpp"         // Cpu tag, Buffer, Eigen maps, deterministic reductions
#include "doremi/backend/cpu/matmul.hpp"      // linear layers (Eigen GEMM)
#include "doremi/backend/cpu/layernorm.hpp"   // LayerNorm
#include "doremi/backend/cpu/embedding.hpp"   // token and learned position embeddings
#include "doremi/backend/cpu/gelu.hpp"        // GELU, residual adds, copies
#include "doremi/backend/cpu/attention.hpp"   // causal attention with rotary embedding
#include "doremi/backend/cpu/classifier.hpp"  // LM head + per-token cross-entropy

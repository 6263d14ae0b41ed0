#pragma once
// backend::Cuda and its layers (each header: forward and backward side by side).
// Include only from translation units compiled by nvcc.
#include "doremi/backend/cuda/cuda.hpp"       // Cuda tag, DeviceBuffer, error checks, cuda_available()
#include "doremi/backend/cuda/reduce.hpp"     // deterministic column sums (parameter gradients)
#include "doremi/backend/cuda/convert.hpp"    // fp32 <-> bf16 copies
#include "doremi/backend/cuda/matmul.hpp"     // linear layers (cuBLASLt, fused bias; fp32 and bf16)
#include "doremi/backend/cuda/layernorm.hpp"  // LayerNorm
#include "doremi/backend/cuda/embedding.hpp"  // token and learned position embeddings
#include "doremi/backend/cuda/gelu.hpp"       // GELU, residual adds, copies, fills
#include "doremi/backend/cuda/adamw.hpp"      // AdamW over the flat buffer (shared adamw_update)
#include "doremi/backend/cuda/grad_norm.hpp"  // global gradient norm (CUB)
#include "doremi/backend/cuda/classifier.hpp" // LM head: logits GEMM + fused softmax/loss/gradient
#include "doremi/backend/cuda/attention.hpp"  // causal attention, flash-style (rotary; lse kept, no T×T; tensor cores)
#include "doremi/backend/cuda/attention_cached.hpp"  // generation: attention against a key/value cache

// Model<Cfg, Cuda>, AdamW<T, Cuda> and the trainers resolve their backend
// calls (upload/download/fill, the layers, adamw_step, global_grad_norm) to
// these overloads by argument-dependent lookup; include order does not matter.
// MatmulPrecision::bf16 models keep what only feeds products in bf16
// (Cuda::operand); the other activations stay fp32.

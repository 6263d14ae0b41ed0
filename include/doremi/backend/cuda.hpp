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

// Not yet here (issue 4): attention (flash-style) and the fused classifier,
// bf16 versions of the non-GEMM layers (only the linear layers and the
// conversions take bf16 so far), and the changes Model<Cfg, Cuda>
// needs, because Model (model/gpt.hpp) still touches its buffers on the host:
//  1. Construction: `params_(n, scalar(0))` works (DeviceBuffer(n, value)),
//     but the rotary tables are written element by element (`rope_cos_[i] =`):
//     build them in a host vector and copy once (copy_to_device).
//  2. init(): writes `p[i]` on the host. Fill a host vector and copy, or run
//     Philox on the device (Philox::normal is already DOREMI_HD).
//  3. forward(): `tokens_` / `targets_` are std::vector passed as kernel
//     inputs: they must become Buffer<std::int32_t> filled by one copy per
//     batch. The loss sum and token count read `mask_[n]`, `losses_[n]` on
//     the host: reduce on the device (or copy both back once), and expose
//     ForwardResult's spans as host copies (a host mirror of losses/mask,
//     copied after the forward) because the DRO trainer reads them on the host.
//  4. backward(): `token_weights` is a host span passed straight into
//     classifier_backward: copy it into a device Buffer first.
//  5. parameters()/gradients() return spans over device memory: fine for
//     passing to backend calls, wrong for host readers (checkpoints,
//     Trainer's clip_grad_norm and AdamW::step, which loop on the host).
//     Needed: backend-dispatched optimiser and norm in the Trainer
//     (adamw_step(Cuda, ...), global_grad_norm(Cuda, ...) exist here) plus
//     explicit copy_parameters_to_host / load_parameters_from_host for
//     checkpoints, and AdamW's moments in Backend::Buffer.
//  6. Every call passes `be_`; the Cuda overloads take `const Cuda&`, so the
//     existing calls resolve unchanged once attention_* and classifier_*
//     exist for Cuda.

#pragma once
// doremi-cpp: everything a program needs, in one include.
#include "doremi/core/error.hpp"              // doremi::Error, doremi::fail
#include "doremi/core/rng.hpp"                // Philox counter-based RNG
#include "doremi/model/config.hpp"            // Spec, Config, presets
#include "doremi/model/gpt.hpp"               // Model<Config, Backend>
#include "doremi/model/checkpoint.hpp"        // save_model, load_model (HF GPT-NeoX safetensors)
#include "doremi/model/dispatch.hpp"          // dispatch_preset, preset_for_checkpoint
#include "doremi/data/tokenizer.hpp"          // Tokenizer, load_tokenizer (BPE, bytes)
#include "doremi/data/preprocess.hpp"         // preprocess: JSONL(.zst)/folders -> indexed datasets
#include "doremi/data/dataset_folder.hpp"     // open_dataset_folder, AnySource
#include "doremi/data/domain_config.hpp"      // DomainConfig, weights by size
#include "doremi/data/source.hpp"             // the TokenSource concept, MemorySource
#include "doremi/data/window_sampler.hpp"     // WindowSampler (one token stream)
#include "doremi/data/weighted_sampler.hpp"   // WeightedDomainSampler<Source>
#include "doremi/dist/world.hpp"             // dist::world, Comm (MPI: link doremi::mpi)
#include "doremi/train/trainer.hpp"           // Trainer<Model, Sampler>
#include "doremi/train/dro_trainer.hpp"       // DROTrainer<Model, Sampler>, DomainWeights
#include "doremi/eval/perplexity.hpp"         // evaluate_perplexity
#include "doremi/eval/generate.hpp"           // generate: greedy or sampled continuations (key/value cache)
#include "doremi/eval/report.hpp"             // write_report
#include "doremi/pipeline/pipeline.hpp"       // RunConfig, run_pipeline, StagesFor<Config>

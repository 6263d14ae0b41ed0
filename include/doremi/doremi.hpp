#pragma once
// doremi-cpp: everything a program needs, in one include.
#include "doremi/core/error.hpp"     // doremi::Error, doremi::fail
#include "doremi/core/rng.hpp"       // Philox counter-based RNG
#include "doremi/model/config.hpp"   // Spec, Config, presets
#include "doremi/model/gpt.hpp"      // Model<Config, Backend>

#pragma once
// A small three-domain corpus (counting letters, random characters, a
// repeated phrase), preprocessed with the byte tokenizer into dir/data
// (chunks of 32 tokens, 20 % validation): the pipeline tests' input, on the
// CPU and on the GPU.
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "doremi/core/rng.hpp"
#include "doremi/data/preprocess.hpp"
#include "doremi/data/tokenizer.hpp"

namespace doremi::test {

inline std::filesystem::path make_corpus(const std::filesystem::path& dir) {
  std::ofstream out(dir / "corpus.jsonl");
  for (int i = 0; i < 120; ++i) {
    std::string text;
    const char* domain = i % 3 == 0 ? "counting" : i % 3 == 1 ? "random" : "repeat";
    for (int t = 0; t < 200; ++t) {
      if (i % 3 == 0) text += char('a' + (t % 26));
      if (i % 3 == 1) text += char(33 + Philox::below(90, 5, std::uint64_t(i), std::uint64_t(t)));
      if (i % 3 == 2) text += "do re mi "[t % 9];
    }
    out << nlohmann::json{{"text", text}, {"meta", {{"domain", domain}}}}.dump() << "\n";
  }
  out.close();
  PreprocessConfig pc;
  pc.inputs = {dir / "corpus.jsonl"};
  pc.output = dir / "data";
  pc.domain_key = "meta.domain";
  pc.seq_len = 32;
  pc.validation_share = 0.2;
  pc.progress = false;
  preprocess(pc, Tokenizer{});
  return pc.output;
}

}  // namespace doremi::test

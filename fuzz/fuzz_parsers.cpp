// libFuzzer targets for every parser of user files (one binary; the target is
// chosen by the environment variable DOREMI_FUZZ_TARGET, see `targets` below).
//
//   DOREMI_FUZZ_TARGET=safetensors build-fuzz/doremi_fuzz -max_total_time=60 /tmp/corpus fuzz/seeds/safetensors
//
// Contract checked: whatever the bytes, the parser returns or throws
// doremi::Error. Any other exception (std::terminate), a crash, a sanitizer
// report (ASan, UBSan), a hang (-timeout) or an allocation beyond
// -malloc_limit_mb is a bug. Each input is written to a file in a private
// temporary folder, because the readers take paths (and map the files).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/core/safetensors.hpp"
#include "doremi/data/arrow_source.hpp"
#include "doremi/data/bpe_tokenizer.hpp"
#include "doremi/data/dataset_folder.hpp"
#include "doremi/data/domain_config.hpp"
#include "doremi/data/indexed_dataset.hpp"
#include "doremi/data/preprocess.hpp"
#include "doremi/data/source.hpp"
#include "doremi/data/tokenizer.hpp"
#include "doremi/data/weighted_sampler.hpp"
#include "doremi/data/window_sampler.hpp"
#include "doremi/model/dispatch.hpp"
#include "doremi/pipeline/run_config.hpp"
#include "doremi/train/domain_weights.hpp"
#include "doremi/train/trainer_state.hpp"

namespace fs = std::filesystem;
using namespace doremi;

namespace {

// A private temporary folder, removed when the fuzzer exits normally.
struct ScratchDir {
  fs::path dir;
  ScratchDir() {
    std::string tmpl = (fs::temp_directory_path() / "doremi-fuzz-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) std::abort();
    dir = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

const fs::path& scratch() {
  static const ScratchDir s;
  return s.dir;
}

void write(const fs::path& p, std::string_view bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  if (!out) std::abort();
}

// Splits the input at the first NUL byte (two files from one input).
std::pair<std::string_view, std::string_view> split2(std::string_view in) {
  const auto z = in.find('\0');
  if (z == std::string_view::npos) return {in, {}};
  return {in.substr(0, z), in.substr(z + 1)};
}

// Reads every sequence of a token source (bounded, so a huge valid source stays fast).
template <class S>
void read_all(const S& s) {
  std::vector<std::int32_t> buf;
  std::uint64_t budget = 1 << 20;
  for (std::size_t i = 0; i < s.size() && budget; ++i) {
    const std::size_t n = std::min<std::size_t>(s.length(i), budget);
    buf.resize(n);
    s.read(i, 0, buf);
    budget -= n;
  }
  (void)s.total_tokens();
}

void fuzz_safetensors(std::string_view in) {
  const auto p = scratch() / "model.safetensors";
  write(p, in);
  SafetensorsFile f(p);
  for (const auto& name : f.names()) {
    const auto& t = f.info(name);
    if (t.bytes.size() > (64u << 20)) continue;
    const std::span<const std::int64_t> shape(t.shape);
    if (is_floating(t.dtype)) {
      (void)f.read<float>(name, shape);
      (void)f.read<double>(name, shape);
    } else if (t.dtype == DType::BOOL) {
      std::vector<std::uint8_t> raw(std::size_t(t.numel()));
      std::span<bool> out(reinterpret_cast<bool*>(raw.data()), raw.size());
      f.read<bool>(name, shape, out);
    } else if (t.dtype == DType::I64) {
      (void)f.read<std::int64_t>(name, shape);
    } else if (t.dtype == DType::I32) {
      (void)f.read<std::int32_t>(name, shape);
    }
  }
  (void)f.metadata();
}

void fuzz_hf_config(std::string_view in) {
  const auto dir = scratch() / "hf";
  fs::create_directories(dir);
  write(dir / "config.json", in);
  (void)preset_for_checkpoint(dir);  // every compiled preset's check
}

void fuzz_run_config(std::string_view in) {
  const auto p = scratch() / "run.json";
  write(p, in);
  const RunConfig c = RunConfig::from_json(read_json_file(p), p.string());
  (void)epochs_for({"ArXiv", "a", "b"}, c.epochs);
}

void fuzz_domain_config(std::string_view in) {
  const auto p = scratch() / "domains.json";
  write(p, in);
  try {
    const auto c = read_domain_config(p);
    (void)c.train.weights_for(c.train.names, p.string());
    (void)select_domains(c.train.names, c, p.string());
    write_domain_config(scratch() / "domains-out.json", c);
  } catch (const Error&) {
  }
  const auto w = read_domain_weights(p);
  (void)w.to_json();
}

// A preprocessed folder with one valid shard per split for domain "a"
// (uint16 tokens), and the fuzzed manifest.json.
void fuzz_manifest(std::string_view in) {
  const auto root = scratch() / "data";
  static const bool made = [&] {
    for (const char* split : {"train", "validation"}) {
      fs::create_directories(root / split / "a");
      IndexedDatasetWriter w(root / split / "a" / "00000-x", TokenDType::u16);
      const std::vector<std::int32_t> doc{1, 2, 3, 4, 5};
      w.add_document(std::span<const std::int32_t>(doc));
      w.finish();
    }
    return true;
  }();
  (void)made;
  write(root / "manifest.json", in);
  const auto folder = open_dataset_folder(root, "train");
  for (const auto& s : folder.sources) read_all(s);
}

// Input: 4-byte little-endian length n, n bytes of .idx, the rest the .bin.
void fuzz_mmidx(std::string_view in) {
  if (in.size() < 4) return;
  std::uint32_t n;
  std::memcpy(&n, in.data(), 4);
  in.remove_prefix(4);
  n = std::min<std::uint32_t>(n, std::uint32_t(in.size()));
  const auto prefix = scratch() / "shard";
  write(scratch() / "shard.idx", in.substr(0, n));
  write(scratch() / "shard.bin", in.substr(n));
  IndexedDatasetOptions opt;
  opt.vocab_size = 50000;
  IndexedSource s(prefix, opt);
  read_all(s);
  const auto& d = s.shards()[0];
  for (std::size_t k = 0; k <= d.documents() && k < 4096; ++k) (void)d.document_begin(k);
}

void fuzz_arrow(std::string_view in) {
  const auto dir = scratch() / "arrow";
  static const bool made = [&] {
    fs::create_directories(dir);
    write(dir / "state.json", R"({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})");
    return true;
  }();
  (void)made;
  write(dir / "data-00000-of-00001.arrow", in);
  ArrowOptions opt;
  opt.vocab_size = 50000;
  ArrowSource s(dir, opt);
  read_all(s);
}

void exercise(const Tokenizer& tok) {
  for (std::string_view text : {"Hello, world! 123", "  naïve café\n\tx", "<|endoftext|>a b", ""}) {
    const auto ids = tok.encode(text);
    (void)tok.decode(ids);
  }
  (void)tok.vocab_size();
}

void fuzz_tokenizer_json(std::string_view in) {
  const auto p = scratch() / "tokenizer.json";
  write(p, in);
  exercise(Tokenizer(BpeTokenizer::from_tokenizer_json(p)));
}

// Input: vocab.json, NUL, merges.txt.
void fuzz_vocab_merges(std::string_view in) {
  const auto dir = scratch() / "gpt2";
  fs::create_directories(dir);
  const auto [vocab, merges] = split2(in);
  write(dir / "vocab.json", vocab);
  write(dir / "merges.txt", merges);
  exercise(Tokenizer(BpeTokenizer::from_file(dir)));
}

// Input: first byte selects plain JSONL (even) or .jsonl.zst (odd; the rest
// is the compressed stream), then the file.
void fuzz_jsonl(std::string_view in) {
  if (in.empty()) return;
  const bool zst = in[0] & 1;
  in.remove_prefix(1);
  const auto input = scratch() / (zst ? "in.jsonl.zst" : "in.jsonl");
  const auto out = scratch() / "pre";
  fs::remove_all(out);
  write(input, in);
  PreprocessConfig cfg;
  cfg.inputs = {input};
  cfg.output = out;
  cfg.seq_len = 8;
  cfg.validation_share = 0.25;
  cfg.threads = 1;
  cfg.progress = false;
  static const Tokenizer bytes{ByteTokenizer{}};
  const auto report = preprocess(cfg, bytes);
  (void)report;
  // The folder it wrote must open and read back.
  const auto folder = open_dataset_folder(out, "train");
  for (const auto& s : folder.sources) read_all(s);
}

// trainer_state.json as load_checkpoint reads it: the top level, then the
// sampler's state (a weighted sampler over domains a and b, or a window
// sampler) and a DRO trainer's extra state.
void fuzz_trainer_state(std::string_view in) {
  const auto p = scratch() / "trainer_state.json";
  write(p, in);
  const TrainerState st = parse_trainer_state(read_json_file(p), p.string());
  const std::vector<std::string> names{"a", "b"};
  if (st.sampler.is_object() && st.sampler.contains("kind") && st.sampler.at("kind") == "window") {
    WindowSampler w(std::vector<std::int32_t>(64, 1), 2, 4, 1);
    w.restore(st.sampler);
    (void)w.next();
  } else {
    std::vector<MemorySource> sources;
    sources.emplace_back(std::vector<std::vector<std::int32_t>>{{1, 2, 3, 4, 5}, {6, 7, 8, 9, 10}}, "a");
    sources.emplace_back(std::vector<std::vector<std::int32_t>>{{11, 12, 13, 14, 15}}, "b");
    SamplerOptions opt;
    opt.prefetch = false;
    WeightedDomainSampler<MemorySource> sampler(names, std::move(sources), {0.5, 0.5}, 2, 4, 1, opt);
    sampler.restore(st.sampler);
    (void)sampler.next();
    (void)sampler.state();
  }
  if (st.extra.contains("domain_weights")) {
    DomainWeights dw(names, {0.5, 0.5}, {0.5, 0.5}, 1.0, DroConfig{1.0, 1e-3});
    dw.restore(st.extra.at("domain_weights"));
    const std::vector<double> excess{0.1, 0.2}, tokens{3, 4};
    dw.update(excess, tokens);
    (void)dw.loss_weights();
    (void)dw.state();
  }
}

const std::map<std::string, std::function<void(std::string_view)>, std::less<>> targets{
    {"safetensors", fuzz_safetensors},     {"hf_config", fuzz_hf_config},
    {"run_config", fuzz_run_config},       {"domain_config", fuzz_domain_config},
    {"manifest", fuzz_manifest},           {"mmidx", fuzz_mmidx},
    {"arrow", fuzz_arrow},                 {"tokenizer_json", fuzz_tokenizer_json},
    {"vocab_merges", fuzz_vocab_merges},   {"jsonl", fuzz_jsonl},
    {"trainer_state", fuzz_trainer_state},
};

const std::function<void(std::string_view)>* target = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* name = std::getenv("DOREMI_FUZZ_TARGET");
  const auto it = name ? targets.find(std::string_view(name)) : targets.end();
  if (it == targets.end()) {
    std::string all;
    for (const auto& [n, _] : targets) all += " " + n;
    std::fprintf(stderr, "set DOREMI_FUZZ_TARGET to one of:%s\n", all.c_str());
    std::exit(2);
  }
  target = &it->second;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    (*target)(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const doremi::Error& e) {
    // the contract: bad input is a doremi::Error (DOREMI_FUZZ_PRINT_ERRORS=1 shows them, e.g. to check seeds)
    static const bool print = std::getenv("DOREMI_FUZZ_PRINT_ERRORS") != nullptr;
    if (print) std::fprintf(stderr, "doremi::Error: %s\n", e.what());
  }
  return 0;
}

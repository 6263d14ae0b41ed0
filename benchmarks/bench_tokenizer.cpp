// Tokenization throughput of BpeTokenizer against HuggingFace `tokenizers`,
// one thread each, same tokenizer.json, same documents, in one run.
//
//   bench_tokenizer [--tokenizer PATH] [--reps 5] [--python /usr/bin/python3] [--mb 3]
//
// The text (about --mb MB) is examples/data/licenses.txt repeated, plus
// generated multilingual text (Latin with accents and combining marks,
// Cyrillic, Greek, CJK, Arabic, Devanagari, emoji, numbers, code, whitespace
// runs, <|endoftext|>) whose random syllables make many distinct words, cut
// into documents of 1–8 KB. HF runs as a subprocess
// (benchmarks/hf_tokenizer_bench.py) with RAYON_NUM_THREADS=1; its best
// single-threaded way (a loop of encode, or encode_batch on a one-thread pool)
// is the reference. Ours is timed with a warm word cache (median of the
// repetitions after one warm-up) and cold (a freshly loaded tokenizer per
// repetition). Both sides' ids are checked to be identical (count and CRC-32).
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_util.hpp"
#include "doremi/data/bpe_tokenizer.hpp"

using namespace doremi;
namespace fs = std::filesystem;

namespace {

using bench::median;
using bench::run_command;

std::uint32_t crc32_update(std::uint32_t crc, const unsigned char* p, std::size_t n) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

struct Rng {  // splitmix64
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  std::size_t below(std::size_t n) { return std::size_t(next() % n); }
  template <class V>
  const auto& pick(const V& v) {
    return v[below(v.size())];
  }
};

std::string generated_paragraph(Rng& r) {
  static const std::vector<std::vector<std::string>> syllables = {
      {"ka", "re", "mi", "do", "sol", "fa", "la", "ti", "é", "ç", "ñ", "ö", "ü", "ß", "an", "en", "on", "st", "tr",
       "ch", "qu", "e\u0301", "a\u0308", "ø", "å"},
      {"при", "вет", "мир", "до", "ре", "ми", "ска", "зал", "ой", "ёж", "щи", "ль", "ны", "Мо", "сква"},
      {"κα", "λη", "μέ", "ρα", "κό", "σμε", "θε", "ός", "ψυ", "χή", "Αθ", "ήνα"},
      {"مر", "حبا", "بال", "عا", "لم", "كت", "اب", "سلا", "م"},
      {"नम", "स्ते", "दु", "निया", "हिं", "दी", "पा", "ठ", "भा", "रत"}};
  static const std::vector<std::string> emoji = {"🙂", "👍🏽", "👩‍💻", "🎉", "🇫🇷", "❤️", "👨‍👩‍👧‍👦"};
  static const std::vector<std::string> punct = {",", ".", "!", "?", ";", ":", " -", " (", ")", "\"", "'s", "'ll"};
  std::string p;
  const std::size_t kind = r.below(8);
  const std::size_t sentences = 2 + r.below(6);
  for (std::size_t s = 0; s < sentences; ++s) {
    if (kind == 5) {  // CJK: no spaces
      const std::size_t n = 8 + r.below(30);
      for (std::size_t k = 0; k < n; ++k) unicode::append_utf8(p, char32_t(0x4E00 + r.below(3000)));
      p += r.below(2) ? "，" : "。";
      continue;
    }
    if (kind == 6) {  // code
      p += fmt::format("    for (int i{} = 0; i{} < n_{}; ++i{}) {{ x[i{}] += f(i{}, {}.{}e-{});  // step {}\n", s, s,
                       r.below(100), s, s, s, r.below(1000), r.below(1000), r.below(9), r.below(100000));
      continue;
    }
    const auto& syl = syllables[kind < 5 ? kind : r.below(syllables.size())];
    const std::size_t words = 4 + r.below(14);
    for (std::size_t w = 0; w < words; ++w) {
      if (w) p += ' ';
      const std::size_t roll = r.below(40);
      if (roll == 0) p += r.pick(emoji);
      else if (roll == 1) p += std::to_string(r.next() % 100000000000ULL);
      else if (roll == 2) p += fmt::format("{}-{:02}-{:02}", 1900 + r.below(150), 1 + r.below(12), 1 + r.below(28));
      else {
        const std::size_t n = 1 + r.below(4);
        for (std::size_t k = 0; k < n; ++k) {
          std::string x = r.pick(syl);
          if (k == 0 && r.below(5) == 0 && x[0] >= 'a' && x[0] <= 'z') x[0] = char(x[0] - 32);
          p += x;
        }
      }
      if (r.below(6) == 0) p += r.pick(punct);
    }
    p += r.below(10) == 0 ? "  " : ". ";
  }
  const std::size_t tail = r.below(10);
  p += tail == 0 ? "\n\n\n" : tail == 1 ? " \t \n" : tail == 2 ? "<|endoftext|>" : "\n\n";
  return p;
}

// Documents of 1–8 KB cut at line ends.
void cut_documents(const std::string& text, Rng& r, std::vector<std::string>& docs) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = std::min(text.size(), pos + 1024 + r.below(7 * 1024));
    const std::size_t nl = text.find('\n', end);
    end = nl == std::string::npos ? text.size() : nl + 1;
    docs.push_back(text.substr(pos, end - pos));
    pos = end;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Default: the GPT-NeoX-20B fixture of the tests' fixture folder (CMake's DOREMI_SHARED_DIR).
#ifdef DOREMI_SHARED_DIR
  std::string tokenizer =
      (fs::path(DOREMI_SHARED_DIR) / "fixtures/tokenizers/gpt-neox-20b/tokenizer.json").lexically_normal();
#else
  std::string tokenizer;
#endif
  std::string python = "/usr/bin/python3";
  int reps = 5;
  double mb = 3.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--tokenizer") tokenizer = argv[i + 1];
    else if (a == "--python") python = argv[i + 1];
    else if (a == "--reps") reps = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--mb") mb = std::atof(argv[i + 1]);
  }

  if (tokenizer.empty() || !fs::exists(tokenizer)) {
    fmt::print("no tokenizer.json at '{}': pass --tokenizer PATH\n", tokenizer);
    return 1;
  }

  // The documents.
  std::ifstream lf(fs::path(DOREMI_BENCH_DIR) / "../examples/data/licenses.txt", std::ios::binary);
  const std::string licenses((std::istreambuf_iterator<char>(lf)), std::istreambuf_iterator<char>());
  if (licenses.empty()) {
    fmt::print("cannot read examples/data/licenses.txt\n");
    return 1;
  }
  Rng rng{42};
  std::vector<std::string> docs;
  std::size_t lic_bytes = 0, gen_bytes = 0;
  const std::size_t target = std::size_t(mb * 1e6);
  while (lic_bytes < target * 2 / 5) {
    cut_documents(licenses, rng, docs);
    lic_bytes += licenses.size();
  }
  std::string gen;
  while (gen.size() < target - lic_bytes) gen += generated_paragraph(rng);
  gen_bytes = gen.size();
  cut_documents(gen, rng, docs);
  std::shuffle(docs.begin(), docs.end(), std::mt19937_64(7));
  std::size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  const fs::path docs_file = fs::temp_directory_path() / fmt::format("doremi-bench-tokenizer-{}.txt", ::getpid());
  {
    std::ofstream out(docs_file, std::ios::binary);
    for (std::size_t i = 0; i < docs.size(); ++i) {
      if (i) out.put('\0');
      out << docs[i];
    }
  }
  fmt::print("text: {:.2f} MB in {} documents ({:.2f} MB licences, {:.2f} MB generated multilingual)\n", bytes / 1e6,
             docs.size(), lic_bytes / 1e6, gen_bytes / 1e6);
  fmt::print("tokenizer: {}\n", tokenizer);

  // Ours.
  auto encode_all = [&](const BpeTokenizer& tok, std::size_t& tokens, std::uint32_t* crc) {
    tokens = 0;
    std::vector<std::int32_t> ids;
    for (const auto& d : docs) {
      ids.clear();
      tok.encode_append(d, ids);
      tokens += ids.size();
      if (crc) *crc = crc32_update(*crc, reinterpret_cast<const unsigned char*>(ids.data()), ids.size() * 4);
    }
  };
  using clock = std::chrono::steady_clock;
  std::vector<double> cold, warm;
  std::size_t tokens = 0;
  std::uint32_t crc = 0;
  double load_s = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = clock::now();
    const BpeTokenizer tok = BpeTokenizer::from_file(tokenizer);  // fresh word cache
    const auto t1 = clock::now();
    load_s = std::chrono::duration<double>(t1 - t0).count();
    encode_all(tok, tokens, r == 0 ? &crc : nullptr);
    cold.push_back(std::chrono::duration<double>(clock::now() - t1).count());
    if (r == 0) {
      for (int w = 0; w < reps; ++w) {
        const auto t2 = clock::now();
        std::size_t n = 0;
        encode_all(tok, n, nullptr);
        warm.push_back(std::chrono::duration<double>(clock::now() - t2).count());
      }
    }
  }
  const double ours_warm = median(warm), ours_cold = median(cold);
  fmt::print("doremi-cpp BpeTokenizer, 1 thread, warm word cache: {:6.2f} MB/s  {:5.2f} M tokens/s  (median {:.3f} s of {})\n",
             bytes / ours_warm / 1e6, tokens / ours_warm / 1e6, ours_warm, reps);
  fmt::print("doremi-cpp BpeTokenizer, 1 thread, cold (fresh load): {:6.2f} MB/s  {:5.2f} M tokens/s  (median {:.3f} s of {}; load {:.2f} s)\n",
             bytes / ours_cold / 1e6, tokens / ours_cold / 1e6, ours_cold, reps, load_s);

  // HF.
  const std::string cmd = fmt::format("{} {}/hf_tokenizer_bench.py '{}' '{}' --reps {} 2>&1", python, DOREMI_BENCH_DIR,
                                      tokenizer, docs_file.string(), reps);
  const std::string out = run_command(cmd);
  fs::remove(docs_file);
  nlohmann::json peer;
  for (std::size_t pos = 0; pos < out.size();) {
    const std::size_t end = out.find('\n', pos);
    const auto j = nlohmann::json::parse(out.substr(pos, end - pos), nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.contains("loop_s")) peer = j;
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  if (peer.is_null()) {
    fmt::print("HF tokenizers did not run ({}):\n{}\n", cmd, out);
    return 1;
  }
  const double hf_loop = median(peer["loop_s"].get<std::vector<double>>());
  const double hf_batch = median(peer["batch_s"].get<std::vector<double>>());
  const double hf = std::min(hf_loop, hf_batch);
  const std::string ver = peer.value("tokenizers", "?");
  fmt::print("HF tokenizers {} encode loop, 1 thread:             {:6.2f} MB/s  {:5.2f} M tokens/s  (median {:.3f} s of {})\n",
             ver, bytes / hf_loop / 1e6, tokens / hf_loop / 1e6, hf_loop, reps);
  fmt::print("HF tokenizers {} encode_batch, 1 rayon thread:      {:6.2f} MB/s  {:5.2f} M tokens/s  (median {:.3f} s of {})\n",
             ver, bytes / hf_batch / 1e6, tokens / hf_batch / 1e6, hf_batch, reps);
  const bool same = peer["tokens"].get<std::size_t>() == tokens && peer["crc32"].get<std::uint32_t>() == crc;
  fmt::print("ids identical: {} ({} tokens here, {} in HF; CRC-32 {:08x} vs {:08x})\n", same ? "yes" : "NO", tokens,
             peer["tokens"].get<std::size_t>(), crc, peer["crc32"].get<std::uint32_t>());
  fmt::print("ratio doremi-cpp / HF (best single-threaded): {:.2f}x warm, {:.2f}x cold\n", hf / ours_warm,
             hf / ours_cold);
  return same ? 0 : 1;
}

// DoReMi's domain weights by hand, over data of one's own: a TokenSource
// written here (what a program implements to feed its own storage to the
// samplers), a reference model trained with Trainer on a uniform
// WeightedDomainSampler, and a proxy trained with DROTrainer against it.
// Prints the per-domain losses of the last step and the domain weights.
//
//   dro [STEPS [OUTPUT_DIR]]     (STEPS reference and STEPS proxy steps, 150 by default;
//                                 OUTPUT_DIR: where to write the weights as domain configs)
//
// The three domains are generated text of known difficulty: counting
// ("417 418 419 ..."), a sentence repeated with a changing name, and random
// characters that no model can predict. The proxy's excess loss over the
// reference is largest where there is still something to learn, so DRO
// moves weight there and away from the random domain.
#include <doremi/doremi.hpp>

#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

// A token source: one domain's data as numbered token sequences (the
// contract is doremi::TokenSource, include/doremi/data/source.hpp). This one
// holds documents as text and hands out their bytes as token ids; a source
// over files, a database or a generator has the same five members. read()
// is const and may run on the sampler's read-ahead thread while the program
// also reads, so it must not modify shared state.
class TextDomain {
 public:
  TextDomain(std::string name, std::vector<std::string> documents)
      : name_(std::move(name)), documents_(std::move(documents)) {
    for (const auto& d : documents_) total_ += d.size();
  }

  const std::string& name() const { return name_; }

  std::size_t size() const { return documents_.size(); }               // sequences
  std::size_t length(std::size_t i) const { return document(i).size(); }  // tokens in sequence i
  std::uint64_t total_tokens() const { return total_; }                // Σ length(i)
  std::string describe() const { return "text domain '" + name_ + "'"; }  // for error messages

  // Tokens [offset, offset + out.size()) of sequence i; errors name the source.
  void read(std::size_t i, std::size_t offset, std::span<std::int32_t> out) const {
    const std::string& d = document(i);
    if (offset > d.size() || out.size() > d.size() - offset)
      doremi::fail("{}: tokens [{}, {}) of document {} are beyond its {} tokens", describe(), offset,
                   offset + out.size(), i, d.size());
    for (std::size_t k = 0; k < out.size(); ++k) out[k] = static_cast<unsigned char>(d[offset + k]);
  }

 private:
  const std::string& document(std::size_t i) const {
    if (i >= documents_.size()) doremi::fail("{}: document {} of {}", describe(), i, documents_.size());
    return documents_[i];
  }
  std::string name_;
  std::vector<std::string> documents_;
  std::uint64_t total_ = 0;
};
static_assert(doremi::TokenSource<TextDomain>);

namespace {

constexpr int kSeqLen = 64;

// `count` documents of at least kSeqLen + 1 bytes (a row of inputs and its
// shifted targets), each built by `line(document, k)` from its k-th piece.
template <class F>
std::vector<std::string> documents(int count, F line) {
  std::vector<std::string> out;
  for (int d = 0; d < count; ++d) {
    std::string text;
    for (int k = 0; text.size() <= kSeqLen; ++k) text += line(d, k);
    out.push_back(std::move(text));
  }
  return out;
}

std::vector<TextDomain> make_domains() {
  const char* people[] = {"Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John"};
  auto draw = [](int d, int k, std::uint64_t n) { return doremi::Philox::below(n, 7, std::uint64_t(d), std::uint64_t(k)); };
  std::vector<TextDomain> domains;
  domains.emplace_back("counting", documents(400, [&](int d, int k) {
                         return std::to_string(100 + draw(d, 0, 900) + std::uint64_t(k)) + " ";
                       }));
  domains.emplace_back("sentences", documents(400, [&](int d, int k) {
                         return std::string(people[draw(d, k, 8)]) + " wrote a program. ";
                       }));
  domains.emplace_back("random", documents(400, [&](int d, int k) {
                         return std::string(1, char(32 + draw(d, k, 95)));  // printable ASCII
                       }));
  return domains;
}

long parse_steps(const char* text) {
  char* end = nullptr;
  const long steps = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || steps <= 0) doremi::fail("STEPS must be a positive integer (got '{}')", text);
  return steps;
}

doremi::TrainConfig train_config(long steps) {
  doremi::TrainConfig cfg;
  cfg.steps = steps;
  cfg.schedule = doremi::LrSchedule::doremi_default(steps);  // warmup + exponential decay,
  cfg.schedule.peak_lr = 3e-3;                              // from a higher peak for a small model
  cfg.schedule.end_lr = 3e-4;
  cfg.progress = false;
  return cfg;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 3) {
    fmt::print(stderr, "usage: {} [STEPS [OUTPUT_DIR]]\n", argv[0]);
    return 2;
  }
  try {
    const long steps = argc > 1 ? parse_steps(argv[1]) : 150;
    using Model = doremi::Model<doremi::presets::Tiny<float>>;

    const std::vector<TextDomain> sources = make_domains();  // lent to the samplers below
    std::vector<std::string> names;
    for (const auto& s : sources) names.push_back(s.name());
    const std::vector<double> uniform(names.size(), 1.0 / double(names.size()));

    // The reference model, trained on the reference weights (uniform here).
    Model reference;
    reference.init(/*seed=*/1);
    doremi::WeightedDomainSampler ref_sampler(names, sources, uniform, /*batch=*/16, kSeqLen, /*seed=*/1);
    doremi::Trainer(reference, ref_sampler, train_config(steps)).run();

    // The proxy, trained with DRO against it: α moves towards the domains with
    // the largest excess loss, and ᾱ (the average of α over the run) is the result.
    Model proxy;
    proxy.init(/*seed=*/2);
    using Sampler = doremi::WeightedDomainSampler<TextDomain>;
    Sampler sampler(names, sources, uniform, /*batch=*/16, kSeqLen, /*seed=*/2);
    doremi::DomainWeights weights(names, /*alpha0=*/uniform, /*sampling=*/uniform,
                                  doremi::DROTrainer<Model, Sampler>::initial_score(),
                                  doremi::DroConfig{.eta = 1.0, .smoothing = 1e-3});
    doremi::DROTrainer dro(proxy, reference, sampler, train_config(steps), std::move(weights));
    nlohmann::json last;
    dro.run([&](const doremi::StepStats& s) { last = s.extra; });  // per-domain losses, scores, α
    const std::vector<double>& avg = dro.domain_weights().average();

    fmt::print("{:<10} {:>10} {:>10} {:>10}\n", "domain", "reference", "proxy", "weight");
    double sum = 0;
    for (std::size_t i = 0; i < names.size(); ++i) {
      fmt::print("{:<10} {:>10.4f} {:>10.4f} {:>10.6f}\n", names[i], last["domain_reference_loss"][i].get<double>(),
                 last["domain_loss"][i].get<double>(), avg[i]);
      sum += avg[i];
    }
    fmt::print("(losses: nats per byte at the last step; weight: the average domain weights)\n");
    fmt::print("weights sum to {:.6f}\n", sum);
    if (argc > 2) {  // avg_domain_weights.json and domain_config.json: the main model's training mixture
      dro.write_domain_weights(argv[2], uniform);
      fmt::print("weights written to {}\n", argv[2]);
    }
  } catch (const doremi::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}

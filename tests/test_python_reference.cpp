// The C++ side of the Python package's tests (python/tests): runs the library's
// WeightedDomainSampler and DomainWeights on a JSON job and writes what they
// produce to a binary file, which the pytest suite compares with the package's
// output byte for byte. Skipped in the normal run; python/tests runs it as
//   DOREMI_PY_REFERENCE_JOB=job.json DOREMI_PY_REFERENCE_OUT=out.bin \
//     doremi_tests --no-skip -tc="python package reference"
//
// job {"kind": "sampler", "data", "split", "weights", "batch_size", "seq_len", "seed", "mode",
//      "packing", "batches", "changes": [{"at": batch, "weights": [...]}]}
//   -> per batch: inputs, targets (int32 B·T each), domain (int32 B)
// job {"kind": "domain_weights", "names", "initial_weights", "sampling_weights", "initial_score",
//      "eta", "smoothing", "updates": [{"excess": [...], "tokens": [...]}]}
//   -> per update: alpha, scores, average, loss_weights (float64 k each), log_normaliser (float64)
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/json.hpp"
#include "doremi/data/dataset_folder.hpp"
#include "doremi/data/weighted_sampler.hpp"
#include "doremi/train/domain_weights.hpp"

namespace {

template <class T>
void put(std::ofstream& out, const std::vector<T>& v) {
  out.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * sizeof(T)));
}

}  // namespace

TEST_CASE("python package reference" * doctest::skip()) {
  using namespace doremi;
  const char* job_path = std::getenv("DOREMI_PY_REFERENCE_JOB");
  const char* out_path = std::getenv("DOREMI_PY_REFERENCE_OUT");
  REQUIRE_MESSAGE(job_path, "set DOREMI_PY_REFERENCE_JOB (run by python/tests)");
  REQUIRE_MESSAGE(out_path, "set DOREMI_PY_REFERENCE_OUT (run by python/tests)");
  const nlohmann::json job = read_json_file(job_path);
  std::ofstream out(out_path, std::ios::binary);
  REQUIRE(out);
  const std::string kind = job.at("kind");
  if (kind == "sampler") {
    const DatasetFolder data = open_dataset_folder(job.at("data").get<std::string>(), job.at("split"));
    SamplerOptions o;
    o.mode = parse_sampling_mode(job.at("mode").get<std::string>());
    o.packing = parse_packing(job.at("packing").get<std::string>());
    WeightedDomainSampler<AnySource> s(data.domains, data.sources, job.at("weights"), job.at("batch_size"),
                                       job.at("seq_len"), job.at("seed"), o);
    const long batches = job.at("batches");
    for (long k = 0; k < batches; ++k) {
      for (const auto& c : job.value("changes", nlohmann::json::array()))
        if (c.at("at").get<long>() == k) s.set_weights(c.at("weights"));
      const Batch b = s.next();
      put(out, b.inputs);
      put(out, b.targets);
      put(out, b.domain);
    }
  } else if (kind == "domain_weights") {
    DomainWeights w(job.at("names"), job.at("initial_weights"), job.at("sampling_weights"), job.at("initial_score"),
                    DroConfig{job.at("eta"), job.at("smoothing")});
    for (const auto& u : job.at("updates")) {
      w.update(u.at("excess").get<std::vector<double>>(), u.at("tokens").get<std::vector<double>>());
      put(out, w.alpha());
      put(out, w.scores());
      put(out, w.average());
      put(out, w.loss_weights());
      put(out, std::vector<double>{w.log_normaliser()});
    }
  } else {
    FAIL("unknown job kind " << kind);
  }
  out.close();
  CHECK(out.good());
}

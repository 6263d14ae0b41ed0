// doremi._core: the data side and the DoReMi update, bound from the headers.
// The Python layer (doremi/__init__.py) wraps these in the documented API;
// everything here keeps the C++ semantics (no reimplementation).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/data/dataset_folder.hpp"
#include "doremi/data/preprocess.hpp"
#include "doremi/version.hpp"
#include "doremi/data/tokenizer.hpp"
#include "doremi/data/weighted_sampler.hpp"
#include "doremi/train/domain_weights.hpp"

namespace py = pybind11;
using namespace doremi;

namespace {

// A NumPy array that owns `v` (moved to the heap; freed with the array): no copy.
template <class T>
py::array_t<T> adopt(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(std::move(shape), owned->data(), owner);
}

py::object json_to_py(const nlohmann::json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

std::vector<double> to_doubles(const py::array_t<double, py::array::c_style | py::array::forcecast>& a,
                               const char* what) {
  if (a.ndim() != 1) fail("{}: expected a 1-D array (got {} dimensions)", what, a.ndim());
  return std::vector<double>(a.data(), a.data() + a.size());
}

// A data folder opened once and shared by the samplers drawn from it.
struct Data {
  std::shared_ptr<DatasetFolder> folder;
  std::string root, split;
};

// Weights as a sequence in domain order or a {domain: weight} mapping (every domain named).
std::vector<double> weights_for(const Data& d, const py::handle& w, const char* what) {
  const auto& names = d.folder->domains;
  if (py::isinstance<py::dict>(w)) {
    auto dict = w.cast<py::dict>();
    std::vector<double> out(names.size(), 0.0);
    std::vector<bool> seen(names.size(), false);
    for (auto [k, v] : dict) {
      const std::string key = py::str(k);
      auto it = std::find(names.begin(), names.end(), key);
      if (it == names.end())
        fail("{}: domain '{}' is not in {} (split {}; it has: {})", what, key, d.root, d.split, fmt::join(names, ", "));
      out[std::size_t(it - names.begin())] = v.cast<double>();
      seen[std::size_t(it - names.begin())] = true;
    }
    for (std::size_t i = 0; i < names.size(); ++i)
      if (!seen[i]) fail("{}: no weight for domain '{}' (give every domain, 0 to leave one out)", what, names[i]);
    return out;
  }
  auto v = to_doubles(py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(w), what);
  if (v.size() != names.size())
    fail("{}: {} weights for {} domains ({})", what, v.size(), names.size(), fmt::join(names, ", "));
  return v;
}

using Sampler = WeightedDomainSampler<AnySource>;

// The sampler borrows the folder's sources; holding the folder keeps them alive.
struct PySampler {
  Data data;
  std::unique_ptr<Sampler> s;

  py::tuple next() {
    Batch b;
    {
      py::gil_scoped_release unlock;
      b = s->next();
    }
    const py::ssize_t B = b.B, T = b.T;
    auto inputs = adopt(std::move(b.inputs), {B, T});
    auto targets = adopt(std::move(b.targets), {B, T});
    auto domain = adopt(std::move(b.domain), {B});
    return py::make_tuple(inputs, targets, domain);
  }
  void skip(long n) {
    if (n < 0) fail("WeightedDomainSampler.skip: negative count {}", n);
    py::gil_scoped_release unlock;
    for (long i = 0; i < n; ++i) s->next();
  }
};

struct PyPreprocessResult {
  nlohmann::json manifest;
  std::size_t skipped;
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "doremi-cpp bindings: data folders, WeightedDomainSampler, DomainWeights, tokenizers, preprocess";
  m.attr("__version__") = std::string(doremi::version);

  static py::exception<Error> error(m, "Error", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(error.ptr(), e.what());
    } catch (const nlohmann::json::exception& e) {
      PyErr_SetString(error.ptr(), (std::string("malformed JSON value: ") + e.what()).c_str());
    }
  });

  // ---- data folders ----
  py::class_<Data>(m, "DataFolder")
      .def(py::init([](const std::filesystem::path& root, const std::string& split,
                       const std::vector<std::string>& domains) {
             Data d;
             {
               py::gil_scoped_release unlock;
               d.folder = std::make_shared<DatasetFolder>(open_dataset_folder(root, split, domains));
             }
             d.root = root.string();
             d.split = split;
             return d;
           }),
           py::arg("root"), py::arg("split") = "train", py::arg("domains") = std::vector<std::string>{})
      .def_readonly("root", &Data::root)
      .def_readonly("split", &Data::split)
      .def_property_readonly("domains", [](const Data& d) { return d.folder->domains; })
      .def_property_readonly("manifest", [](const Data& d) { return json_to_py(d.folder->manifest); })
      .def("num_sequences", [](const Data& d) {
        std::vector<std::uint64_t> n;
        for (const auto& s : d.folder->sources) n.push_back(s.size());
        return n;
      })
      .def("total_tokens", [](const Data& d) {
        std::vector<std::uint64_t> n;
        for (const auto& s : d.folder->sources) n.push_back(s.total_tokens());
        return n;
      })
      .def("describe", [](const Data& d) {
        std::vector<std::string> n;
        for (const auto& s : d.folder->sources) n.push_back(s.describe());
        return n;
      })
      .def(
          "sequence",
          [](const Data& d, std::size_t domain, std::size_t i) {
            if (domain >= d.folder->sources.size())
              fail("DataFolder.sequence: domain {} out of range ({} domains)", domain, d.folder->sources.size());
            const auto& s = d.folder->sources[domain];
            if (i >= s.size())
              fail("DataFolder.sequence: sequence {} out of range (domain '{}' has {})", i, d.folder->domains[domain],
                   s.size());
            std::vector<std::int32_t> out(s.length(i));
            s.read(i, 0, out);
            const auto n = py::ssize_t(out.size());
            return adopt(std::move(out), {n});
          },
          py::arg("domain"), py::arg("index"));

  // ---- the sampler ----
  py::class_<PySampler>(m, "Sampler")
      .def(py::init([](const Data& data, const py::object& weights, int batch_size, int seq_len, std::uint64_t seed,
                       const std::string& mode, const std::string& packing, std::int32_t pad_id, bool prefetch) {
             SamplerOptions o;
             o.mode = parse_sampling_mode(mode);
             o.packing = parse_packing(packing);
             o.pad_id = pad_id;
             o.prefetch = prefetch;
             auto w = weights_for(data, weights, "WeightedDomainSampler");
             PySampler p{data, nullptr};
             p.s = std::make_unique<Sampler>(data.folder->domains, data.folder->sources, std::move(w), batch_size,
                                             seq_len, seed, o);
             return p;
           }),
           py::arg("data"), py::arg("weights"), py::arg("batch_size"), py::arg("seq_len"), py::arg("seed"),
           py::arg("mode") = "random", py::arg("packing") = "pack", py::arg("pad_id") = 0, py::arg("prefetch") = true)
      .def("next", &PySampler::next)
      .def("skip", &PySampler::skip, py::arg("batches"))
      .def("set_weights",
           [](PySampler& p, const py::object& w) { p.s->set_weights(weights_for(p.data, w, "set_weights")); })
      .def("state_json", [](const PySampler& p) { return p.s->state().dump(); })
      .def("restore_json",
           [](PySampler& p, const std::string& s) {
             nlohmann::json j;
             try {
               j = nlohmann::json::parse(s);
             } catch (const nlohmann::json::parse_error& e) {
               fail("load_state_dict: the state is not valid JSON ({})", e.what());
             }
             p.s->restore(j);
           })
      .def_property_readonly("data", [](const PySampler& p) { return p.data; })
      .def_property_readonly("domains", [](const PySampler& p) { return p.s->domains(); })
      .def_property_readonly("weights", [](const PySampler& p) { return p.s->weights(); })
      .def_property_readonly("counts", [](const PySampler& p) { return p.s->counts(); })
      .def_property_readonly("epochs", [](const PySampler& p) { return p.s->epochs(); })
      .def_property_readonly("targets", [](const PySampler& p) { return p.s->targets(); })
      .def_property_readonly("sequences_drawn", [](const PySampler& p) { return p.s->sequences_drawn(); })
      .def_property_readonly("domain_sizes", [](const PySampler& p) { return p.s->domain_sizes(); })
      .def_property_readonly("batch_size", [](const PySampler& p) { return p.s->batch_size(); })
      .def_property_readonly("seq_len", [](const PySampler& p) { return p.s->seq_len(); })
      .def_property_readonly("mode",
                             [](const PySampler& p) { return std::string(sampling_mode_name(p.s->options().mode)); })
      .def_property_readonly("packing",
                             [](const PySampler& p) { return std::string(packing_name(p.s->options().packing)); })
      .def("unit_at", [](const PySampler& p, std::size_t d, std::uint64_t k) { return p.s->unit_at(d, k); });

  // ---- the DoReMi update ----
  py::class_<DomainWeights>(m, "DomainWeights")
      .def(py::init([](std::vector<std::string> names, const py::object& alpha0, const py::object& sampling,
                       double initial_score, double eta, double smoothing) {
             auto a = to_doubles(py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(alpha0),
                                 "DomainWeights: initial weights");
             auto s = to_doubles(py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(sampling),
                                 "DomainWeights: sampling weights");
             return DomainWeights(std::move(names), std::move(a), std::move(s), initial_score, DroConfig{eta, smoothing});
           }),
           py::arg("names"), py::arg("initial_weights"), py::arg("sampling_weights"), py::arg("initial_score"),
           py::arg("eta") = 1.0, py::arg("smoothing") = 1e-4)
      .def(
          "update",
          [](DomainWeights& w, const py::array_t<double, py::array::c_style | py::array::forcecast>& excess,
             const py::array_t<double, py::array::c_style | py::array::forcecast>& tokens) {
            const auto e = to_doubles(excess, "DomainWeights.update: excess_sum");
            const auto t = to_doubles(tokens, "DomainWeights.update: tokens");
            w.update(e, t);
          },
          py::arg("excess_sum"), py::arg("tokens"))
      .def("logit", &DomainWeights::logit, py::arg("domain"), py::arg("score"))
      .def("log_normaliser", &DomainWeights::log_normaliser)
      .def("loss_weights",
           [](const DomainWeights& w) {
             auto v = w.loss_weights();
             const auto n = py::ssize_t(v.size());
             return adopt(std::move(v), {n});
           })
      .def_property_readonly("names", &DomainWeights::names)
      .def_property_readonly("alpha", [](const DomainWeights& w) { return w.alpha(); })
      .def_property_readonly("scores", [](const DomainWeights& w) { return w.scores(); })
      .def_property_readonly("average", [](const DomainWeights& w) { return w.average(); })
      .def_property_readonly("sampling", [](const DomainWeights& w) { return w.sampling(); })
      .def_property_readonly("count", &DomainWeights::count)
      .def_property_readonly("eta", [](const DomainWeights& w) { return w.config().eta; })
      .def_property_readonly("smoothing", [](const DomainWeights& w) { return w.config().smoothing; })
      .def("state_json", [](const DomainWeights& w) { return w.state().dump(); })
      .def("restore_json", [](DomainWeights& w, const std::string& s) {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(s);
        } catch (const nlohmann::json::parse_error& e) {
          fail("DomainWeights.load_state_dict: the state is not valid JSON ({})", e.what());
        }
        w.restore(j);
      });

  // ---- tokenizers ----
  py::class_<Tokenizer>(m, "Tokenizer")
      .def(py::init([](const std::string& spec) { return load_tokenizer(spec); }), py::arg("spec") = "bytes")
      .def(
          "encode",
          [](const Tokenizer& t, const std::string& text) {
            std::vector<std::int32_t> ids;
            {
              py::gil_scoped_release unlock;
              ids = t.encode(text);
            }
            const auto n = py::ssize_t(ids.size());
            return adopt(std::move(ids), {n});
          },
          py::arg("text"))
      .def(
          "decode",
          [](const Tokenizer& t, const py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>& ids) {
            if (ids.ndim() != 1) fail("Tokenizer.decode: expected a 1-D array of ids (got {} dimensions)", ids.ndim());
            return py::bytes(t.decode(std::span<const std::int32_t>(ids.data(), std::size_t(ids.size()))));
          },
          py::arg("ids"))
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("end_of_text_id", &Tokenizer::end_of_text_id)
      .def("describe", &Tokenizer::describe);

  m.def(
      "preprocess",
      [](const std::vector<std::filesystem::path>& inputs, const std::filesystem::path& output, const Tokenizer& tok,
         const std::string& domain_key, const std::string& text_key, int seq_len, bool pack, double validation_share,
         std::uint64_t seed, int threads, bool fail_on_bad_document, bool progress) {
        PreprocessConfig c;
        c.inputs = inputs;
        c.output = output;
        c.domain_key = domain_key;
        c.text_key = text_key;
        c.seq_len = seq_len;
        c.pack = pack;
        c.validation_share = validation_share;
        c.seed = seed;
        c.threads = threads;
        c.fail_on_bad_document = fail_on_bad_document;
        c.progress = progress;
        PreprocessReport r;
        {
          py::gil_scoped_release unlock;
          r = preprocess(c, tok);
        }
        return py::make_tuple(json_to_py(r.manifest), r.inputs_skipped);
      },
      py::arg("inputs"), py::arg("output"), py::arg("tokenizer"), py::arg("domain_key"), py::arg("text_key"),
      py::arg("seq_len"), py::arg("pack"), py::arg("validation_share"), py::arg("seed"), py::arg("threads"),
      py::arg("fail_on_bad_document"), py::arg("progress"));
}

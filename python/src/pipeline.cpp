// doremi._pipeline: the whole DoReMi pipeline and checkpoint evaluation on the
// CPU backend (every model preset is compiled here, so this module is built
// apart from doremi._core, in parallel with it).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/data/dataset_folder.hpp"
#include "doremi/model/dispatch.hpp"
#include "doremi/pipeline/pipeline.hpp"

namespace py = pybind11;
using namespace doremi;

namespace {

py::object json_to_py(const nlohmann::json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

std::unique_ptr<ModelStages> cpu_stages(const std::string& preset, const Device& device) {
  if (device.is_cuda())
    fail("device {}: the doremi Python package runs the pipeline on the CPU (use the doremi command built with "
         "-DDOREMI_CUDA=ON for a GPU)",
         device.str());
  return make_stages(preset);
}

}  // namespace

PYBIND11_MODULE(_pipeline, m) {
  m.doc() = "doremi-cpp bindings: run_pipeline and evaluate (CPU)";
  // doremi.Error is the class doremi._core registered: errors from here arrive as the same class.
  py::object error = py::module_::import("doremi._core").attr("Error");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(py::module_::import("doremi._core").attr("Error").ptr(), e.what());
    } catch (const nlohmann::json::exception& e) {
      PyErr_SetString(py::module_::import("doremi._core").attr("Error").ptr(),
                      (std::string("malformed JSON value: ") + e.what()).c_str());
    }
  });

  // config_json: the run config (run_config.hpp) as JSON text; `where` names it in errors.
  m.def(
      "run_pipeline",
      [](const std::string& config_json, const std::string& where) {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(config_json);
        } catch (const nlohmann::json::parse_error& e) {
          fail("{}: not valid JSON ({})", where, e.what());
        }
        PipelineResult r;
        {
          py::gil_scoped_release unlock;
          const RunConfig rc = RunConfig::from_json(j, where);
          auto small = cpu_stages(rc.preset, rc.device);
          auto main = rc.main_preset == rc.preset ? nullptr : cpu_stages(rc.main_preset, rc.device);
          r = run_pipeline(rc, *small, main ? *main : *small);
        }
        return json_to_py(r.to_json());
      },
      py::arg("config_json"), py::arg("where"));

  // As `doremi eval`: a checkpoint folder (or one holding final/), the preset
  // from its config.json unless given, windows of seq_len tokens (0: the
  // folder's manifest's, else the model's context).
  m.def(
      "evaluate",
      [](std::filesystem::path model_dir, const std::filesystem::path& data, const std::string& split,
         std::string preset, int seq_len, std::uint64_t max_tokens) {
        PerplexityReport r;
        {
          py::gil_scoped_release unlock;
          if (!std::filesystem::exists(model_dir / "config.json") &&
              std::filesystem::exists(model_dir / "final/config.json"))
            model_dir /= "final";
          if (preset.empty()) preset = preset_for_checkpoint(model_dir);
          PipelineData d{{}, open_dataset_folder(data, split), seq_len, 1, max_tokens};
          if (d.seq_len == 0)
            d.seq_len = d.validation.manifest.is_null() ? 0 : d.validation.manifest.value("seq_len", 0);
          r = make_stages(preset)->evaluate_checkpoint(d, model_dir);
        }
        return json_to_py(r.to_json());
      },
      py::arg("checkpoint"), py::arg("data"), py::arg("split"), py::arg("preset"), py::arg("seq_len"),
      py::arg("max_tokens"));
  (void)error;
}

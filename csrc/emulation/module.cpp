// The emulated CUDA extension (fastntk._C_cuda_emu): the op schemas as
// torch.ops.fastntk_emu.*, whose CPU kernels are the CUDA drivers of
// csrc/cuda/*.cu run by the emulator (cuda_emu.h), and the emulator's knobs.
#include <torch/extension.h>

#include "../schemas.h"
#include "cuda_emu.h"
#include "selftest.h"

namespace fastntk {

TORCH_LIBRARY(fastntk_emu, m) {
  for (const char* schema : kSchemas) m.def(schema);
}

}  // namespace fastntk

namespace {

py::dict config_dict(const fastntk::emu::Config& c) {
  py::dict d;
  d["sm_count"] = c.sm_count;
  d["max_grid_x"] = c.max_grid_x;
  d["max_scratch"] = c.max_scratch;
  d["seed"] = c.randomize ? py::object(py::int_(c.seed)) : py::object(py::none());
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastntk's CUDA kernels run by a CPU emulator (registered under torch.ops.fastntk_emu)";
  m.def("config", [] { return config_dict(fastntk::emu::config()); },
        "The pretend GPU and scheduling: sm_count, max_grid_x, max_scratch, seed (None: in order)");
  m.def(
      "set_config",
      [](int64_t sm_count, int64_t max_grid_x, int64_t max_scratch, std::optional<uint64_t> seed) {
        const fastntk::emu::Config old = fastntk::emu::set_config(
            fastntk::emu::Config{sm_count, max_grid_x, max_scratch, seed.has_value(), seed.value_or(0)});
        return config_dict(old);
      },
      py::arg("sm_count"), py::arg("max_grid_x"), py::arg("max_scratch"), py::arg("seed"),
      "Replaces the knobs; returns the previous ones (as config() gives them)");
  m.def("selftest_names", &fastntk::emu::selftest_names);
  m.def("run_selftest", &fastntk::emu::run_selftest,
        "Runs one of the emulator's self-test kernels; returns its 1024-double output buffer");
  m.def("schemas", [] {
    py::list schemas;
    for (const char* s : fastntk::kSchemas) schemas.append(std::string(s));
    return schemas;
  });
}

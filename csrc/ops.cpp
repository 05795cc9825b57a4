// Every op schema of the fastntk library, and a small pybind11 module that
// reports how the extension was built (ops go through the dispatcher, never
// through pybind11). The Python fallback in fastntk/_ops.py defines the same
// schema strings when this extension is missing; tests check they agree.
#include <torch/extension.h>

#include <string>

namespace fastntk {

// Kept in one place so that fastntk.backend() can print them.
const char* const kSchemas[] = {
    "backprop_delta(Tensor delta_next, Tensor weight, Tensor h, float scale, "
    "str activation, float negative_slope=0.01, float beta=1., "
    "float threshold=20.) -> Tensor",
    "ntk_accumulate(Tensor(a!) out, Tensor a1, Tensor a2, Tensor d1, "
    "Tensor d2, float weight_scale, float bias_scale, str outputs, "
    "Tensor(b!)? bias_out=None) -> ()",
    "ntk_accumulate_layers(Tensor(a!) out, Tensor[] a1, Tensor[] a2, "
    "Tensor[] d1, Tensor[] d2, float[] weight_scales, float[] bias_scales, "
    "str outputs) -> ()",
    "ntk_diag_accumulate(Tensor(a!) out, Tensor a, Tensor d, "
    "float weight_scale, float bias_scale, str outputs) -> ()",
};

TORCH_LIBRARY(fastntk, m) {
  for (const char* schema : kSchemas) m.def(schema);
}

}  // namespace fastntk

static py::dict build_info() {
  py::dict info;
#ifdef WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef FASTNTK_CUDA_ARCH_LIST
  info["cuda_arch_list"] = std::string(FASTNTK_CUDA_ARCH_LIST);
#else
  info["cuda_arch_list"] = std::string();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  py::list schemas;
  for (const char* s : fastntk::kSchemas) schemas.append(std::string(s));
  info["schemas"] = schemas;
  return info;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastntk compiled ops (registered under torch.ops.fastntk)";
  m.def("build_info", &build_info,
        "How this extension was built: cuda, cuda_arch_list, openmp, schemas");
}

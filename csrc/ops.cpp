// Every op schema of the fastntk library, and a small pybind11 module that
// reports how the extension was built (ops go through the dispatcher, never
// through pybind11). The Python fallback in fastntk/_ops.py defines the same
// schema strings when this extension is missing; tests check they agree.
#include <torch/extension.h>

#include <string>

#include "schemas.h"

namespace fastntk {

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

// CPU mlp_ntk: the whole network's NTK in one call (the driver is
// ../mlp_ntk.h), composed of the CPU per-layer implementations.
#include <torch/library.h>

#include "../mlp_ntk.h"
#include "cpu_drivers.h"

namespace fastntk {
namespace {

struct CpuScope {
  explicit CpuScope(const at::Tensor& x1) {
    TORCH_CHECK(x1.device().is_cpu(), "x1 must be a CPU tensor, got ", x1.device());
  }
};

}  // namespace

// Several layers per accumulate call pay on the CPU only when x2 = x1 (see
// ntk_accumulate_cpu.cpp), as the Python engine decides too.
TORCH_LIBRARY_IMPL(fastntk, CPU, m) {
  m.impl("mlp_ntk", &mlp_ntk_driver<backprop_delta_cpu, accumulate_layers_cpu, ntk_diag_accumulate_cpu,
                                    /*kFuseTwoSided=*/false, CpuScope>);
}

}  // namespace fastntk

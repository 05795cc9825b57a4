// CPU mlp_ntk: the whole network's NTK in one call (the driver is
// ../mlp_ntk.h), composed of the CPU per-layer implementations.
#include <torch/library.h>

#include "../mlp_ntk.h"
#include "cpu_drivers.h"

namespace fastntk {
namespace {

at::Tensor mlp_ntk_cpu(const at::Tensor& x1, const std::optional<at::Tensor>& x2, at::TensorList weights,
                       const c10::List<std::optional<at::Tensor>>& biases, at::ArrayRef<double> scales,
                       at::ArrayRef<double> bias_scales, const std::vector<std::string>& activations,
                       at::ArrayRef<double> activation_params, c10::string_view outputs, bool layerwise,
                       bool diagonal) {
  TORCH_CHECK(x1.device().is_cpu(), "x1 must be a CPU tensor, got ", x1.device());
  // Several layers per accumulate call pay on the CPU only when x2 = x1
  // (see ntk_accumulate_cpu.cpp), as the Python engine decides too.
  return mlp_ntk_driver<backprop_delta_cpu, accumulate_layers_cpu, ntk_diag_accumulate_cpu>(
      x1, x2, weights, biases, scales, bias_scales, activations, activation_params, outputs, layerwise, diagonal,
      /*fuse_two_sided=*/false);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastntk, CPU, m) {
  m.impl("mlp_ntk", &mlp_ntk_cpu);
}

}  // namespace fastntk

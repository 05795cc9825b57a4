// CUDA mlp_ntk: the whole network's NTK in one call (the driver is
// ../mlp_ntk.h), composed of the CUDA per-layer implementations; every GEMM
// and kernel goes to the current stream, as the per-layer ops' do.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../mlp_ntk.h"
#include "cuda_drivers.cuh"
#include "launch.cuh"

namespace fastntk {
namespace {

at::Tensor mlp_ntk_cuda(const at::Tensor& x1, const std::optional<at::Tensor>& x2, at::TensorList weights,
                        const c10::List<std::optional<at::Tensor>>& biases, at::ArrayRef<double> scales,
                        at::ArrayRef<double> bias_scales, const std::vector<std::string>& activations,
                        at::ArrayRef<double> activation_params, c10::string_view outputs, bool layerwise,
                        bool diagonal) {
  cuda::check_device(x1, "x1");
  const cuda::DeviceGuard device_guard(x1.device());
  return mlp_ntk_driver<backprop_delta_cuda, accumulate_layers_cuda, ntk_diag_accumulate_cuda>(
      x1, x2, weights, biases, scales, bias_scales, activations, activation_params, outputs, layerwise, diagonal,
      /*fuse_two_sided=*/true);
}

}  // namespace

FASTNTK_CUDA_LIBRARY_IMPL(m) {
  m.impl("mlp_ntk", &mlp_ntk_cuda);
}

}  // namespace fastntk

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

struct CudaScope {
  explicit CudaScope(const at::Tensor& x1) : guard((cuda::check_device(x1, "x1"), x1.device())) {}
  cuda::DeviceGuard guard;
};

}  // namespace

FASTNTK_CUDA_LIBRARY_IMPL(m) {
  m.impl("mlp_ntk", &mlp_ntk_driver<backprop_delta_cuda, accumulate_layers_cuda, ntk_diag_accumulate_cuda,
                                    /*kFuseTwoSided=*/true, CudaScope>);
}

}  // namespace fastntk

// The CPU per-layer implementations that the whole-network op (mlp_ntk, see
// ../mlp_ntk.h) composes; each is defined in its op's file.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../ntk_common.h"

namespace fastntk {

// csrc/cpu/backprop_delta_cpu.cpp
at::Tensor backprop_delta_cpu(const at::Tensor& delta_next, const at::Tensor& weight, const at::Tensor& h,
                              double scale, c10::string_view activation, double negative_slope, double beta,
                              double threshold);

// csrc/cpu/ntk_accumulate_cpu.cpp: the driver behind ntk_accumulate(_layers),
// inputs already checked.
void accumulate_layers_cpu(at::Tensor& out, const std::optional<at::Tensor>& bias_out, at::TensorList a1,
                           at::TensorList a2, at::TensorList d1, at::TensorList d2,
                           at::ArrayRef<double> weight_scales, at::ArrayRef<double> bias_scales, OutputMode mode);

// csrc/cpu/ntk_diag_accumulate_cpu.cpp
void ntk_diag_accumulate_cpu(at::Tensor out, const at::Tensor& a, const at::Tensor& d, double weight_scale,
                             double bias_scale, c10::string_view outputs);

}  // namespace fastntk

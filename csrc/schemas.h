// Every op schema of the fastntk library, in one place: csrc/ops.cpp defines
// them as torch.ops.fastntk.*, the emulated CUDA build (csrc/emulation/) as
// torch.ops.fastntk_emu.*, and fastntk/_ops.py repeats them for its fallback
// (tests check they agree).
#pragma once

namespace fastntk {

// Kept in one place so that fastntk.backend() can print them.
inline constexpr const char* kSchemas[] = {
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
    "mlp_ntk(Tensor x1, Tensor? x2, Tensor[] weights, Tensor?[] biases, "
    "float[] scales, float[] bias_scales, str[] activations, "
    "float[] activation_params, str outputs, bool layerwise=False, "
    "bool diagonal=False) -> Tensor",
};

}  // namespace fastntk

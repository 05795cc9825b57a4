// One-line checks whose messages name the tensor, the rule and what was found.
// Every op validates its own inputs with these so that a bad call from C++ or
// from torch.ops.fastntk.* fails with a readable error instead of a crash.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace fastntk {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + ")";
}

}  // namespace fastntk

#define FASTNTK_CHECK_DIM(x, d)                                               \
  TORCH_CHECK((x).dim() == (d), #x " must have " #d " dimensions, got shape ", \
              fastntk::shape_str(x))

#define FASTNTK_CHECK_FLOATING(x)                                              \
  TORCH_CHECK((x).scalar_type() == at::kFloat ||                               \
                  (x).scalar_type() == at::kDouble,                            \
              #x " must be float32 or float64, got ", (x).scalar_type())

#define FASTNTK_CHECK_SAME_DTYPE(x, y)                                      \
  TORCH_CHECK((x).scalar_type() == (y).scalar_type(),                       \
              #x " and " #y " must have the same dtype, got ", (x).scalar_type(), \
              " and ", (y).scalar_type())

#define FASTNTK_CHECK_SAME_DEVICE(x, y)                                      \
  TORCH_CHECK((x).device() == (y).device(), #x " and " #y                    \
              " must be on the same device, got ", (x).device(), " and ",    \
              (y).device())

#define FASTNTK_CHECK_SIZE(x, dim, expected, what)                             \
  TORCH_CHECK((x).size(dim) == (expected), #x ".size(" #dim ") must equal ",  \
              what, " (", (expected), "), got shape ", fastntk::shape_str(x))

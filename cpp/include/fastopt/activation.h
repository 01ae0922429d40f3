// Pointwise activations (torch.nn.functional semantics), float32, forward and backward:
//   relu:        y = x < 0 ? 0 : x                 dx = x <= 0 ? 0 : dy
//   leaky_relu:  y = x > 0 ? x : x * slope         dx = x > 0 ? dy : dy * slope
// Each test is written the way torch writes it, so that NaN and -0.0 come out bit for bit as in
// torch: relu is "< 0", not max(x, 0), so NaN passes through and -0.0 stays -0.0; its backward is
// torch's threshold_backward(dy, y, 0) = y <= 0 ? 0 : dy, read off x (x <= 0 <=> y <= 0), which
// passes dy where x is NaN. leaky_relu's backward tests x > 0 as torch does (NaN gets dy * slope).
// The backward passes read x, not y. slope is float32, the value torch multiplies by.
#pragma once
#include <cstdint>

#include "fastopt/common.h"

namespace fastopt {

FASTOPT_HD float relu(float x) { return x < 0.0f ? 0.0f : x; }
FASTOPT_HD float relu_grad(float dy, float x) { return x <= 0.0f ? 0.0f : dy; }
FASTOPT_HD float leaky_relu(float x, float slope) { return x > 0.0f ? x : x * slope; }
FASTOPT_HD float leaky_relu_grad(float dy, float x, float slope) { return x > 0.0f ? dy : dy * slope; }

// n elements each; outputs never alias inputs (the bindings allocate them).
namespace cpu {
void relu_forward(const float* x, float* y, int64_t n);
void relu_backward(const float* dy, const float* x, float* dx, int64_t n);
void leaky_relu_forward(const float* x, float* y, int64_t n, float slope);
void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope);
}  // namespace cpu

namespace cuda {
// Same contracts on device pointers, queued on `stream` (a cudaStream_t; 0 = legacy default).
void relu_forward(const float* x, float* y, int64_t n, void* stream);
void relu_backward(const float* dy, const float* x, float* dx, int64_t n, void* stream);
void leaky_relu_forward(const float* x, float* y, int64_t n, float slope, void* stream);
void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope, void* stream);
}  // namespace cuda

}  // namespace fastopt

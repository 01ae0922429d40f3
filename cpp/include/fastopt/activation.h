// Pointwise activations (torch.nn.functional semantics), float32, forward and backward:
//   relu:        y = x < 0 ? 0 : x                 dx = x > 0 ? dy : 0
//   leaky_relu:  y = x > 0 ? x : x * slope         dx = x > 0 ? dy : dy * slope
// relu is written as a "< 0" test, not max(x, 0): NaN inputs pass through (as in torch) and -0.0
// stays -0.0, so outputs equal torch's bit for bit. The backward passes read x, not y: for relu
// x > 0 <=> y > 0 (torch's threshold_backward on the result), and leaky_relu's torch backward
// tests the input. slope is float32, the value torch multiplies by.
#pragma once
#include <cstdint>

#include "fastopt/common.h"

namespace fastopt {

FASTOPT_HD float relu(float x) { return x < 0.0f ? 0.0f : x; }
FASTOPT_HD float relu_grad(float dy, float x) { return x > 0.0f ? dy : 0.0f; }
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

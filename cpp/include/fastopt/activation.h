// Pointwise activations (torch.nn.functional semantics), float32, forward and backward:
//   relu:        y = x < 0 ? 0 : x                 dx = x <= 0 ? 0 : dy
//   leaky_relu:  y = x > 0 ? x : x * slope         dx = x > 0 ? dy : dy * slope
// Each test is written the way torch writes it, so that NaN and -0.0 come out bit for bit as in
// torch: relu is "< 0", not max(x, 0), so NaN passes through and -0.0 stays -0.0; its backward is
// torch's threshold_backward(dy, y, 0) = y <= 0 ? 0 : dy, read off x (x <= 0 <=> y <= 0), which
// passes dy where x is NaN. leaky_relu's backward tests x > 0 as torch does (NaN gets dy * slope).
// The backward passes read x, not y. slope is float32, the value torch multiplies by.
//
// Smooth activations, their derivatives also read off x:
//   tanh:     y = tanh(x)                          dx = dy * (1 - tanh(x)^2)
//   sigmoid:  y = 1 / (1 + exp(-x))                dx = dy * s * (1 - s)
//   elu:      y = x <= 0 ? alpha * expm1(x) : x    dx = x <= 0 ? dy * alpha * exp(x) : dy
//   gelu:     y = x * Phi(x) = x/2 (1 + erf(x/sqrt(2)))     dx = dy * (Phi(x) + x * phi(x))
// elu tests x <= 0 as torch does, so a NaN x passes dy in backward. gelu is the exact erf form
// (torch's approximate='none'). The transcendental functions are libm's float ones on the host
// and CUDA's on the device, each within 2 ulps of the exact value: the backends agree to a few
// ulps, not bit for bit, and every ISA copy of the CPU loop gives the same bits (scalar calls).
//
// Two more pointwise maps the containers and optimizers need:
//   residual add with drop path (stochastic depth, per sample n of a batch):
//       y = s + b * f_n   (y = b * f_n without s),   f_n = dropout_factor(word(offset + n))
//     the same keep rule and float32 scale as dropout (dropout.h), drawn once per sample, so the
//     mask is regenerated in backward (d body = dy * f_n); p = 0 gives f_n = 1, y = s + b exactly.
//   axpby:  y = a * x + b * y in place, where a term with a zero coefficient is not read (BLAS's
//     convention: b = 0 overwrites a y that holds NaN; a = b = 0 zeroes y). Weight averaging,
//     gradient accumulation and zero_grad are this map.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastopt/bf16.h"
#include "fastopt/common.h"
#include "fastopt/dropout.h"

namespace fastopt {

FASTOPT_HD float relu(float x) { return x < 0.0f ? 0.0f : x; }
FASTOPT_HD float relu_grad(float dy, float x) { return x <= 0.0f ? 0.0f : dy; }
FASTOPT_HD float leaky_relu(float x, float slope) { return x > 0.0f ? x : x * slope; }
FASTOPT_HD float leaky_relu_grad(float dy, float x, float slope) { return x > 0.0f ? dy : dy * slope; }

FASTOPT_HD float tanh_act(float x) { return tanhf(x); }
FASTOPT_HD float tanh_grad(float dy, float x) {
  const float t = tanhf(x);
  return dy * (1.0f - t * t);
}
FASTOPT_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
FASTOPT_HD float sigmoid_grad(float dy, float x) {
  const float s = sigmoid(x);
  return dy * (s * (1.0f - s));
}
FASTOPT_HD float elu(float x, float alpha) { return x <= 0.0f ? alpha * expm1f(x) : x; }
FASTOPT_HD float elu_grad(float dy, float x, float alpha) { return x <= 0.0f ? dy * (alpha * expf(x)) : dy; }
constexpr float kSqrtHalf = 0.70710678118654752f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1 / sqrt(2 pi)
FASTOPT_HD float gelu(float x) { return 0.5f * x * (1.0f + erff(x * kSqrtHalf)); }
FASTOPT_HD float gelu_grad(float dy, float x) {
  const float cdf = 0.5f * (1.0f + erff(x * kSqrtHalf));
  const float pdf = expf(-0.5f * x * x) * kInvSqrt2Pi;
  return dy * (cdf + x * pdf);
}

enum class Smooth { tanh, sigmoid, elu, gelu };

// y (backward: dx) of one element; alpha is elu's and ignored by the others.
FASTOPT_HD float smooth_forward(Smooth op, float x, float alpha) {
  switch (op) {
    case Smooth::tanh: return tanh_act(x);
    case Smooth::sigmoid: return sigmoid(x);
    case Smooth::elu: return elu(x, alpha);
    default: return gelu(x);
  }
}
FASTOPT_HD float smooth_backward(Smooth op, float dy, float x, float alpha) {
  switch (op) {
    case Smooth::tanh: return tanh_grad(dy, x);
    case Smooth::sigmoid: return sigmoid_grad(dy, x);
    case Smooth::elu: return elu_grad(dy, x, alpha);
    default: return gelu_grad(dy, x);
  }
}

// The drop-path factor of sample `row`: word offset + row of the dropout stream.
FASTOPT_HD float drop_path_factor(const DropoutParams& d, int64_t row) {
  const uint64_t s = d.offset + static_cast<uint64_t>(row);
  return dropout_factor(philox_block(s >> 2, d.seed).v[s & 3u], d.threshold, d.scale);
}
FASTOPT_HD float residual_add(float b, float s, float f) { return s + b * f; }

FASTOPT_HD float axpby(float x, float y, float a, float b) {
  if (b == 0.0f) return a == 0.0f ? 0.0f : a * x;
  if (a == 0.0f) return b * y;
  return a * x + b * y;
}

// n elements each; outputs never alias inputs (the bindings allocate them).
namespace cpu {
void relu_forward(const float* x, float* y, int64_t n);
void relu_backward(const float* dy, const float* x, float* dx, int64_t n);
void leaky_relu_forward(const float* x, float* y, int64_t n, float slope);
void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope);
// bf16 in and out (fastopt/bf16.h): the same element functions in fp32, the result rounded once
// to nearest even (relu's result is one of its inputs: exact).
void relu_forward(const bf16* x, bf16* y, int64_t n);
void relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n);
void leaky_relu_forward(const bf16* x, bf16* y, int64_t n, float slope);
void leaky_relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n, float slope);
void smooth_forward(Smooth op, const float* x, float* y, int64_t n, float alpha);
void smooth_backward(Smooth op, const float* dy, const float* x, float* dx, int64_t n, float alpha);
void smooth_forward(Smooth op, const bf16* x, bf16* y, int64_t n, float alpha);
void smooth_backward(Smooth op, const bf16* dy, const bf16* x, bf16* dx, int64_t n, float alpha);
// b, s, y: (rows, inner); s may be null. d.threshold = 2^32 (p = 0) skips the draws.
// bf16: s + b * f in fp32, rounded once (with f = 1 the sum of two bf16 values, rounded once).
void residual_add(const float* b, const float* s, float* y, int64_t rows, int64_t inner, const DropoutParams& d);
void residual_add(const bf16* b, const bf16* s, bf16* y, int64_t rows, int64_t inner, const DropoutParams& d);
// y[i] = axpby(x[i], y[i], a, b); x == y allowed.
void axpby(const float* x, float* y, int64_t n, float a, float b);
// y[i] = x[i] in y's type: fp32 -> bf16 rounds to nearest even (fastopt/bf16.h), bf16 -> fp32 is exact.
void cast(const float* x, bf16* y, int64_t n);
void cast(const bf16* x, float* y, int64_t n);
}  // namespace cpu

namespace cuda {
// Same contracts on device pointers, queued on `stream` (a cudaStream_t; 0 = legacy default).
void relu_forward(const float* x, float* y, int64_t n, void* stream);
void relu_backward(const float* dy, const float* x, float* dx, int64_t n, void* stream);
void leaky_relu_forward(const float* x, float* y, int64_t n, float slope, void* stream);
void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope, void* stream);
void smooth_forward(Smooth op, const float* x, float* y, int64_t n, float alpha, void* stream);
void smooth_backward(Smooth op, const float* dy, const float* x, float* dx, int64_t n, float alpha, void* stream);
void residual_add(const float* b, const float* s, float* y, int64_t rows, int64_t inner, const DropoutParams& d,
                  void* stream);
// bf16 in and out: the CPU's bf16 contract (fp32 math, one rounding per output).
void relu_forward(const bf16* x, bf16* y, int64_t n, void* stream);
void relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n, void* stream);
void leaky_relu_forward(const bf16* x, bf16* y, int64_t n, float slope, void* stream);
void leaky_relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n, float slope, void* stream);
void smooth_forward(Smooth op, const bf16* x, bf16* y, int64_t n, float alpha, void* stream);
void smooth_backward(Smooth op, const bf16* dy, const bf16* x, bf16* dx, int64_t n, float alpha, void* stream);
void residual_add(const bf16* b, const bf16* s, bf16* y, int64_t rows, int64_t inner, const DropoutParams& d,
                  void* stream);
void axpby(const float* x, float* y, int64_t n, float a, float b, void* stream);
void cast(const float* x, bf16* y, int64_t n, void* stream);
void cast(const bf16* x, float* y, int64_t n, void* stream);
}  // namespace cuda

}  // namespace fastopt

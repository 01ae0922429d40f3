/*
ReLU and LeakyReLU on CUDA, forward and backward (element math: fastopt/activation.h):
  relu:  y = x < 0 ? 0 : x,          dx = x <= 0 ? 0 : dy
  leaky: y = x > 0 ? x : x * slope,  dx = x > 0 ? dy : dy * slope

Bytes per element: forward 8 (read x, write y), backward 12 (read dy and x, write dx). Pure
bandwidth; the only goal is full-width coalesced accesses.

Launch shape: one map kernel for all four ops, 256 threads per block, a grid-stride loop over
quads of 4 elements (one float4 per array and quad when every pointer is 16-byte aligned, which
fresh allocations are), the n % 4 tail elements done by the first threads. The grid is capped at
kMaxBlocks (many waves on any GPU), so the int32 grid never overflows; indices are 64-bit.
A unary op ignores its second operand; the forward passes x twice and nvcc drops the dead loads.
*/
#include <algorithm>

#include "fastopt/activation.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using detail::check;
using detail::kThreads;

constexpr int64_t kMaxBlocks = 65536;

template <class Op>
__global__ void __launch_bounds__(kThreads)
map_kernel(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, int64_t n, bool vec,
           Op op) {
  const int64_t start = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t head = 0;  // elements done as quads
  if (vec) {
    head = n & ~int64_t{3};
    for (int64_t q = 4 * start; q < head; q += 4 * step) {
      const float4 u = *reinterpret_cast<const float4*>(a + q);
      const float4 v = *reinterpret_cast<const float4*>(b + q);
      *reinterpret_cast<float4*>(y + q) = make_float4(op(u.x, v.x), op(u.y, v.y), op(u.z, v.z), op(u.w, v.w));
    }
  }
  for (int64_t i = head + start; i < n; i += step) y[i] = op(a[i], b[i]);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class Op>
void launch_map(const float* a, const float* b, float* y, int64_t n, Op op, void* stream, const char* what) {
  if (n == 0) return;
  const bool vec = aligned16(a) && aligned16(b) && aligned16(y);
  const int64_t work = vec ? (n + 3) / 4 : n;
  const int grid = static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks));
  map_kernel<<<grid, kThreads, 0, detail::as_stream(stream)>>>(a, b, y, n, vec, op);
  check(cudaGetLastError(), what);
}

struct Relu {
  __device__ float operator()(float x, float) const { return relu(x); }
};
struct ReluGrad {
  __device__ float operator()(float dy, float x) const { return relu_grad(dy, x); }
};
struct LeakyRelu {
  float slope;
  __device__ float operator()(float x, float) const { return leaky_relu(x, slope); }
};
struct LeakyReluGrad {
  float slope;
  __device__ float operator()(float dy, float x) const { return leaky_relu_grad(dy, x, slope); }
};

}  // namespace

void relu_forward(const float* x, float* y, int64_t n, void* stream) {
  launch_map(x, x, y, n, Relu{}, stream, "relu_forward launch");
}

void relu_backward(const float* dy, const float* x, float* dx, int64_t n, void* stream) {
  launch_map(dy, x, dx, n, ReluGrad{}, stream, "relu_backward launch");
}

void leaky_relu_forward(const float* x, float* y, int64_t n, float slope, void* stream) {
  launch_map(x, x, y, n, LeakyRelu{slope}, stream, "leaky_relu_forward launch");
}

void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope, void* stream) {
  launch_map(dy, x, dx, n, LeakyReluGrad{slope}, stream, "leaky_relu_backward launch");
}

}  // namespace fastopt::cuda

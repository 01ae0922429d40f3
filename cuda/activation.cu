/*
Pointwise maps on CUDA, forward and backward (element math: fastopt/activation.h):
  relu:  y = x < 0 ? 0 : x,          dx = x <= 0 ? 0 : dy
  leaky: y = x > 0 ? x : x * slope,  dx = x > 0 ? dy : dy * slope
  tanh, sigmoid, elu, gelu (CUDA's tanhf/expf/expm1f/erff), the residual add with drop path, axpby,
  and the fp32 <-> bf16 cast (y = x rounded to nearest even, or widened).

Bytes per element: forward 8 (read x, write y), backward 12 (read dy and x, write dx); residual
add 12, axpby 12, cast 6; half of that in bf16 (all but axpby, which updates fp32 gradient buffers, take
bf16 arrays: fp32 math, each output rounded once, the CPU kernels' contract). Pure bandwidth (the
smooth activations' few dozen flops hide under the loads); the only goal is full-width coalesced
accesses.

Launch shape: one map kernel for all four ops, 256 threads per block, a grid-stride loop over
packs of 16 bytes (4 floats or 8 bf16: one access per array and pack when every pointer is
16-byte aligned, which fresh allocations are), the tail elements done by the first threads. The
grid is capped at kMaxBlocks (many waves on any GPU), so the int32 grid never overflows; indices
are 64-bit.
A unary op ignores its second operand; the forward passes x twice and nvcc drops the dead loads.
*/
#include <algorithm>

#include "fastopt/activation.h"
#include "launch.cuh"
#include "pack.cuh"

namespace fastopt::cuda {
namespace {

using detail::check;
using detail::kPack16;
using detail::kThreads;

constexpr int64_t kMaxBlocks = 65536;

template <class T, class Op>
__global__ void __launch_bounds__(kThreads)
map_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int64_t n, bool vec, Op op) {
  constexpr int V = kPack16<T>;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t head = 0;  // elements done as packs
  if (vec) {
    head = n - n % V;
    for (int64_t q = V * start; q < head; q += V * step) {
      float u[V], v[V], o[V];
      detail::load_pack(a + q, u);
      detail::load_pack(b + q, v);
#pragma unroll
      for (int e = 0; e < V; ++e) o[e] = op(u[e], v[e]);
      detail::store_pack(y + q, o);
    }
  }
  for (int64_t i = head + start; i < n; i += step) y[i] = from_float<T>(op(to_float(a[i]), to_float(b[i])));
}

template <class T, class Op>
void launch_map(const T* a, const T* b, T* y, int64_t n, Op op, void* stream, const char* what) {
  if (n == 0) return;
  constexpr int V = kPack16<T>;
  const bool vec = detail::pack_aligned<T, V>(a) && detail::pack_aligned<T, V>(b) && detail::pack_aligned<T, V>(y);
  const int64_t work = vec ? (n + V - 1) / V : n;
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
template <Smooth op>
struct SmoothForward {
  float alpha;
  __device__ float operator()(float x, float) const { return smooth_forward(op, x, alpha); }
};
template <Smooth op>
struct SmoothBackward {
  float alpha;
  __device__ float operator()(float dy, float x) const { return smooth_backward(op, dy, x, alpha); }
};

template <template <Smooth> class Functor, class T>
void launch_smooth(Smooth op, const T* a, const T* b, T* y, int64_t n, float alpha, void* stream, const char* what) {
  switch (op) {
    case Smooth::tanh: return launch_map(a, b, y, n, Functor<Smooth::tanh>{alpha}, stream, what);
    case Smooth::sigmoid: return launch_map(a, b, y, n, Functor<Smooth::sigmoid>{alpha}, stream, what);
    case Smooth::elu: return launch_map(a, b, y, n, Functor<Smooth::elu>{alpha}, stream, what);
    default: return launch_map(a, b, y, n, Functor<Smooth::gelu>{alpha}, stream, what);
  }
}

// blockIdx.y strides over rows (samples), blockIdx.x over a row: a thread draws its row's
// factor once per row it visits (10 Philox rounds, a few dozen integer ops) and then streams.
template <class T>
__global__ void __launch_bounds__(kThreads)
residual_kernel(const T* __restrict__ b, const T* __restrict__ s, T* __restrict__ y, int64_t rows, int64_t inner,
                const DropoutParams d, bool drop) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const float f = drop ? drop_path_factor(d, row) : 1.0f;
    const int64_t base = row * inner;
    for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < inner;
         k += static_cast<int64_t>(gridDim.x) * kThreads) {
      const float bv = to_float(b[base + k]);
      y[base + k] = from_float<T>(s != nullptr ? fastopt::residual_add(bv, to_float(s[base + k]), f) : bv * f);
    }
  }
}

// x may equal y (an in-place scale), so no __restrict__ here.
__global__ void __launch_bounds__(kThreads) axpby_kernel(const float* x, float* y, int64_t n, float a, float b) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads)
    y[i] = fastopt::axpby(x[i], y[i], a, b);
}

template <class S, class D>
__global__ void __launch_bounds__(kThreads) cast_kernel(const S* __restrict__ x, D* __restrict__ y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads)
    y[i] = from_float<D>(to_float(x[i]));
}

template <class S, class D>
void cast_launch(const S* x, D* y, int64_t n, void* stream) {
  if (n == 0) return;
  const int grid = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  cast_kernel<<<grid, kThreads, 0, detail::as_stream(stream)>>>(x, y, n);
  check(cudaGetLastError(), "cast launch");
}

template <class T>
void residual_launch(const T* b, const T* s, T* y, int64_t rows, int64_t inner, const DropoutParams& d, void* stream) {
  if (rows == 0 || inner == 0) return;
  const bool drop = d.threshold < (uint64_t{1} << 32);
  if (!drop) {  // one long row: no draws, and the grid covers the whole array
    inner *= rows;
    rows = 1;
  }
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((inner + kThreads - 1) / kThreads, kMaxBlocks)),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  residual_kernel<<<grid, kThreads, 0, detail::as_stream(stream)>>>(b, s, y, rows, inner, d, drop);
  check(cudaGetLastError(), "residual_add launch");
}

}  // namespace

// One definition per storage type T in {float, bf16}.
#define FASTOPT_ACTIVATION_ENTRIES(T)                                                                            \
  void relu_forward(const T* x, T* y, int64_t n, void* stream) {                                                 \
    launch_map(x, x, y, n, Relu{}, stream, "relu_forward launch");                                               \
  }                                                                                                              \
  void relu_backward(const T* dy, const T* x, T* dx, int64_t n, void* stream) {                                  \
    launch_map(dy, x, dx, n, ReluGrad{}, stream, "relu_backward launch");                                        \
  }                                                                                                              \
  void leaky_relu_forward(const T* x, T* y, int64_t n, float slope, void* stream) {                              \
    launch_map(x, x, y, n, LeakyRelu{slope}, stream, "leaky_relu_forward launch");                               \
  }                                                                                                              \
  void leaky_relu_backward(const T* dy, const T* x, T* dx, int64_t n, float slope, void* stream) {               \
    launch_map(dy, x, dx, n, LeakyReluGrad{slope}, stream, "leaky_relu_backward launch");                        \
  }                                                                                                              \
  void smooth_forward(Smooth op, const T* x, T* y, int64_t n, float alpha, void* stream) {                       \
    launch_smooth<SmoothForward>(op, x, x, y, n, alpha, stream, "smooth activation forward launch");             \
  }                                                                                                              \
  void smooth_backward(Smooth op, const T* dy, const T* x, T* dx, int64_t n, float alpha, void* stream) {        \
    launch_smooth<SmoothBackward>(op, dy, x, dx, n, alpha, stream, "smooth activation backward launch");         \
  }                                                                                                              \
  void residual_add(const T* b, const T* s, T* y, int64_t rows, int64_t inner, const DropoutParams& d,           \
                    void* stream) {                                                                              \
    residual_launch(b, s, y, rows, inner, d, stream);                                                            \
  }
FASTOPT_ACTIVATION_ENTRIES(float)
FASTOPT_ACTIVATION_ENTRIES(bf16)
#undef FASTOPT_ACTIVATION_ENTRIES

void axpby(const float* x, float* y, int64_t n, float a, float b, void* stream) {
  if (n == 0) return;
  const int grid = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  axpby_kernel<<<grid, kThreads, 0, detail::as_stream(stream)>>>(x, y, n, a, b);
  check(cudaGetLastError(), "axpby launch");
}

void cast(const float* x, bf16* y, int64_t n, void* stream) { cast_launch(x, y, n, stream); }
void cast(const bf16* x, float* y, int64_t n, void* stream) { cast_launch(x, y, n, stream); }

}  // namespace fastopt::cuda

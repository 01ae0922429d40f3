/*
Max pooling (int32 argmax indices), average pooling and global average pooling on CUDA, forward and backward
(window rules, tie/NaN rule and the backward gather: fastopt/pooling.h).

Every kernel is templated on the storage type T of x, y, dy, dx (float or bf16: windows and sums in
fp32, each output rounded once, the CPU's bf16 contract); bf16 halves the activation bytes below.

Bytes: max pool forward reads each input once from DRAM (overlapping windows hit L1/L2) and
writes 8 per output (value + int32 index, half of torch's int64); backward reads 8 per output
(dy + index, again cached across overlapping windows) and writes 4 per input. Global average
pool: forward reads 4 per input, backward writes 4 per input.

Launch shapes (256 threads per block, grid-stride loops, grid capped at kMaxBlocks so the int32
grid never overflows):
- max pool forward: one thread per output, scanning its window.
- max pool backward: one thread per INPUT element, gathering from the <= ceil(k/s)^2 outputs
  whose windows cover it in (p, q) order. No float atomics (house rule), no zero-fill pass, and
  the same bits as the CPU; for stride >= kernel each input has at most one such output.
- global average pool forward: one warp per plane, lanes striding over it (coalesced), double
  accumulators folded by a fixed shuffle tree: deterministic. Planes are small (7x7 .. 32x32)
  and many where this op is used, so a warp per plane keeps every lane busy.
- global average pool backward: one thread per input element.
- average pool: one thread per output (forward) / per input (backward, a gather), like max pool.
Positions decompose into (plane, row, col) with 32-bit division when the whole index space
fits in int32 (the common case: 64-bit division is a long emulated sequence), else 64-bit.
*/
#include <algorithm>

#include "fastopt/pooling.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using detail::check;
using detail::kThreads;

constexpr int64_t kMaxBlocks = 65536;
constexpr int kWarpsPerBlock = kThreads / 32;

int grid_for(int64_t work) { return static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks)); }

bool fits_int32(int64_t n) { return n <= INT32_MAX; }

template <class Index, class T>
__global__ void __launch_bounds__(kThreads)
max_pool_forward_kernel(const Pool2dShape s, const T* __restrict__ x, T* __restrict__ y,
                        int32_t* __restrict__ indices, int64_t total) {
  const int64_t in_plane = static_cast<int64_t>(s.H) * s.W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const Index row = static_cast<Index>(i) / s.Q;  // plane * P + p
    const int q = static_cast<int>(static_cast<Index>(i) - row * s.Q);
    const Index plane = row / s.P;
    const int p = static_cast<int>(row - plane * s.P);
    float best;
    int32_t index;
    max_pool_window(x + static_cast<int64_t>(plane) * in_plane, s, p, q, &best, &index);
    y[i] = from_float<T>(best);
    indices[i] = index;
  }
}

template <class Index, class T>
__global__ void __launch_bounds__(kThreads)
max_pool_backward_kernel(const Pool2dShape s, const T* __restrict__ dy, const int32_t* __restrict__ indices,
                         T* __restrict__ dx, int64_t total) {
  const int64_t out_plane = static_cast<int64_t>(s.P) * s.Q;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const Index row = static_cast<Index>(i) / s.W;  // plane * H + h
    const int w = static_cast<int>(static_cast<Index>(i) - row * s.W);
    const Index plane = row / s.H;
    const int h = static_cast<int>(row - plane * s.H);
    const int64_t offset = static_cast<int64_t>(plane) * out_plane;
    dx[i] = from_float<T>(max_pool_gather(dy + offset, indices + offset, s.Q, cover_begin(h, s.sh, s.ph, s.kh),
                                          cover_end(h, s.sh, s.ph, s.P), cover_begin(w, s.sw, s.pw, s.kw),
                                          cover_end(w, s.sw, s.pw, s.Q), h * s.W + w));
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
global_avg_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t planes, int64_t hw) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; c < planes; c += warps) {
    const T* xc = x + c * hw;
    double acc = 0.0;
    for (int64_t j = lane; j < hw; j += 32) acc += static_cast<double>(to_float(xc[j]));
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) y[c] = from_float<T>(static_cast<float>(acc / static_cast<double>(hw)));
  }
}

template <class Index, class T>
__global__ void __launch_bounds__(kThreads)
global_avg_backward_kernel(const T* __restrict__ dy, T* __restrict__ dx, int64_t hw, int64_t total) {
  const float count = static_cast<float>(hw);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads)
    dx[i] = from_float<T>(to_float(dy[static_cast<Index>(i) / static_cast<Index>(hw)]) / count);
}

template <class Index, class T>
__global__ void __launch_bounds__(kThreads)
avg_pool_forward_kernel(const Pool2dShape s, const T* __restrict__ x, T* __restrict__ y, bool include_pad,
                        int64_t total) {
  const int64_t in_plane = static_cast<int64_t>(s.H) * s.W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const Index row = static_cast<Index>(i) / s.Q;
    const int q = static_cast<int>(static_cast<Index>(i) - row * s.Q);
    const Index plane = row / s.P;
    const int p = static_cast<int>(row - plane * s.P);
    y[i] = from_float<T>(avg_pool_window(x + static_cast<int64_t>(plane) * in_plane, s, p, q, include_pad));
  }
}

template <class Index, class T>
__global__ void __launch_bounds__(kThreads)
avg_pool_backward_kernel(const Pool2dShape s, const T* __restrict__ dy, T* __restrict__ dx, bool include_pad,
                         int64_t total) {
  const int64_t out_plane = static_cast<int64_t>(s.P) * s.Q;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const Index row = static_cast<Index>(i) / s.W;
    const int w = static_cast<int>(static_cast<Index>(i) - row * s.W);
    const Index plane = row / s.H;
    const int h = static_cast<int>(row - plane * s.H);
    const float g = avg_pool_gather(dy + static_cast<int64_t>(plane) * out_plane, s, cover_begin(h, s.sh, s.ph, s.kh),
                                    cover_end(h, s.sh, s.ph, s.P), cover_begin(w, s.sw, s.pw, s.kw),
                                    cover_end(w, s.sw, s.pw, s.Q), include_pad);
    dx[i] = from_float<T>(g);
  }
}

template <class T>
void max_pool_fwd(const Pool2dShape& s, const T* x, T* y, int32_t* indices, void* stream) {
  const int64_t total = s.planes * s.P * s.Q;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    max_pool_forward_kernel<int32_t, T><<<grid_for(total), kThreads, 0, st>>>(s, x, y, indices, total);
  else
    max_pool_forward_kernel<int64_t, T><<<grid_for(total), kThreads, 0, st>>>(s, x, y, indices, total);
  check(cudaGetLastError(), "max_pool_forward_kernel launch");
}

template <class T>
void max_pool_bwd(const Pool2dShape& s, const T* dy, const int32_t* indices, T* dx, void* stream) {
  const int64_t total = s.planes * s.H * s.W;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    max_pool_backward_kernel<int32_t, T><<<grid_for(total), kThreads, 0, st>>>(s, dy, indices, dx, total);
  else
    max_pool_backward_kernel<int64_t, T><<<grid_for(total), kThreads, 0, st>>>(s, dy, indices, dx, total);
  check(cudaGetLastError(), "max_pool_backward_kernel launch");
}

template <class T>
void global_avg_fwd(const T* x, T* y, int64_t planes, int64_t hw, void* stream) {
  if (planes == 0) return;
  const int grid = static_cast<int>(std::min<int64_t>((planes + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks));
  global_avg_forward_kernel<T><<<grid, kThreads, 0, detail::as_stream(stream)>>>(x, y, planes, hw);
  check(cudaGetLastError(), "global_avg_forward_kernel launch");
}

template <class T>
void global_avg_bwd(const T* dy, T* dx, int64_t planes, int64_t hw, void* stream) {
  const int64_t total = planes * hw;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    global_avg_backward_kernel<int32_t, T><<<grid_for(total), kThreads, 0, st>>>(dy, dx, hw, total);
  else
    global_avg_backward_kernel<int64_t, T><<<grid_for(total), kThreads, 0, st>>>(dy, dx, hw, total);
  check(cudaGetLastError(), "global_avg_backward_kernel launch");
}

template <class T>
void avg_pool_fwd(const Pool2dShape& s, const T* x, T* y, bool include_pad, void* stream) {
  const int64_t total = s.planes * s.P * s.Q;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    avg_pool_forward_kernel<int32_t, T><<<grid_for(total), kThreads, 0, st>>>(s, x, y, include_pad, total);
  else
    avg_pool_forward_kernel<int64_t, T><<<grid_for(total), kThreads, 0, st>>>(s, x, y, include_pad, total);
  check(cudaGetLastError(), "avg_pool_forward_kernel launch");
}

template <class T>
void avg_pool_bwd(const Pool2dShape& s, const T* dy, T* dx, bool include_pad, void* stream) {
  const int64_t total = s.planes * s.H * s.W;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    avg_pool_backward_kernel<int32_t, T><<<grid_for(total), kThreads, 0, st>>>(s, dy, dx, include_pad, total);
  else
    avg_pool_backward_kernel<int64_t, T><<<grid_for(total), kThreads, 0, st>>>(s, dy, dx, include_pad, total);
  check(cudaGetLastError(), "avg_pool_backward_kernel launch");
}

}  // namespace

// One definition per storage type T in {float, bf16}.
#define FASTOPT_POOLING_ENTRIES(T)                                                                               \
  void max_pool2d_forward(const Pool2dShape& s, const T* x, T* y, int32_t* indices, void* stream) {              \
    max_pool_fwd(s, x, y, indices, stream);                                                                      \
  }                                                                                                              \
  void max_pool2d_backward(const Pool2dShape& s, const T* dy, const int32_t* indices, T* dx, void* stream) {     \
    max_pool_bwd(s, dy, indices, dx, stream);                                                                    \
  }                                                                                                              \
  void global_avg_pool_forward(const T* x, T* y, int64_t planes, int64_t hw, void* stream) {                     \
    global_avg_fwd(x, y, planes, hw, stream);                                                                    \
  }                                                                                                              \
  void global_avg_pool_backward(const T* dy, T* dx, int64_t planes, int64_t hw, void* stream) {                  \
    global_avg_bwd(dy, dx, planes, hw, stream);                                                                  \
  }                                                                                                              \
  void avg_pool2d_forward(const Pool2dShape& s, const T* x, T* y, bool include_pad, void* stream) {              \
    avg_pool_fwd(s, x, y, include_pad, stream);                                                                  \
  }                                                                                                              \
  void avg_pool2d_backward(const Pool2dShape& s, const T* dy, T* dx, bool include_pad, void* stream) {           \
    avg_pool_bwd(s, dy, dx, include_pad, stream);                                                                \
  }
FASTOPT_POOLING_ENTRIES(float)
FASTOPT_POOLING_ENTRIES(bf16)
#undef FASTOPT_POOLING_ENTRIES

}  // namespace fastopt::cuda

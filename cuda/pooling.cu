/*
Max pooling (int32 argmax indices), average pooling and global average pooling on CUDA, forward and backward
(window rules, tie/NaN rule and the backward gather: fastopt/pooling.h).

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

int grid_for(int64_t work) {
  return static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks));
}

bool fits_int32(int64_t n) { return n <= INT32_MAX; }

template <class Index>
__global__ void __launch_bounds__(kThreads)
max_pool_forward_kernel(const Pool2dShape s, const float* __restrict__ x, float* __restrict__ y,
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
    y[i] = best;
    indices[i] = index;
  }
}

template <class Index>
__global__ void __launch_bounds__(kThreads)
max_pool_backward_kernel(const Pool2dShape s, const float* __restrict__ dy, const int32_t* __restrict__ indices,
                         float* __restrict__ dx, int64_t total) {
  const int64_t out_plane = static_cast<int64_t>(s.P) * s.Q;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const Index row = static_cast<Index>(i) / s.W;  // plane * H + h
    const int w = static_cast<int>(static_cast<Index>(i) - row * s.W);
    const Index plane = row / s.H;
    const int h = static_cast<int>(row - plane * s.H);
    const int64_t offset = static_cast<int64_t>(plane) * out_plane;
    dx[i] = max_pool_gather(dy + offset, indices + offset, s.Q, cover_begin(h, s.sh, s.ph, s.kh),
                            cover_end(h, s.sh, s.ph, s.P), cover_begin(w, s.sw, s.pw, s.kw),
                            cover_end(w, s.sw, s.pw, s.Q), h * s.W + w);
  }
}

__global__ void __launch_bounds__(kThreads)
global_avg_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t planes, int64_t hw) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; c < planes; c += warps) {
    const float* xc = x + c * hw;
    double acc = 0.0;
    for (int64_t j = lane; j < hw; j += 32) acc += static_cast<double>(xc[j]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) y[c] = static_cast<float>(acc / static_cast<double>(hw));
  }
}

template <class Index>
__global__ void __launch_bounds__(kThreads)
global_avg_backward_kernel(const float* __restrict__ dy, float* __restrict__ dx, int64_t hw, int64_t total) {
  const float count = static_cast<float>(hw);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads)
    dx[i] = dy[static_cast<Index>(i) / static_cast<Index>(hw)] / count;
}

template <class Index>
__global__ void __launch_bounds__(kThreads)
avg_pool_forward_kernel(const Pool2dShape s, const float* __restrict__ x, float* __restrict__ y, bool include_pad,
                        int64_t total) {
  const int64_t in_plane = static_cast<int64_t>(s.H) * s.W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const Index row = static_cast<Index>(i) / s.Q;
    const int q = static_cast<int>(static_cast<Index>(i) - row * s.Q);
    const Index plane = row / s.P;
    const int p = static_cast<int>(row - plane * s.P);
    y[i] = avg_pool_window(x + static_cast<int64_t>(plane) * in_plane, s, p, q, include_pad);
  }
}

template <class Index>
__global__ void __launch_bounds__(kThreads)
avg_pool_backward_kernel(const Pool2dShape s, const float* __restrict__ dy, float* __restrict__ dx, bool include_pad,
                         int64_t total) {
  const int64_t out_plane = static_cast<int64_t>(s.P) * s.Q;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const Index row = static_cast<Index>(i) / s.W;
    const int w = static_cast<int>(static_cast<Index>(i) - row * s.W);
    const Index plane = row / s.H;
    const int h = static_cast<int>(row - plane * s.H);
    dx[i] = avg_pool_gather(dy + static_cast<int64_t>(plane) * out_plane, s, cover_begin(h, s.sh, s.ph, s.kh),
                            cover_end(h, s.sh, s.ph, s.P), cover_begin(w, s.sw, s.pw, s.kw),
                            cover_end(w, s.sw, s.pw, s.Q), include_pad);
  }
}

}  // namespace

void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* indices, void* stream) {
  const int64_t total = s.planes * s.P * s.Q;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    max_pool_forward_kernel<int32_t><<<grid_for(total), kThreads, 0, st>>>(s, x, y, indices, total);
  else
    max_pool_forward_kernel<int64_t><<<grid_for(total), kThreads, 0, st>>>(s, x, y, indices, total);
  check(cudaGetLastError(), "max_pool_forward_kernel launch");
}

void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* indices, float* dx, void* stream) {
  const int64_t total = s.planes * s.H * s.W;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    max_pool_backward_kernel<int32_t><<<grid_for(total), kThreads, 0, st>>>(s, dy, indices, dx, total);
  else
    max_pool_backward_kernel<int64_t><<<grid_for(total), kThreads, 0, st>>>(s, dy, indices, dx, total);
  check(cudaGetLastError(), "max_pool_backward_kernel launch");
}

void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw, void* stream) {
  if (planes == 0) return;
  const int grid = static_cast<int>(std::min<int64_t>((planes + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks));
  global_avg_forward_kernel<<<grid, kThreads, 0, detail::as_stream(stream)>>>(x, y, planes, hw);
  check(cudaGetLastError(), "global_avg_forward_kernel launch");
}

void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw, void* stream) {
  const int64_t total = planes * hw;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    global_avg_backward_kernel<int32_t><<<grid_for(total), kThreads, 0, st>>>(dy, dx, hw, total);
  else
    global_avg_backward_kernel<int64_t><<<grid_for(total), kThreads, 0, st>>>(dy, dx, hw, total);
  check(cudaGetLastError(), "global_avg_backward_kernel launch");
}

void avg_pool2d_forward(const Pool2dShape& s, const float* x, float* y, bool include_pad, void* stream) {
  const int64_t total = s.planes * s.P * s.Q;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    avg_pool_forward_kernel<int32_t><<<grid_for(total), kThreads, 0, st>>>(s, x, y, include_pad, total);
  else
    avg_pool_forward_kernel<int64_t><<<grid_for(total), kThreads, 0, st>>>(s, x, y, include_pad, total);
  check(cudaGetLastError(), "avg_pool_forward_kernel launch");
}

void avg_pool2d_backward(const Pool2dShape& s, const float* dy, float* dx, bool include_pad, void* stream) {
  const int64_t total = s.planes * s.H * s.W;
  if (total == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  if (fits_int32(total))
    avg_pool_backward_kernel<int32_t><<<grid_for(total), kThreads, 0, st>>>(s, dy, dx, include_pad, total);
  else
    avg_pool_backward_kernel<int64_t><<<grid_for(total), kThreads, 0, st>>>(s, dy, dx, include_pad, total);
  check(cudaGetLastError(), "avg_pool_backward_kernel launch");
}

}  // namespace fastopt::cuda

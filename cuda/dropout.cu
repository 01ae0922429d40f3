/*
Inverted dropout on CUDA, the mask regenerated from Philox4x32-10 in forward and backward:
  y_i = x_i * (word(offset + i) < threshold ? scale : 0)      (fastopt/dropout.h, fastopt/philox.h)

Bytes per element: read x + write y = 8 (torch stores a 1-byte mask as well: 9); the mask kernel
writes 1. Compute: one Philox evaluation (10 rounds, 20 32x32-bit multiply-highs) per 4 elements,
well under the memory time on sm_80+.

Launch shape: one thread per Philox block, i.e. per 4 consecutive stream words, 256 threads per
CUDA block, a 1-D grid covering all blocks that the elements [0, n) draw from. Thread t owns block
(offset div 4) + t, hence elements 4t - (offset mod 4) + w, w = 0..3; so every word is generated
exactly once and used by exactly the element the stream definition gives it, independent of the
grid. When offset is a multiple of 4 and the pointers are 16-byte aligned those 4 elements are one
aligned float4 (one uint32 of mask bytes); otherwise a thread takes scalar loads and stores, so
the same bits come out on either path.
*/
#include "fastopt/dropout.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using detail::check;
using detail::kThreads;

// Philox blocks drawn by elements [0, n) of a call at `offset` (n > 0).
int64_t philox_blocks(int64_t n, uint64_t offset) { return (static_cast<int64_t>(offset & 3u) + n + 3) / 4; }

int grid_for(int64_t blocks) {
  const int64_t grid = (blocks + kThreads - 1) / kThreads;
  if (grid > INT_MAX) throw std::runtime_error("fastopt dropout: tensor too large for one launch");
  return static_cast<int>(grid);
}

// vec: offset % 4 == 0 and both pointers 16-byte aligned.
__global__ void __launch_bounds__(kThreads)
dropout_apply_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n, const DropoutParams d,
                     int64_t num_blocks, bool vec) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= num_blocks) return;
  const Philox4 r = philox_block((d.offset >> 2) + static_cast<uint64_t>(t), d.seed);
  const int64_t i0 = 4 * t - static_cast<int64_t>(d.offset & 3u);
  if (vec && i0 + 4 <= n) {
    float4 v = *reinterpret_cast<const float4*>(x + i0);
    v.x *= dropout_factor(r.v[0], d.threshold, d.scale);
    v.y *= dropout_factor(r.v[1], d.threshold, d.scale);
    v.z *= dropout_factor(r.v[2], d.threshold, d.scale);
    v.w *= dropout_factor(r.v[3], d.threshold, d.scale);
    *reinterpret_cast<float4*>(y + i0) = v;
    return;
  }
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const int64_t i = i0 + w;
    if (i >= 0 && i < n) y[i] = x[i] * dropout_factor(r.v[w], d.threshold, d.scale);
  }
}

// vec: offset % 4 == 0 and mask 4-byte aligned; the 4 bytes go out as one little-endian uint32.
__global__ void __launch_bounds__(kThreads)
dropout_mask_kernel(uint8_t* __restrict__ mask, int64_t n, const DropoutParams d, int64_t num_blocks, bool vec) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= num_blocks) return;
  const Philox4 r = philox_block((d.offset >> 2) + static_cast<uint64_t>(t), d.seed);
  const int64_t i0 = 4 * t - static_cast<int64_t>(d.offset & 3u);
  if (vec && i0 + 4 <= n) {
    uint32_t packed = 0;
#pragma unroll
    for (int w = 0; w < 4; ++w) packed |= (dropout_keep(r.v[w], d.threshold) ? 1u : 0u) << (8 * w);
    *reinterpret_cast<uint32_t*>(mask + i0) = packed;
    return;
  }
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const int64_t i = i0 + w;
    if (i >= 0 && i < n) mask[i] = dropout_keep(r.v[w], d.threshold) ? 1 : 0;
  }
}

}  // namespace

void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d, void* stream) {
  if (n == 0) return;
  const int64_t blocks = philox_blocks(n, d.offset);
  const bool vec = (d.offset & 3u) == 0 && (reinterpret_cast<uintptr_t>(x) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(y) & 15u) == 0;
  dropout_apply_kernel<<<grid_for(blocks), kThreads, 0, detail::as_stream(stream)>>>(x, y, n, d, blocks, vec);
  check(cudaGetLastError(), "dropout_apply_kernel launch");
}

void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d, void* stream) {
  if (n == 0) return;
  const int64_t blocks = philox_blocks(n, d.offset);
  const bool vec = (d.offset & 3u) == 0 && (reinterpret_cast<uintptr_t>(mask) & 3u) == 0;
  dropout_mask_kernel<<<grid_for(blocks), kThreads, 0, detail::as_stream(stream)>>>(mask, n, d, blocks, vec);
  check(cudaGetLastError(), "dropout_mask_kernel launch");
}

}  // namespace fastopt::cuda

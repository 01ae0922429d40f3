/*
Inverted dropout on CUDA, the mask regenerated from Philox4x32-10 in forward and backward:
  y_i = x_i * (word(offset + i) < threshold ? scale : 0)      (fastopt/dropout.h, fastopt/philox.h)

Bytes per element: read x + write y = 8, 4 in bf16 (torch stores a 1-byte mask as well: 9); the
mask kernel writes 1. bf16: x * factor in fp32, rounded once (the CPU's contract). Compute: one
Philox evaluation (10 rounds, 20 32x32-bit multiply-highs) per 4 elements, well under the memory
time on sm_80+.

Launch shape: one thread per Philox block, i.e. per 4 consecutive stream words, 256 threads per
CUDA block, a 1-D grid covering all blocks that the elements [0, n) draw from. Thread t owns block
(offset div 4) + t, hence elements 4t - (offset mod 4) + w, w = 0..3; so every word is generated
exactly once and used by exactly the element the stream definition gives it, independent of the
grid. When offset is a multiple of 4 and the pointers are aligned to 4 elements those 4 elements
are one access (a float4, 4 bf16 in 8 bytes; one uint32 of mask bytes); otherwise a thread takes
scalar loads and stores, so the same bits come out on either path.
*/
#include "fastopt/dropout.h"
#include "launch.cuh"
#include "pack.cuh"

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

// vec: offset % 4 == 0 and both pointers aligned to 4 elements.
template <class T>
__global__ void __launch_bounds__(kThreads)
dropout_apply_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, const DropoutParams d,
                     int64_t num_blocks, bool vec) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= num_blocks) return;
  const Philox4 r = philox_block((d.offset >> 2) + static_cast<uint64_t>(t), d.seed);
  const int64_t i0 = 4 * t - static_cast<int64_t>(d.offset & 3u);
  if (vec && i0 + 4 <= n) {
    float v[4];
    detail::load_pack(x + i0, v);
#pragma unroll
    for (int w = 0; w < 4; ++w) v[w] *= dropout_factor(r.v[w], d.threshold, d.scale);
    detail::store_pack(y + i0, v);
    return;
  }
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const int64_t i = i0 + w;
    if (i >= 0 && i < n) y[i] = from_float<T>(to_float(x[i]) * dropout_factor(r.v[w], d.threshold, d.scale));
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

template <class T>
void launch_apply(const T* x, T* y, int64_t n, const DropoutParams& d, void* stream) {
  if (n == 0) return;
  const int64_t blocks = philox_blocks(n, d.offset);
  const bool vec = (d.offset & 3u) == 0 && detail::pack_aligned<T, 4>(x) && detail::pack_aligned<T, 4>(y);
  dropout_apply_kernel<<<grid_for(blocks), kThreads, 0, detail::as_stream(stream)>>>(x, y, n, d, blocks, vec);
  check(cudaGetLastError(), "dropout_apply_kernel launch");
}

}  // namespace

void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d, void* stream) {
  launch_apply(x, y, n, d, stream);
}

void dropout_apply(const bf16* x, bf16* y, int64_t n, const DropoutParams& d, void* stream) {
  launch_apply(x, y, n, d, stream);
}

void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d, void* stream) {
  if (n == 0) return;
  const int64_t blocks = philox_blocks(n, d.offset);
  const bool vec = (d.offset & 3u) == 0 && (reinterpret_cast<uintptr_t>(mask) & 3u) == 0;
  dropout_mask_kernel<<<grid_for(blocks), kThreads, 0, detail::as_stream(stream)>>>(mask, n, d, blocks, vec);
  check(cudaGetLastError(), "dropout_mask_kernel launch");
}

}  // namespace fastopt::cuda

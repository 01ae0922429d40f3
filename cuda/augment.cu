/*
Batched augmentation (shift, flip, jitter, cutout), mixup, cutmix and the test-time views' mean
on CUDA (math and the Philox draws: fastopt/augment.h; the per-pixel expressions are the CPU's,
so outputs agree bit for bit; the per-plane ops: augment_planes.cu).

Bytes per element: 8 (x read once, y written once). For augment, a warp's 32 outputs read 32
consecutive (or, mirrored, reversed) source pixels of one row, so loads stay coalesced; mixup
walks the pairs (n, N - 1 - n) and writes both values from one read of the two. Soft targets:
4 B per entry written.

Launch shapes, 256 threads per block:
  augment: a grid-stride loop over the N * C planes (grid min(planes, 2^16)); per plane, thread 0
  draws the sample's parameters (two Philox blocks) into shared memory, then the block walks the
  H * W outputs one per thread per round, dividing by W in 32 bits when the plane allows.
  mixup: two grid-stride elementwise kernels (grid <= 2^16), over the ceil(N / 2) * F value
  pairs and over the N * K soft-target entries. cutmix: a grid-stride elementwise kernel over
  the N * C * H * W outputs (4 B read, from the sample or, inside the box, its partner) and
  mixup's soft-target kernel. tta_mean: one thread per output, the views summed in order in
  double (one rounding, as the CPU does); 4 B read per view and input.
*/
#include <algorithm>

#include "fastopt/augment.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using detail::as_stream;
using detail::check;
using detail::kThreads;

constexpr int64_t kMaxGrid = int64_t{1} << 16;

int grid_for(int64_t work) { return static_cast<int>(std::min(kMaxGrid, (work + kThreads - 1) / kThreads)); }

// i / d, in 32-bit arithmetic when `narrow` (every index fits, uniform per launch).
__device__ __forceinline__ int64_t div_index(int64_t i, int64_t d, bool narrow) {
  return narrow ? static_cast<int64_t>(static_cast<uint32_t>(i) / static_cast<uint32_t>(d)) : i / d;
}

__global__ void __launch_bounds__(kThreads)
augment_kernel(const float* __restrict__ x, float* __restrict__ y, const AugmentSpec s, bool narrow) {
  __shared__ SampleAug a;
  const int64_t planes = s.N * s.C, plane = s.H * s.W;
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    __syncthreads();  // the previous plane's readers of `a` are done
    if (threadIdx.x == 0) a = augment_sample(s, p / s.C);
    __syncthreads();
    const float* xp = x + p * plane;
    float* yp = y + p * plane;
    for (int64_t i = threadIdx.x; i < plane; i += kThreads) {
      const int64_t h = div_index(i, s.W, narrow);
      yp[i] = augment_pixel(xp, s, a, h, i - h * s.W);
    }
  }
}

// Thread i owns value j of the pair (n, N - 1 - n) and writes both samples' value j.
__global__ void __launch_bounds__(kThreads)
mixup_values(const float* __restrict__ x, float* __restrict__ y, const MixupParams p, bool narrow) {
  const int64_t total = (p.N + 1) / 2 * p.F;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t n = div_index(i, p.F, narrow);
    const int64_t a = i, b = i + (p.N - 1 - 2 * n) * p.F;  // value j of samples n and N - 1 - n
    const float xa = x[a], xb = x[b];
    y[a] = mixup_value(p, xa, xb);
    if (b != a) y[b] = mixup_value(p, xb, xa);
  }
}

template <class Index>
__global__ void __launch_bounds__(kThreads)
mixup_targets(const Index* __restrict__ labels, float* __restrict__ targets, const MixupParams p, bool narrow) {
  const int64_t total = p.N * p.K;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t n = div_index(i, p.K, narrow);
    const int64_t t = labels[n], u = labels[p.N - 1 - n];
    const bool ok = t >= 0 && t < p.K && u >= 0 && u < p.K;
    targets[i] = ok ? mixup_target(p, i - n * p.K, t, u) : NAN;
  }
}

__global__ void __launch_bounds__(kThreads)
cutmix_values(const float* __restrict__ x, float* __restrict__ y, const CutmixSpec s, bool narrow) {
  const int64_t plane = s.H * s.W, sample = s.C * plane, total = s.N * sample;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t n = div_index(i, sample, narrow), r = i - n * sample;
    const int64_t q = r - div_index(r, plane, narrow) * plane;  // offset in the plane
    const int64_t h = div_index(q, s.W, narrow);
    y[i] = in_box(s, h, q - h * s.W) ? x[i + (s.N - 1 - 2 * n) * sample] : x[i];
  }
}

__global__ void __launch_bounds__(kThreads)
tta_mean_kernel(const float* __restrict__ y, float* __restrict__ out, int64_t views, int64_t M) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < M;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    double sum = 0.0;
    for (int64_t v = 0; v < views; ++v) sum = dadd(sum, static_cast<double>(y[v * M + i]));
    out[i] = static_cast<float>(sum / static_cast<double>(views));
  }
}

template <class Index>
void launch_targets(const void* labels, float* targets, const MixupParams& p, cudaStream_t st) {
  if (p.N * p.K == 0) return;
  const bool narrow = p.N * p.K <= static_cast<int64_t>(UINT32_MAX);
  mixup_targets<<<grid_for(p.N * p.K), kThreads, 0, st>>>(static_cast<const Index*>(labels), targets, p, narrow);
  check(cudaGetLastError(), "mixup_targets launch");
}

void soft_targets(const void* labels, int index_bytes, float* targets, const MixupParams& p, cudaStream_t st) {
  if (index_bytes == 4) launch_targets<int32_t>(labels, targets, p, st);
  else launch_targets<int64_t>(labels, targets, p, st);
}

}  // namespace

void augment_batch(const float* x, float* y, const AugmentSpec& s, void* stream) {
  const int64_t planes = s.N * s.C, plane = s.H * s.W;
  if (planes == 0 || plane == 0) return;
  const bool narrow = plane <= static_cast<int64_t>(UINT32_MAX);
  augment_kernel<<<static_cast<int>(std::min(kMaxGrid, planes)), kThreads, 0, as_stream(stream)>>>(x, y, s, narrow);
  check(cudaGetLastError(), "augment_kernel launch");
}

void mixup(const float* x, const void* labels, int index_bytes, float* y, float* targets, const MixupParams& p,
           void* stream) {
  const cudaStream_t st = as_stream(stream);
  const int64_t pairs = (p.N + 1) / 2 * p.F;
  if (pairs > 0) {
    mixup_values<<<grid_for(pairs), kThreads, 0, st>>>(x, y, p, pairs <= static_cast<int64_t>(UINT32_MAX));
    check(cudaGetLastError(), "mixup_values launch");
  }
  soft_targets(labels, index_bytes, targets, p, st);
}

void cutmix(const float* x, const void* labels, int index_bytes, float* y, float* targets, const CutmixSpec& s,
            void* stream) {
  const cudaStream_t st = as_stream(stream);
  const int64_t total = s.N * s.C * s.H * s.W;
  if (total > 0) {
    cutmix_values<<<grid_for(total), kThreads, 0, st>>>(x, y, s, total <= static_cast<int64_t>(UINT32_MAX));
    check(cudaGetLastError(), "cutmix_values launch");
  }
  soft_targets(labels, index_bytes, targets, s.p, st);
}

void tta_mean(const float* y, float* out, int64_t views, int64_t M, void* stream) {
  if (M == 0) return;
  tta_mean_kernel<<<grid_for(M), kThreads, 0, as_stream(stream)>>>(y, out, views, M);
  check(cudaGetLastError(), "tta_mean_kernel launch");
}

}  // namespace fastopt::cuda

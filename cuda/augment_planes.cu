/*
The per-plane augmentations on CUDA: random-resized crop, rotation, PCA colour jitter,
alternating flip and the test-time views (math and Philox draws: fastopt/augment.h; each output
pixel is the op's pixel(), the CPU's expression, so the outputs agree bit for bit).

Bytes per output element: 4 written plus the taps read (1 for jitter, flip and views; up to 4
for the bilinear crop and rotation, mostly cache hits: neighbouring outputs share taps).

Launch shape, 256 threads per block: a grid-stride loop over the output planes (grid
min(planes, 2^16)); per plane, thread 0 computes the sample's parameter (Philox blocks and
double-precision polynomials, up to 10 tries for the crop) into shared memory, then the block
walks the OH * OW outputs one per thread per round, dividing by OW in 32 bits when the plane
allows. A warp's 32 outputs lie in one or two rows, so stores are coalesced.
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

template <class Op>
__global__ void __launch_bounds__(kThreads)
plane_kernel(const float* __restrict__ x, float* __restrict__ y, const Op op, const PlaneShape s, int64_t planes,
             bool narrow) {
  __shared__ typename Op::Param a;
  const int64_t in_plane = s.H * s.W, out_plane = s.OH * s.OW;
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    __syncthreads();  // the previous plane's readers of `a` are done
    if (threadIdx.x == 0) a = op.param(p);
    __syncthreads();
    const float* xp = x + op.source_plane(p) * in_plane;
    float* yp = y + p * out_plane;
    for (int64_t i = threadIdx.x; i < out_plane; i += kThreads) {
      const int64_t h = narrow ? static_cast<int64_t>(static_cast<uint32_t>(i) / static_cast<uint32_t>(s.OW))
                               : i / s.OW;
      yp[i] = op.pixel(xp, a, h, i - h * s.OW);
    }
  }
}

template <class Op>
void launch_planes(const Op& op, const PlaneShape& s, int64_t planes, const float* x, float* y, void* stream) {
  const int64_t out_plane = s.OH * s.OW;
  if (planes == 0 || out_plane == 0) return;
  const bool narrow = out_plane <= static_cast<int64_t>(UINT32_MAX);
  plane_kernel<Op><<<static_cast<int>(std::min(kMaxGrid, planes)), kThreads, 0, as_stream(stream)>>>(x, y, op, s,
                                                                                                      planes, narrow);
  check(cudaGetLastError(), "plane_kernel launch");
}

}  // namespace

void random_resized_crop(const float* x, float* y, const CropSpec& s, void* stream) {
  launch_planes(CropOp{s}, s.s, s.s.N * s.s.C, x, y, stream);
}

void random_rotation(const float* x, float* y, const RotateSpec& s, void* stream) {
  launch_planes(RotateOp{s}, s.s, s.s.N * s.s.C, x, y, stream);
}

void pca_jitter(const float* x, float* y, const PcaSpec& s, void* stream) {
  launch_planes(PcaOp{s}, s.s, s.s.N * s.s.C, x, y, stream);
}

void tta_views(const float* x, float* y, const ViewSpec& s, void* stream) {
  launch_planes(ViewOp{s}, s.s, s.views * s.s.N * s.s.C, x, y, stream);
}

void alternating_flip(const float* x, const void* indices, int index_bytes, float* y, const PlaneShape& s,
                      uint64_t seed, uint64_t epoch, void* stream) {
  if (index_bytes == 4)
    launch_planes(FlipOp<int32_t>{s, static_cast<const int32_t*>(indices), seed, epoch}, s, s.N * s.C, x, y, stream);
  else
    launch_planes(FlipOp<int64_t>{s, static_cast<const int64_t*>(indices), seed, epoch}, s, s.N * s.C, x, y, stream);
}

}  // namespace fastopt::cuda

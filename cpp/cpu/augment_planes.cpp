// The per-plane augmentations on the CPU: random-resized crop, rotation, PCA colour jitter,
// alternating flip and the test-time views (math and Philox draws: fastopt/augment.h).
//
// Traffic: x read once (crop and views: only the windows they sample), y written once.
//
// Shape: OpenMP over output planes; each plane computes its sample's parameter (a few Philox
// blocks and double-precision polynomials: negligible next to a plane), then every output pixel
// from the op's pixel(), the very expression the CUDA kernel evaluates, so the bits agree.
#include "fastopt/augment.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void random_resized_crop(const float* x, float* y, const CropSpec& s);
                     void random_rotation(const float* x, float* y, const RotateSpec& s);
                     void pca_jitter(const float* x, float* y, const PcaSpec& s);
                     void tta_views(const float* x, float* y, const ViewSpec& s);
                     void alternating_flip(const float* x, const void* indices, int index_bytes, float* y,
                                           const PlaneShape& s, uint64_t seed, uint64_t epoch);)

namespace FASTOPT_ISA {
namespace {

template <class Op>
void plane_map(const Op& shared_op, const PlaneShape& s, int64_t planes, const float* x, float* y) {
  const int64_t in_plane = s.H * s.W, out_plane = s.OH * s.OW;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const Op op = shared_op;  // a local copy: stores to y cannot alias its fields, so they stay in registers
    const typename Op::Param a = op.param(p);
    const float* __restrict xp = x + op.source_plane(p) * in_plane;
    float* __restrict yp = y + p * out_plane;
    for (int64_t h = 0; h < s.OH; ++h)
      for (int64_t w = 0; w < s.OW; ++w) yp[h * s.OW + w] = op.pixel(xp, a, h, w);
  }
}

template <class Index>
void flip_impl(const float* x, const Index* indices, float* y, const PlaneShape& s, uint64_t seed, uint64_t epoch) {
  plane_map(FlipOp<Index>{s, indices, seed, epoch}, s, s.N * s.C, x, y);
}

}  // namespace

void random_resized_crop(const float* x, float* y, const CropSpec& s) {
  plane_map(CropOp{s}, s.s, s.s.N * s.s.C, x, y);
}

void random_rotation(const float* x, float* y, const RotateSpec& s) {
  plane_map(RotateOp{s}, s.s, s.s.N * s.s.C, x, y);
}

void pca_jitter(const float* x, float* y, const PcaSpec& s) { plane_map(PcaOp{s}, s.s, s.s.N * s.s.C, x, y); }

void tta_views(const float* x, float* y, const ViewSpec& s) {
  plane_map(ViewOp{s}, s.s, s.views * s.s.N * s.s.C, x, y);
}

void alternating_flip(const float* x, const void* indices, int index_bytes, float* y, const PlaneShape& s,
                      uint64_t seed, uint64_t epoch) {
  if (index_bytes == 4) flip_impl(x, static_cast<const int32_t*>(indices), y, s, seed, epoch);
  else flip_impl(x, static_cast<const int64_t*>(indices), y, s, seed, epoch);
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void random_resized_crop(const float* x, float* y, const CropSpec& s) {
  FASTOPT_CPU_DISPATCH(random_resized_crop(x, y, s))
}
void random_rotation(const float* x, float* y, const RotateSpec& s) { FASTOPT_CPU_DISPATCH(random_rotation(x, y, s)) }
void pca_jitter(const float* x, float* y, const PcaSpec& s) { FASTOPT_CPU_DISPATCH(pca_jitter(x, y, s)) }
void tta_views(const float* x, float* y, const ViewSpec& s) { FASTOPT_CPU_DISPATCH(tta_views(x, y, s)) }
void alternating_flip(const float* x, const void* indices, int index_bytes, float* y, const PlaneShape& s,
                      uint64_t seed, uint64_t epoch) {
  FASTOPT_CPU_DISPATCH(alternating_flip(x, indices, index_bytes, y, s, seed, epoch))
}
#endif

}  // namespace fastopt::cpu

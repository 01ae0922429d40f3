// Batched augmentation (shift, flip, brightness/contrast jitter, cutout), mixup, cutmix and the
// test-time views' mean on the CPU (math and the Philox draws: fastopt/augment.h; the per-plane
// ops: augment_planes.cpp).
//
// Traffic: x read once, y written once (8 B per element), mixup included: it walks the pairs
// (n, N - 1 - n) and writes both samples from one read of the two; plus the (N, K) soft targets.
//
// Shape: OpenMP over (sample, channel) planes; each plane recomputes its sample's two Philox
// blocks (negligible next to a plane) and walks its output rows as three runs: fill where the
// shifted source column falls outside, a copy (forward or mirrored) in the middle, fill again;
// then the cutout columns of the row are zeroed. The runs hold the same per-pixel expressions as
// augment_pixel(), so the bits equal the GPU's. Mixup runs OpenMP over sample pairs; cutmix over
// planes, each row a copy of its own sample with the box's columns from the partner; tta_mean
// over outputs, the views summed in order in double (one rounding, as the GPU does).
#include <algorithm>

#include "fastopt/augment.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void augment_batch(const float* x, float* y, const AugmentSpec& s);
                     void mixup(const float* x, const void* labels, int index_bytes, float* y, float* targets,
                                const MixupParams& p);
                     void cutmix(const float* x, const void* labels, int index_bytes, float* y, float* targets,
                                 const CutmixSpec& s);
                     void tta_mean(const float* y, float* out, int64_t views, int64_t M);)

namespace FASTOPT_ISA {
namespace {

void augment_plane(const float* __restrict x, float* __restrict y, const AugmentSpec& s, const SampleAug& a) {
  const int64_t H = s.H, W = s.W;
  const float fill = augment_jitter(a, s.fill);
  // Output columns [w0, w1) read source columns w + dx inside the image.
  const int64_t w0 = std::clamp<int64_t>(-a.dx, 0, W), w1 = std::clamp<int64_t>(W - a.dx, w0, W);
  for (int64_t h = 0; h < H; ++h) {
    float* __restrict yr = y + h * W;
    const int64_t sh = h + a.dy;
    if (sh < 0 || sh >= H) {
      for (int64_t w = 0; w < W; ++w) yr[w] = fill;
    } else {
      const float* __restrict xr = x + sh * W;
      for (int64_t w = 0; w < w0; ++w) yr[w] = fill;
      if (a.mirror) {
        const float* __restrict xm = xr + (W - 1 - a.dx);  // source column W - 1 - (w + dx)
        for (int64_t w = w0; w < w1; ++w) yr[w] = augment_jitter(a, xm[-w]);
      } else {
        const float* __restrict xs = xr + a.dx;
        for (int64_t w = w0; w < w1; ++w) yr[w] = augment_jitter(a, xs[w]);
      }
      for (int64_t w = w1; w < W; ++w) yr[w] = fill;
    }
    if (h >= a.y0 && h < a.y0 + s.cutout) {
      const int64_t c1 = std::clamp<int64_t>(a.x0 + s.cutout, 0, W);
      for (int64_t w = std::clamp<int64_t>(a.x0, 0, W); w < c1; ++w) yr[w] = s.fill;
    }
  }
}

// Samples n and N - 1 - n are each other's partners: one pass over the pair reads both once.
template <class Index>
void mixup_impl(const float* x, const Index* labels, float* y, float* targets, const MixupParams& p) {
  const int64_t N = p.N, F = p.F, K = p.K;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < (N + 1) / 2; ++n) {
    const int64_t m = N - 1 - n;
    const float* __restrict xn = x + n * F;
    const float* __restrict xm = x + m * F;
    float* __restrict yn = y + n * F;
    const int64_t t = labels[n], u = labels[m];
    float* __restrict rn = targets + n * K;
    if (m == n) {  // the middle sample of an odd batch is its own partner
      for (int64_t j = 0; j < F; ++j) yn[j] = mixup_value(p, xn[j], xn[j]);
      for (int64_t k = 0; k < K; ++k) rn[k] = mixup_target(p, k, t, t);
      continue;
    }
    float* __restrict ym = y + m * F;
    for (int64_t j = 0; j < F; ++j) {
      const float a = xn[j], b = xm[j];
      yn[j] = mixup_value(p, a, b);
      ym[j] = mixup_value(p, b, a);
    }
    float* __restrict rm = targets + m * K;
    for (int64_t k = 0; k < K; ++k) {
      rn[k] = mixup_target(p, k, t, u);
      rm[k] = mixup_target(p, k, u, t);
    }
  }
}

template <class Index>
void cutmix_impl(const float* x, const Index* labels, float* y, float* targets, const CutmixSpec& s) {
  const int64_t plane = s.H * s.W, W = s.W, N = s.N, K = s.p.K;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N * s.C; ++i) {
    const int64_t n = i / s.C;
    const float* __restrict xn = x + i * plane;
    const float* __restrict xm = x + ((N - 1 - n) * s.C + i % s.C) * plane;  // the partner's same channel
    float* __restrict yn = y + i * plane;
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t w = 0; w < W; ++w) yn[h * W + w] = in_box(s, h, w) ? xm[h * W + w] : xn[h * W + w];
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) targets[n * K + k] = mixup_target(s.p, k, labels[n], labels[N - 1 - n]);
}

}  // namespace

void cutmix(const float* x, const void* labels, int index_bytes, float* y, float* targets, const CutmixSpec& s) {
  if (index_bytes == 4) cutmix_impl(x, static_cast<const int32_t*>(labels), y, targets, s);
  else cutmix_impl(x, static_cast<const int64_t*>(labels), y, targets, s);
}

void tta_mean(const float* y, float* out, int64_t views, int64_t M) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    double sum = 0.0;
    for (int64_t v = 0; v < views; ++v) sum += y[v * M + i];
    out[i] = static_cast<float>(sum / static_cast<double>(views));
  }
}

void augment_batch(const float* x, float* y, const AugmentSpec& s) {
  const int64_t planes = s.N * s.C, plane = s.H * s.W;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < planes; ++i) augment_plane(x + i * plane, y + i * plane, s, augment_sample(s, i / s.C));
}

void mixup(const float* x, const void* labels, int index_bytes, float* y, float* targets, const MixupParams& p) {
  if (index_bytes == 4) mixup_impl(x, static_cast<const int32_t*>(labels), y, targets, p);
  else mixup_impl(x, static_cast<const int64_t*>(labels), y, targets, p);
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void augment_batch(const float* x, float* y, const AugmentSpec& s) { FASTOPT_CPU_DISPATCH(augment_batch(x, y, s)) }
void mixup(const float* x, const void* labels, int index_bytes, float* y, float* targets, const MixupParams& p) {
  FASTOPT_CPU_DISPATCH(mixup(x, labels, index_bytes, y, targets, p))
}
void cutmix(const float* x, const void* labels, int index_bytes, float* y, float* targets, const CutmixSpec& s) {
  FASTOPT_CPU_DISPATCH(cutmix(x, labels, index_bytes, y, targets, s))
}
void tta_mean(const float* y, float* out, int64_t views, int64_t M) { FASTOPT_CPU_DISPATCH(tta_mean(y, out, views, M)) }
#endif

}  // namespace fastopt::cpu

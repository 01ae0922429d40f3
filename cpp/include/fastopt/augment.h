// Batched data augmentation (float32 NCHW) and mixup, the random draws from Philox4x32-10.
//
// augment_batch: every sample n of step `step` draws 8 words under the 64-bit seed, key
// (k0, k1) = (low, high 32 bits of seed): draw d (0..7) is word d % 4 of the block with counter
//   (d / 4, n, low 32 bits of step, high 32 bits of step)          (n < 2^32)
// and uses them whatever options are on, so turning one augmentation on never changes another's
// draws, and the draws depend on (seed, step, n) only (never on threads, ISA or device):
//   d = 0, 1: dy, dx = uniform_int(w, 2 S + 1) - S, S = max_shift
//   d = 2:    mirror iff the top bit of w is set (and flip is on)
//   d = 3, 4: r_b, r_c = uniform_pm1(w);  b = B * r_b,  c = 1 + C * r_c   (B, C: brightness, contrast)
//   d = 5, 6: cy = uniform_int(w, H), cx = uniform_int(w, W)
// with uniform_int(w, m) = (uint64(w) * m) >> 32, exact in [0, m), and uniform_pm1(w) =
// (w >> 8) * 2^-23 - 1 in [-1, 1): the top 24 bits of w, so that every step is exact in float32.
// Output pixel (h, w) of a channel, with sh = h + dy, sw = w + dx:
//   v = x[sh, mirror ? W - 1 - sw : sw] if (sh, sw) is inside the image, else F   (pad, then crop)
//   y = c * v + b   (only when B > 0 or C > 0; each product and sum rounded to float32 on its
//                    own, never fused, so the CPU and the GPU agree bit for bit)
//   y = F inside the cutout square, rows [cy - L/2, cy - L/2 + L) x cols [cx - L/2, ...), L = cutout
// F = fill, the value of a blank pixel (0 by default; for standardized data -mean / std).
// A draw's counter has c0 in {0, 1} and dropout's (philox.h) has c2 = c3 = 0, so the two streams
// share blocks only for step 0 against dropout offsets >= 2^34 words; use distinct seeds anyway.
//
// mixup: y[n] = lam x[n] + (1 - lam) x[N - 1 - n] (the batch flipped, as timm does), soft target
// row n = lam onehot(label[n]) + (1 - lam) onehot(label[N - 1 - n]), exactly one-hot when the two
// labels agree. A label outside [0, num_classes) makes its row (and its partner's) NaN on the GPU;
// the CPU binding raises first.
#pragma once
#include <cstdint>

#include "fastopt/common.h"
#include "fastopt/philox.h"

namespace fastopt {

// Separately rounded float32 product and sum: nvcc would otherwise contract c * v + b into one
// fma, while the CPU kernels are built with -ffp-contract=off.
FASTOPT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

FASTOPT_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

struct AugmentSpec {
  int64_t N, C, H, W;
  int64_t max_shift, cutout;  // in [0, 2^30]
  bool flip;
  float brightness, contrast;  // B >= 0, C in [0, 1]
  float fill;                  // blank pixels: translated in, cut out
  uint64_t seed, step;
};

struct SampleAug {
  int64_t dy, dx;
  int64_t y0, x0;  // the cutout's top-left corner (may lie outside the image)
  bool mirror;
  bool jitter;     // B > 0 or C > 0
  float scale, bias;
};

FASTOPT_HD int64_t uniform_int(uint32_t w, int64_t m) {
  return static_cast<int64_t>((static_cast<uint64_t>(w) * static_cast<uint64_t>(m)) >> 32);
}

FASTOPT_HD float uniform_pm1(uint32_t w) { return static_cast<float>(w >> 8) * 0x1p-23f - 1.0f; }

FASTOPT_HD SampleAug augment_sample(const AugmentSpec& s, int64_t n) {
  const uint32_t k0 = static_cast<uint32_t>(s.seed), k1 = static_cast<uint32_t>(s.seed >> 32);
  const uint32_t t0 = static_cast<uint32_t>(s.step), t1 = static_cast<uint32_t>(s.step >> 32);
  const Philox4 a = philox4x32_10(0u, static_cast<uint32_t>(n), t0, t1, k0, k1);
  const Philox4 b = philox4x32_10(1u, static_cast<uint32_t>(n), t0, t1, k0, k1);
  SampleAug r;
  r.dy = uniform_int(a.v[0], 2 * s.max_shift + 1) - s.max_shift;
  r.dx = uniform_int(a.v[1], 2 * s.max_shift + 1) - s.max_shift;
  r.mirror = s.flip && (a.v[2] >> 31) != 0;
  r.bias = mul_rn(s.brightness, uniform_pm1(a.v[3]));
  r.scale = add_rn(1.0f, mul_rn(s.contrast, uniform_pm1(b.v[0])));
  r.jitter = s.brightness > 0.0f || s.contrast > 0.0f;
  r.y0 = uniform_int(b.v[1], s.H) - s.cutout / 2;
  r.x0 = uniform_int(b.v[2], s.W) - s.cutout / 2;
  return r;
}

FASTOPT_HD float augment_jitter(const SampleAug& a, float v) {
  return a.jitter ? add_rn(mul_rn(a.scale, v), a.bias) : v;
}

FASTOPT_HD bool in_cutout(const SampleAug& a, int64_t cutout, int64_t h, int64_t w) {
  return h >= a.y0 && h < a.y0 + cutout && w >= a.x0 && w < a.x0 + cutout;
}

// Output pixel (h, w) of one channel; x is that channel's source plane (H x W).
FASTOPT_HD float augment_pixel(const float* x, const AugmentSpec& s, const SampleAug& a, int64_t h, int64_t w) {
  if (in_cutout(a, s.cutout, h, w)) return s.fill;
  const int64_t sh = h + a.dy, sw = w + a.dx;
  const bool inside = sh >= 0 && sh < s.H && sw >= 0 && sw < s.W;
  return augment_jitter(a, inside ? x[sh * s.W + (a.mirror ? s.W - 1 - sw : sw)] : s.fill);
}

struct MixupParams {
  int64_t N, F, K;  // samples, values per sample, classes
  float lam, rest;  // lam and 1 - lam, each rounded once to float32
};

FASTOPT_HD float mixup_value(const MixupParams& p, float x, float partner) {
  return add_rn(mul_rn(p.lam, x), mul_rn(p.rest, partner));
}

// Soft-target entry k of a row whose labels are t (own) and u (partner's), both in range.
FASTOPT_HD float mixup_target(const MixupParams& p, int64_t k, int64_t t, int64_t u) {
  if (t == u) return k == t ? 1.0f : 0.0f;
  return k == t ? p.lam : (k == u ? p.rest : 0.0f);
}

namespace cpu {
// y (N, C, H, W) from x; x and y do not overlap.
void augment_batch(const float* x, float* y, const AugmentSpec& s);
// labels: int32 (index_bytes 4) or int64 (8), in [0, K). y (N, F), targets (N, K).
void mixup(const float* x, const void* labels, int index_bytes, float* y, float* targets, const MixupParams& p);
}  // namespace cpu

namespace cuda {
// Same contracts on device pointers, queued on `stream`.
void augment_batch(const float* x, float* y, const AugmentSpec& s, void* stream);
void mixup(const float* x, const void* labels, int index_bytes, float* y, float* targets, const MixupParams& p,
           void* stream);
}  // namespace cuda

}  // namespace fastopt

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
//
// The draws of the other augmentations (one Philox block each, counter (c0, n, step lo, step hi)
// with c0 = the op's stream below, key as above; u(w) = w * 2^-32 in [0, 1), exact in double):
//   random_resized_crop, try t = 0 .. 9, c0 = 2 + t (kStreamCrop + t):
//     w0: area = H W (s_lo + (s_hi - s_lo) u(w0));  w1: aspect = exp(l_lo + (l_hi - l_lo) u(w1)),
//     l = log of the ratio bounds;  w = rint(sqrt(area aspect)), h = rint(sqrt(area / aspect));
//     if 0 < w <= W and 0 < h <= H: top = uniform_int(w2, H - h + 1), left = uniform_int(w3, W - w + 1)
//     (torchvision's RandomResizedCrop.get_params; rint rounds half to even like Python's round).
//     No fit in 10 tries: torchvision's fallback, the center crop of the whole image clamped to the
//     ratio range (ratio below r_lo: w = W, h = rint(W / r_lo); above r_hi: h = H, w = rint(H r_hi);
//     sizes at least 1), top = (H - h) div 2, left = (W - w) div 2.
//   random_rotation, c0 = 12: angle = lo + (hi - lo) u(w0) degrees (counter-clockwise).
//   pca_jitter, c0 = 13: Box-Muller pairs (w0, w1) -> z0, z1 and (w2, w3) -> z2, z3:
//     r = sqrt(-2 log((w + 1) 2^-32)) (so |z| <= 6.67), z = r cos(2 pi u(w')), r sin(2 pi u(w')).
//   cutmix, c0 = 14, n = 0 (one box per batch, as timm): cy = uniform_int(w0, H), cx = uniform_int(w1, W).
//   alternating_flip, counter (15, index lo, index hi, 1), the index being the sample's index in the
//     data set (not in the batch, and no step: the decision depends on the epoch's parity only):
//     flip iff (epoch + top bit of w0) is odd.
// exp, log, sin and cos here are the polynomials below in double precision, every product and sum
// rounded on its own (dmul, dadd), so the CPU, the GPU and the NumPy reference draw identical
// parameters; they agree with the C library's to a few units in the last place.
// Every op has its own c0, so one seed serves them all. Dropout's stream (philox.h: c2 = c3 = 0)
// meets these counters only at step 0, where sample n's block c0 is dropout's block c0 + n 2^32
// (word offset 4 c0 at n = 0), and the optimizer's rounding stream (optim_rules.h) may meet them
// too: key those with other seeds.
//
// mixup: y[n] = lam x[n] + (1 - lam) x[N - 1 - n] (the batch flipped, as timm does), soft target
// row n = lam onehot(label[n]) + (1 - lam) onehot(label[N - 1 - n]), exactly one-hot when the two
// labels agree. A label outside [0, num_classes) makes its row (and its partner's) NaN on the GPU;
// the CPU binding raises first.
#pragma once
#include <cmath>
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

// ------------------------------------------------------------------ the other augmentations

constexpr uint32_t kStreamCrop = 2, kCropTries = 10, kStreamRotate = 12, kStreamPca = 13, kStreamCutmix = 14,
                   kStreamFlip = 15;

// The parameters' double-precision math, unfused like mul_rn and add_rn; sqrt and the divisions
// are IEEE-rounded on both sides.
FASTOPT_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

FASTOPT_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

FASTOPT_HD double dsqrt(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

FASTOPT_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Horner's rule over c[0] + c[1] t + ... + c[K - 1] t^(K - 1), unfused.
template <int K>
FASTOPT_HD double horner(const double (&c)[K], double t) {
  double p = c[K - 1];
  for (int k = K - 2; k >= 0; --k) p = dadd(dmul(p, t), c[k]);
  return p;
}

constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;  // fdlibm's split

// e^x for |x| < 700: x = k ln2 + r, |r| <= ln2 / 2, and Taylor to r^13 (next term < 4e-18).
FASTOPT_HD double exp_d(double x) {
  constexpr double c[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
                            1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800};
  const double k = ::rint(dmul(x, 1.4426950408889634));
  const double r = dadd(dadd(x, -dmul(k, kLn2Hi)), -dmul(k, kLn2Lo));
  return ::ldexp(horner(c, r), static_cast<int>(k));
}

// log x for a positive normal x: x = m 2^e, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s) with
// s = (m - 1) / (m + 1), |s| < 0.172, the series to s^21 (next term < 1e-18).
FASTOPT_HD double log_d(double x) {
  constexpr double c[11] = {2.0, 2.0 / 3, 2.0 / 5, 2.0 / 7, 2.0 / 9, 2.0 / 11, 2.0 / 13, 2.0 / 15, 2.0 / 17, 2.0 / 19,
                            2.0 / 21};
  int e;
  double m = ::frexp(x, &e);  // m in [1/2, 1)
  if (m < 0.70710678118654752) {
    m = dmul(m, 2.0);
    e -= 1;
  }
  const double s = (m - 1.0) / (m + 1.0);  // m - 1 is exact; one IEEE division
  const double series = dmul(s, horner(c, dmul(s, s)));
  return dadd(dmul(e, kLn2Hi), dadd(dmul(e, kLn2Lo), series));
}

// sin and cos of 2 pi t (t in turns, |t| < 2^40): t = q / 4 + g with q = rint(4 t), |g| <= 1/8,
// so phi = 2 pi g is in [-pi/4, pi/4], Taylor to phi^17 and phi^18; then the quadrant q mod 4.
FASTOPT_HD void sincos_turns(double t, double* sin_out, double* cos_out) {
  constexpr double cs[9] = {1.0, -1.0 / 6, 1.0 / 120, -1.0 / 5040, 1.0 / 362880, -1.0 / 39916800,
                            1.0 / 6227020800, -1.0 / 1307674368000, 1.0 / 355687428096000};
  constexpr double cc[10] = {1.0, -1.0 / 2, 1.0 / 24, -1.0 / 720, 1.0 / 40320, -1.0 / 3628800, 1.0 / 479001600,
                             -1.0 / 87178291200, 1.0 / 20922789888000, -1.0 / 6402373705728000};
  const double t4 = dmul(t, 4.0), q = ::rint(t4);
  const double phi = dmul(t4 - q, 1.5707963267948966);  // t4 - q: exact
  const double p2 = dmul(phi, phi);
  const double s = dmul(phi, horner(cs, p2)), c = horner(cc, p2);
  switch (static_cast<int64_t>(q) & 3) {
    case 0: *sin_out = s; *cos_out = c; break;
    case 1: *sin_out = c; *cos_out = -s; break;
    case 2: *sin_out = -s; *cos_out = -c; break;
    default: *sin_out = -c; *cos_out = s; break;
  }
}

FASTOPT_HD double unit_d(uint32_t w) { return static_cast<double>(w) * 0x1p-32; }

FASTOPT_HD Philox4 sample_block(uint32_t stream, int64_t n, uint64_t seed, uint64_t step) {
  return philox4x32_10(stream, static_cast<uint32_t>(n), static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Bilinear interpolation of the four taps around (sy, sx), torch's form and order:
// h0 (w0 v00 + w1 v01) + h1 (w0 v10 + w1 v11) with h1 = sy - y0, h0 = 1 - h1 (likewise w).
FASTOPT_HD float bilinear(float ly, float lx, float v00, float v01, float v10, float v11) {
  const float hy = add_rn(1.0f, -ly), hx = add_rn(1.0f, -lx);
  return add_rn(mul_rn(hy, add_rn(mul_rn(hx, v00), mul_rn(lx, v01))),
                mul_rn(ly, add_rn(mul_rn(hx, v10), mul_rn(lx, v11))));
}

// Planes (N, C, H, W) -> (N, C, OH, OW): every op below gives, per output plane p (sample p / C),
// its input plane (`source_plane(p)`), a parameter (`Param param(p)`) and then each output pixel
// from these (`pixel`), so the CPU and the CUDA kernels are one loop nest over the same expressions.
struct PlaneShape {
  int64_t N, C, H, W, OH, OW;
};

struct CropSpec {
  PlaneShape s;
  double scale_lo, scale_hi, ratio_lo, ratio_hi, log_lo, log_hi;  // log_* = log_d(ratio_*)
  uint64_t seed, step;
};

struct CropBox {
  int64_t top, left, h, w;
  float ry, rx;  // h / OH, w / OW in float32, torch's source-index scale
};

FASTOPT_HD CropBox crop_box(const CropSpec& c, int64_t n) {
  const int64_t H = c.s.H, W = c.s.W;
  const double area = static_cast<double>(H) * static_cast<double>(W);
  CropBox b{0, 0, H, W, 0.0f, 0.0f};
  bool found = false;
  for (uint32_t t = 0; t < kCropTries && !found; ++t) {
    const Philox4 r = sample_block(kStreamCrop + t, n, c.seed, c.step);
    const double target = dmul(area, dadd(c.scale_lo, dmul(dadd(c.scale_hi, -c.scale_lo), unit_d(r.v[0]))));
    const double aspect = exp_d(dadd(c.log_lo, dmul(dadd(c.log_hi, -c.log_lo), unit_d(r.v[1]))));
    const double w = ::rint(dsqrt(dmul(target, aspect))), h = ::rint(dsqrt(target / aspect));
    if (w > 0.0 && w <= static_cast<double>(W) && h > 0.0 && h <= static_cast<double>(H)) {
      b.h = static_cast<int64_t>(h);
      b.w = static_cast<int64_t>(w);
      b.top = uniform_int(r.v[2], H - b.h + 1);
      b.left = uniform_int(r.v[3], W - b.w + 1);
      found = true;
    }
  }
  if (!found) {
    const double in_ratio = static_cast<double>(W) / static_cast<double>(H);
    if (in_ratio < c.ratio_lo) b.h = static_cast<int64_t>(::rint(static_cast<double>(W) / c.ratio_lo));
    else if (in_ratio > c.ratio_hi) b.w = static_cast<int64_t>(::rint(dmul(static_cast<double>(H), c.ratio_hi)));
    b.h = b.h < 1 ? 1 : b.h;
    b.w = b.w < 1 ? 1 : b.w;
    b.top = (H - b.h) / 2;
    b.left = (W - b.w) / 2;
  }
  b.ry = div_rn(static_cast<float>(b.h), static_cast<float>(c.s.OH));
  b.rx = div_rn(static_cast<float>(b.w), static_cast<float>(c.s.OW));
  return b;
}

// torch's align_corners=False source index, clamped at 0 below and at the last row above.
FASTOPT_HD void source_index(float ratio, int64_t o, int64_t size, int64_t* i0, int64_t* i1, float* frac) {
  float v = add_rn(mul_rn(add_rn(static_cast<float>(o), 0.5f), ratio), -0.5f);
  v = v < 0.0f ? 0.0f : v;
  *i0 = static_cast<int64_t>(v);
  *i1 = *i0 + (*i0 < size - 1 ? 1 : 0);
  *frac = add_rn(v, -static_cast<float>(*i0));
}

struct CropOp {
  CropSpec c;
  using Param = CropBox;
  FASTOPT_HD int64_t source_plane(int64_t p) const { return p; }
  FASTOPT_HD Param param(int64_t p) const { return crop_box(c, p / c.s.C); }
  FASTOPT_HD float pixel(const float* x, const CropBox& b, int64_t oy, int64_t ox) const {
    int64_t y0, y1, x0, x1;
    float ly, lx;
    source_index(b.ry, oy, b.h, &y0, &y1, &ly);
    source_index(b.rx, ox, b.w, &x0, &x1, &lx);
    const float* r0 = x + (b.top + y0) * c.s.W + b.left;
    const float* r1 = x + (b.top + y1) * c.s.W + b.left;
    return bilinear(ly, lx, r0[x0], r0[x1], r1[x0], r1[x1]);
  }
};

struct RotateSpec {
  PlaneShape s;  // OH = H, OW = W
  double lo, hi;  // degrees
  float fill;
  uint64_t seed, step;
};

struct Rotation {
  float cos, sin;
};

struct RotateOp {
  RotateSpec r;
  using Param = Rotation;
  FASTOPT_HD int64_t source_plane(int64_t p) const { return p; }
  FASTOPT_HD Param param(int64_t p) const {
    const Philox4 w = sample_block(kStreamRotate, p / r.s.C, r.seed, r.step);
    const double degrees = dadd(r.lo, dmul(dadd(r.hi, -r.lo), unit_d(w.v[0])));
    double s, c;
    sincos_turns(degrees / 360.0, &s, &c);
    return Rotation{static_cast<float>(c), static_cast<float>(s)};
  }
  FASTOPT_HD float tap(const float* x, int64_t y, int64_t xx) const {
    return y >= 0 && y < r.s.H && xx >= 0 && xx < r.s.W ? x[y * r.s.W + xx] : r.fill;
  }
  // Source (sx, sy) = center + R (o - center), center ((W - 1) / 2, (H - 1) / 2), y pointing down:
  // torchvision's rotate; the image extended by `fill` beyond its border.
  FASTOPT_HD float pixel(const float* x, const Rotation& q, int64_t oy, int64_t ox) const {
    const float cy = 0.5f * static_cast<float>(r.s.H - 1), cx = 0.5f * static_cast<float>(r.s.W - 1);
    const float dy = add_rn(static_cast<float>(oy), -cy), dx = add_rn(static_cast<float>(ox), -cx);
    const float sx = add_rn(cx, add_rn(mul_rn(q.cos, dx), -mul_rn(q.sin, dy)));
    const float sy = add_rn(cy, add_rn(mul_rn(q.sin, dx), mul_rn(q.cos, dy)));
    const float fy = ::floorf(sy), fx = ::floorf(sx);
    if (!(fy >= -1.0f && fy < static_cast<float>(r.s.H) && fx >= -1.0f && fx < static_cast<float>(r.s.W)))
      return r.fill;  // all four taps outside (NaN-free: the coordinates are bounded)
    const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
    return bilinear(add_rn(sy, -fy), add_rn(sx, -fx), tap(x, y0, x0), tap(x, y0, x0 + 1), tap(x, y0 + 1, x0),
                    tap(x, y0 + 1, x0 + 1));
  }
};

constexpr int kPcaMaxChannels = 4;  // one Philox block: two Box-Muller pairs

struct PcaSpec {
  PlaneShape s;
  double vec[kPcaMaxChannels][kPcaMaxChannels];  // vec[c][k]: component c of eigenvector k
  double val[kPcaMaxChannels];                   // eigenvalues
  double sigma;
  uint64_t seed, step;
};

// Box-Muller: z = r (cos, sin)(2 pi u), r = sqrt(-2 log u'), from the words (a, b).
FASTOPT_HD void normal_pair(uint32_t a, uint32_t b, double* z0, double* z1) {
  const double r = dsqrt(-2.0 * log_d(dmul(static_cast<double>(a) + 1.0, 0x1p-32)));
  double s, c;
  sincos_turns(unit_d(b), &s, &c);
  *z0 = dmul(r, c);
  *z1 = dmul(r, s);
}

struct PcaOp {
  PcaSpec q;
  using Param = float;
  FASTOPT_HD int64_t source_plane(int64_t p) const { return p; }
  // AlexNet's shift of channel c: sum_k vec[c][k] (alpha_k val[k]), alpha_k = sigma z_k, in k order.
  FASTOPT_HD Param param(int64_t p) const {
    const Philox4 w = sample_block(kStreamPca, p / q.s.C, q.seed, q.step);
    double z[4];
    normal_pair(w.v[0], w.v[1], &z[0], &z[1]);
    normal_pair(w.v[2], w.v[3], &z[2], &z[3]);
    const int64_t c = p % q.s.C;
    double shift = 0.0;
    for (int64_t k = 0; k < q.s.C; ++k) shift = dadd(shift, dmul(q.vec[c][k], dmul(dmul(q.sigma, z[k]), q.val[k])));
    return static_cast<float>(shift);
  }
  FASTOPT_HD float pixel(const float* x, float shift, int64_t h, int64_t w) const {
    return add_rn(x[h * q.s.W + w], shift);
  }
};

// airbench's alternating flip: the sample's own bit, flipped every other epoch.
FASTOPT_HD bool alternating_flip_of(uint64_t seed, uint64_t epoch, int64_t index) {
  const uint64_t i = static_cast<uint64_t>(index);
  const Philox4 w = philox4x32_10(kStreamFlip, static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), 1u,
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return (((w.v[0] >> 31) + epoch) & 1u) != 0;
}

template <class Index>
struct FlipOp {
  PlaneShape s;  // OH = H, OW = W
  const Index* indices;
  uint64_t seed, epoch;
  using Param = bool;
  FASTOPT_HD int64_t source_plane(int64_t p) const { return p; }
  FASTOPT_HD Param param(int64_t p) const { return alternating_flip_of(seed, epoch, indices[p / s.C]); }
  FASTOPT_HD float pixel(const float* x, bool mirror, int64_t h, int64_t w) const {
    return x[h * s.W + (mirror ? s.W - 1 - w : w)];
  }
};

constexpr int kMaxViews = 10;

// Test-time views: output plane p = (v N + n) C + c is the OH x OW window of input plane n C + c
// at (top[v], left[v]) (may reach outside: fill), mirrored when mirror[v].
struct ViewSpec {
  PlaneShape s;
  int views;
  int64_t top[kMaxViews], left[kMaxViews];
  bool mirror[kMaxViews];
  float fill;
};

struct ViewOp {
  ViewSpec v;
  using Param = int;
  FASTOPT_HD Param param(int64_t p) const { return static_cast<int>(p / (v.s.N * v.s.C)); }
  FASTOPT_HD int64_t source_plane(int64_t p) const { return p % (v.s.N * v.s.C); }
  FASTOPT_HD float pixel(const float* x, int view, int64_t h, int64_t w) const {
    const int64_t sy = v.top[view] + h, sx = v.left[view] + (v.mirror[view] ? v.s.OW - 1 - w : w);
    return sy >= 0 && sy < v.s.H && sx >= 0 && sx < v.s.W ? x[sy * v.s.W + sx] : v.fill;
  }
};

struct CutmixSpec {
  int64_t N, C, H, W;
  int64_t y0, y1, x0, x1;  // the box [y0, y1) x [x0, x1), the same for every sample
  MixupParams p;           // lam = 1 - box area / (H W), rest = box area / (H W)
};

// timm's rand_bbox and its area-corrected lambda; (cy, cx) from block (14, 0, step).
inline void cutmix_box(CutmixSpec& s, double lam, uint64_t seed, uint64_t step) {
  const Philox4 w = sample_block(kStreamCutmix, 0, seed, step);
  const double cut = std::sqrt(1.0 - lam);
  const int64_t ch = static_cast<int64_t>(static_cast<double>(s.H) * cut);
  const int64_t cw = static_cast<int64_t>(static_cast<double>(s.W) * cut);
  const int64_t cy = uniform_int(w.v[0], s.H), cx = uniform_int(w.v[1], s.W);
  auto clip = [](int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); };
  s.y0 = clip(cy - ch / 2, s.H);
  s.y1 = clip(cy + ch / 2, s.H);
  s.x0 = clip(cx - cw / 2, s.W);
  s.x1 = clip(cx + cw / 2, s.W);
  const double cut_share = static_cast<double>((s.y1 - s.y0) * (s.x1 - s.x0)) /
                           (static_cast<double>(s.H) * static_cast<double>(s.W));
  s.p.lam = static_cast<float>(1.0 - cut_share);
  s.p.rest = static_cast<float>(cut_share);
}

FASTOPT_HD bool in_box(const CutmixSpec& s, int64_t h, int64_t w) {
  return h >= s.y0 && h < s.y1 && w >= s.x0 && w < s.x1;
}

namespace cpu {
// y (N, C, H, W) from x; x and y do not overlap.
void augment_batch(const float* x, float* y, const AugmentSpec& s);
// labels: int32 (index_bytes 4) or int64 (8), in [0, K). y (N, F), targets (N, K).
void mixup(const float* x, const void* labels, int index_bytes, float* y, float* targets, const MixupParams& p);
// Output planes as the op's PlaneShape (ViewOp: views * N * C planes); y does not overlap x.
void random_resized_crop(const float* x, float* y, const CropSpec& s);
void random_rotation(const float* x, float* y, const RotateSpec& s);
void pca_jitter(const float* x, float* y, const PcaSpec& s);
void tta_views(const float* x, float* y, const ViewSpec& s);
// indices: int32 (index_bytes 4) or int64 (8), one per sample.
void alternating_flip(const float* x, const void* indices, int index_bytes, float* y, const PlaneShape& s,
                      uint64_t seed, uint64_t epoch);
void cutmix(const float* x, const void* labels, int index_bytes, float* y, float* targets, const CutmixSpec& s);
// out[i] = (sum over v of y[v M + i], in v order, in double) / views, rounded once.
void tta_mean(const float* y, float* out, int64_t views, int64_t M);
}  // namespace cpu

namespace cuda {
// Same contracts on device pointers, queued on `stream`.
void augment_batch(const float* x, float* y, const AugmentSpec& s, void* stream);
void mixup(const float* x, const void* labels, int index_bytes, float* y, float* targets, const MixupParams& p,
           void* stream);
void random_resized_crop(const float* x, float* y, const CropSpec& s, void* stream);
void random_rotation(const float* x, float* y, const RotateSpec& s, void* stream);
void pca_jitter(const float* x, float* y, const PcaSpec& s, void* stream);
void tta_views(const float* x, float* y, const ViewSpec& s, void* stream);
void alternating_flip(const float* x, const void* indices, int index_bytes, float* y, const PlaneShape& s,
                      uint64_t seed, uint64_t epoch, void* stream);
void cutmix(const float* x, const void* labels, int index_bytes, float* y, float* targets, const CutmixSpec& s,
            void* stream);
void tta_mean(const float* y, float* out, int64_t views, int64_t M, void* stream);
}  // namespace cuda

}  // namespace fastopt

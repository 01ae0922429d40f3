/*
Private to cuda/conv2d.cu: the conv2d index math and the per-thread work of the gather and tiled
implicit-GEMM conv kernels, as FASTOPT_HD functions, and the host-side choice of each pass's path
(the shapes are in conv2d_shapes.cuh, the depthwise kernels' work and plans in
conv2d_depthwise.cuh). The kernels in conv2d.cu are thin loops around them, and a host program
can include this header with a plain C++ compiler and replay a kernel as loops over (block,
thread), so that the index logic the GPU runs is the very code that was checked against a naive
conv.

The three passes as GEMMs (per group g, Cg = C / groups, Kg = K / groups, RS = R * S):
  forward      y[k, (n,p,q)]     = sum_{(c,r,s)} w[k, (c,r,s)]  * im2col(x)[(c,r,s), (n,p,q)]
  data-grad    dx[c, (n,h,w)]    = sum_{(k,r,s)} w[k, c, r, s]  * col2im(dy)[(k,r,s), (n,h,w)]
  weight-grad  dw[k, (c,r,s)]    = sum_{(n,p,q)} dy[k, (n,p,q)] * im2col(x)[(n,p,q), (c,r,s)]
with col2im(dy)[(k,r,s), (n,h,w)] = dy[n, k, (h + ph - r dh) / sh, (w + pw - s dw) / sw] when both
divisions are exact and in range, else 0: that one gather covers stride 1 and strided data-grad.
Inside a group, GEMM coordinates are int32 (the host checks that every extent fits); addresses
into the tensors are int64.
*/
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "conv2d_depthwise.cuh"
#include "conv2d_shapes.cuh"
#include "fastopt/bf16.h"
#include "fastopt/common.h"
#include "fastopt/conv2d.h"
#include "gemm_tiles.cuh"

namespace fastopt::cuda::conv {

// The GEMM engine's names (Tile, kThreads, gemm_mainloop, ...) read as conv's own in the passes.
using namespace fastopt::cuda::tiled;

// ------------------------------------------------------------------ stage 1: gathers
// One output element per call, every sum in a fixed order (c, r, s or k, r, s ascending), int64
// throughout: the obviously-right path, and the one for shapes the tiled kernels do not take.

FASTOPT_HD float forward_at(const Dims& d, const float* x, const float* w, const float* b, int64_t i) {
  const int64_t q = i % d.Q, p = (i / d.Q) % d.P, k = (i / (d.Q * d.P)) % d.K, n = i / (d.Q * d.P * d.K);
  const int64_t g = k / d.Kg;
  float acc = 0.0f;
  for (int64_t c = 0; c < d.Cg; ++c) {
    const float* xc = x + (n * d.C + g * d.Cg + c) * d.H * d.W;
    const float* wc = w + (k * d.Cg + c) * d.R * d.S;
    for (int64_t r = 0; r < d.R; ++r) {
      const int64_t h = p * d.sh - d.ph + r * d.dh;
      if (h < 0 || h >= d.H) continue;
      for (int64_t s = 0; s < d.S; ++s) {
        const int64_t ww = q * d.sw - d.pw + s * d.dw;
        if (ww < 0 || ww >= d.W) continue;
        acc = fmaf(xc[h * d.W + ww], wc[r * d.S + s], acc);
      }
    }
  }
  return b != nullptr ? acc + b[k] : acc;
}

FASTOPT_HD float backward_data_at(const Dims& d, const float* dy, const float* w, int64_t i) {
  const int64_t ww = i % d.W, h = (i / d.W) % d.H, c = (i / (d.W * d.H)) % d.C, n = i / (d.W * d.H * d.C);
  const int64_t g = c / d.Cg, cl = c - g * d.Cg;
  float acc = 0.0f;
  for (int64_t kl = 0; kl < d.Kg; ++kl) {
    const int64_t k = g * d.Kg + kl;
    const float* dyk = dy + (n * d.K + k) * d.P * d.Q;
    const float* wk = w + (k * d.Cg + cl) * d.R * d.S;
    for (int64_t r = 0; r < d.R; ++r) {
      const int64_t th = h + d.ph - r * d.dh;
      if (th < 0 || th % d.sh != 0 || th / d.sh >= d.P) continue;
      for (int64_t s = 0; s < d.S; ++s) {
        const int64_t tw = ww + d.pw - s * d.dw;
        if (tw < 0 || tw % d.sw != 0 || tw / d.sw >= d.Q) continue;
        acc = fmaf(dyk[(th / d.sh) * d.Q + tw / d.sw], wk[r * d.S + s], acc);
      }
    }
  }
  return acc;
}

// Thread t of nt's share of dw[e]: the terms j = t, t + nt, ... of the sum over j = (n, p, q).
FASTOPT_HD float backward_weight_part(const Dims& d, const float* dy, const float* x, int64_t e, int64_t t,
                                      int64_t nt) {
  const int64_t s = e % d.S, r = (e / d.S) % d.R, cl = (e / (d.S * d.R)) % d.Cg, k = e / (d.S * d.R * d.Cg);
  const int64_t c = (k / d.Kg) * d.Cg + cl;
  float acc = 0.0f;
  for (int64_t j = t; j < d.N * d.P * d.Q; j += nt) {
    const int64_t q = j % d.Q, p = (j / d.Q) % d.P, n = j / (d.Q * d.P);
    const int64_t h = p * d.sh - d.ph + r * d.dh, ww = q * d.sw - d.pw + s * d.dw;
    if (h < 0 || h >= d.H || ww < 0 || ww >= d.W) continue;
    acc = fmaf(dy[((n * d.K + k) * d.P + p) * d.Q + q], x[((n * d.C + c) * d.H + h) * d.W + ww], acc);
  }
  return acc;
}

// Thread t of nt's share of db[k] = sum over (n, p, q) of dy[n, k, p, q] (dy float or bf16).
template <class T>
FASTOPT_HD float backward_bias_part(const Dims& d, const T* dy, int64_t k, int64_t t, int64_t nt) {
  const int64_t pq = d.P * d.Q;
  float acc = 0.0f;
  for (int64_t j = t; j < d.N * pq; j += nt) acc += to_float(dy[((j / pq) * d.K + k) * pq + j % pq]);
  return acc;
}

// ------------------------------------------------------------------ stage 2: tiled implicit GEMM
// The engine (tiles, main loop, TF32 stage, split ranges) is gemm_tiles.cuh, shared with linear.cu;
// what is conv's here is the three problems it runs.

// ---- the three problems: a(g, m, k), b(g, k, n), store(g, split, m, n, v) over M x N x Kd
// T: the tensors' storage type, float or bf16 (read widened to float; bf16 problems run on the
// engine's bf16 stage). Outputs y and dx are T, rounded once in store; dw stays fp32.

// Forward: M = Kg, N = N P Q, Kd = Cg R S. kUnit: 1x1, stride 1, no padding, the plain GEMM
// y[n, k, :] = w[k, :] x[n, :, :] (B rows are contiguous input planes).
template <bool kUnit, class T = float>
struct ForwardProblem {
  using Elem = T;
  static constexpr bool kAAlongK = true;   // w[k, (c,r,s)] is contiguous along (c,r,s)
  static constexpr bool kBAlongK = false;  // x along (n,p,q) is contiguous along q
  static constexpr bool kHoistB = !kUnit;
  Dims32 d;
  int M, N, Kd;
  int splits;         // 1
  const T* x;
  const T* w;
  const T* bias;  // may be null
  T* y;

  FASTOPT_HD float a(int g, int m, int k) const { return to_float(w[int64_t(g * d.Kg + m) * Kd + k]); }
  FASTOPT_HD float b(int g, int k, int j) const { return b_at(b_column(g, j), k); }
  // Column j = (n, p, q): the image's group of planes and the window's top-left corner.
  struct BColumn {
    int64_t planes;
    int h0, w0;
  };
  FASTOPT_HD BColumn b_column(int g, int j) const {
    const int n = d.by_PQ.div(j), pq = j - n * d.PQ;
    if (kUnit) return {(int64_t(n) * d.C + g * d.Cg) * d.HW + pq, 0, 0};
    const int p = d.by_Q.div(pq), q = pq - p * d.Q;
    return {(int64_t(n) * d.C + g * d.Cg) * d.HW, p * d.sh - d.ph, q * d.sw - d.pw};
  }
  FASTOPT_HD float b_at(const BColumn& col, int k) const {
    if (kUnit) return to_float(x[col.planes + int64_t(k) * d.HW]);
    const int c = d.by_RS.div(k), rs = k - c * d.RS, r = d.by_S.div(rs), s = rs - r * d.S;
    const int h = col.h0 + r * d.dh, w_ = col.w0 + s * d.dw;
    if (h < 0 || h >= d.H || w_ < 0 || w_ >= d.W) return 0.0f;
    return to_float(x[col.planes + int64_t(c) * d.HW + h * d.W + w_]);
  }
  FASTOPT_HD void store(int g, int, int m, int j, float v) const {
    const int n = d.by_PQ.div(j), pq = j - n * d.PQ, k = g * d.Kg + m;
    y[(int64_t(n) * d.K + k) * d.PQ + pq] = from_float<T>(bias != nullptr ? v + to_float(bias[k]) : v);
  }
};

// Data-grad: M = Cg, N = N H W, Kd = Kg R S. kUnit as above: dx[n, c, :] = sum_k w[k, c] dy[n, k, :].
template <bool kUnit, class T = float>
struct BackwardDataProblem {
  using Elem = T;
  static constexpr bool kAAlongK = true;   // w[k, c, r, s] along (k,r,s): runs of R S
  static constexpr bool kBAlongK = false;  // dy along (n,h,w): contiguous along w for stride 1
  static constexpr bool kHoistB = !kUnit;
  Dims32 d;
  int M, N, Kd;
  int splits;         // 1
  const T* dy;
  const T* w;
  T* dx;

  FASTOPT_HD float a(int g, int m, int k) const {
    const int kl = d.by_RS.div(k), rs = k - kl * d.RS;
    return to_float(w[(int64_t(g * d.Kg + kl) * d.Cg + m) * d.RS + rs]);
  }
  FASTOPT_HD float b(int g, int k, int j) const { return b_at(b_column(g, j), k); }
  // Column j = (n, h, w): the image's group of dy planes and the padded pixel (h + ph, w + pw).
  struct BColumn {
    int64_t planes;
    int th0, tw0;
  };
  FASTOPT_HD BColumn b_column(int g, int j) const {
    const int n = d.by_HW.div(j), hw = j - n * d.HW;
    if (kUnit) return {(int64_t(n) * d.K + g * d.Kg) * d.PQ + hw, 0, 0};
    const int h = d.by_W.div(hw), w_ = hw - h * d.W;
    return {(int64_t(n) * d.K + g * d.Kg) * d.PQ, h + d.ph, w_ + d.pw};
  }
  FASTOPT_HD float b_at(const BColumn& col, int k) const {
    if (kUnit) return to_float(dy[col.planes + int64_t(k) * d.PQ]);
    const int kl = d.by_RS.div(k), rs = k - kl * d.RS, r = d.by_S.div(rs), s = rs - r * d.S;
    const int th = col.th0 - r * d.dh, tw = col.tw0 - s * d.dw;
    if (th < 0 || tw < 0) return 0.0f;
    const int p = d.by_sh.div(th), q = d.by_sw.div(tw);
    if (p * d.sh != th || q * d.sw != tw || p >= d.P || q >= d.Q) return 0.0f;
    return to_float(dy[col.planes + int64_t(kl) * d.PQ + p * d.Q + q]);
  }
  FASTOPT_HD void store(int g, int, int m, int j, float v) const {
    const int n = d.by_HW.div(j), hw = j - n * d.HW;
    dx[(int64_t(n) * d.C + g * d.Cg + m) * d.HW + hw] = from_float<T>(v);
  }
};

// Weight-grad: M = Kg, N = Cg R S, Kd = N P Q, split over Kd. Split `split` writes its own full
// dw-shaped slice out[split][k][(c,r,s)] (out = dw itself when there is one split, which adds
// into dw with accumulate: store_grad).
template <class T>
struct BackwardWeightProblemOf {
  using Elem = T;
  static constexpr bool kAAlongK = true;  // dy[n, k, p, q] along (n,p,q): contiguous along p q
  static constexpr bool kBAlongK = true;  // x gathered along (n,p,q): contiguous along q
  static constexpr bool kHoistB = true;
  Dims32 d;
  int M, N, Kd;
  int splits;
  const T* dy;
  const T* x;
  float* out;
  bool accumulate = false;

  // Both operands run along k = (n, p, q): load_tiles decomposes each step's k once (HasKCoord).
  struct KCoord {
    int n, pq, h0, w0;  // image, pixel, and the pixel's window corner (p sh, q sw)
  };
  FASTOPT_HD KCoord k_coord(int k) const {
    const int n = d.by_PQ.div(k), pq = k - n * d.PQ, p = d.by_Q.div(pq), q = pq - p * d.Q;
    return {n, pq, p * d.sh, q * d.sw};
  }
  FASTOPT_HD float a_at(int g, int m, const KCoord& kc) const {
    return to_float(dy[(int64_t(kc.n) * d.K + g * d.Kg + m) * d.PQ + kc.pq]);
  }
  // Column j = (c, r, s): the input plane and the tap's offset from a window's corner.
  struct BColumn {
    int64_t plane;
    int dh0, dw0;
  };
  FASTOPT_HD BColumn b_column(int g, int j) const {
    const int c = d.by_RS.div(j), rs = j - c * d.RS, r = d.by_S.div(rs), s = rs - r * d.S;
    return {int64_t(g * d.Cg + c) * d.HW, r * d.dh - d.ph, s * d.dw - d.pw};
  }
  FASTOPT_HD float b_at(const BColumn& col, const KCoord& kc) const {
    const int h = kc.h0 + col.dh0, w_ = kc.w0 + col.dw0;
    if (h < 0 || h >= d.H || w_ < 0 || w_ >= d.W) return 0.0f;
    return to_float(x[int64_t(kc.n) * d.C * d.HW + col.plane + h * d.W + w_]);
  }
  FASTOPT_HD void store(int g, int split, int m, int j, float v) const {
    store_grad(out + (int64_t(split) * d.K + g * d.Kg + m) * N + j, v, accumulate);
  }
};
using BackwardWeightProblem = BackwardWeightProblemOf<float>;

// dw[i] = sum over splits s = 0, 1, ... (in that order) of part[s][i].
FASTOPT_HD float split_sum_at(const float* part, int64_t numel, int splits, int64_t i) {
  float acc = 0.0f;
  for (int s = 0; s < splits; ++s) acc += part[s * numel + i];
  return acc;
}

// ------------------------------------------------------------------ host-side planning

// A per-group GEMM M x N x Kd is worth tiling when neither M nor Kd is tiny (else most of every
// tile is padding) and its grid (N tiles, M tiles, z) fits CUDA's limits with 64-wide tiles.
inline bool gemm_fits(const Dims& d, int64_t M, int64_t Kd, int64_t z) {
  return fits_int32(d) && M >= 16 && Kd >= kBK && ceil_div(M, 64) <= kMaxGridYZ && z <= kMaxGridYZ;
}

inline bool is_unit(const Dims& d) {
  return d.R == 1 && d.S == 1 && d.sh == 1 && d.sw == 1 && d.ph == 0 && d.pw == 0 && d.P == d.H && d.Q == d.W;
}


// Weight-grad: 128x64 tiles when both sides pass 64 (split-K supplies the parallelism). Its two
// im2col'd operands cost more registers than forward's: 128x128 spilled on sm_80 under the
// 128-register cap, 128x64 takes 90 registers and spills nothing.
inline bool big_weight_tiles(int64_t M, int64_t N) { return M > 64 && N > 64; }

// Weight-grad splits: the count whose grid fills the GPU's waves (`wave` = resident blocks per SM
// x SMs) best, at most about 4 waves of blocks, the fewest on a tie (each split costs a partial
// dw in scratch and in the final sum); each split still reducing at least 512 terms, the grid's
// z = groups x splits within CUDA's limit, and the partials at most 64 M floats. (With 4 blocks
// per SM regardless of the waves, the 64-channel layer ran 1.34 waves on an H100.)
inline int weight_grad_splits(int64_t M, int64_t N, int64_t Kd, int64_t G, int64_t numel, bool big, int64_t wave) {
  const int64_t tiles = (big ? ceil_div(M, 128) : ceil_div(M, 64)) * ceil_div(N, 64) * G;
  const int64_t cap = std::min({std::max<int64_t>(1, ceil_div(4 * wave, tiles)), std::max<int64_t>(1, Kd / 512),
                                int64_t{kMaxGridYZ} / G, std::max<int64_t>(1, (int64_t{1} << 26) / numel)});
  int64_t best = 1;
  double best_fill = 0.0;
  for (int64_t s = 1; s <= cap; ++s) {
    const int64_t blocks = tiles * s;
    const double fill = double(blocks) / double(ceil_div(blocks, wave) * wave);
    if (fill > best_fill + 1e-9) { best = s; best_fill = fill; }
  }
  return static_cast<int>(best);
}

// Data-grad with few channels per group (Cg < 16: the GEMM's M, so its tiles would be mostly
// empty): cuda/conv2d_small_c.cu. Its weights go through kSmallCFloats of shared memory, kc output
// channels at a time, each channel's R x S taps padded to `width` channels; its phase tap lists
// cap R and S. The pixels kernel pads to 4, 8 or 16 channels; the strips kernel to 1, 2, 3, 4, 8
// or 16, takes strip_rows pixels per thread, and at most kStripTaps row taps per phase.
constexpr int kSmallCFloats = 8192;
constexpr int kSmallCMaxTaps = 32;
constexpr int kStripTaps = 4;

inline int small_c_width(int64_t Cg) { return Cg <= 4 ? 4 : Cg <= 8 ? 8 : 16; }
inline int strip_width(int64_t Cg) { return Cg <= 4 ? static_cast<int>(Cg) : Cg <= 8 ? 8 : 16; }
// At most 32 accumulators and 8 rows (the window of dy rows is strip_rows + kStripTaps - 1).
constexpr int strip_rows(int width) { return width <= 4 ? 8 : 32 / width; }

inline int64_t small_c_chunk(const Dims& d, int width) {
  return std::min<int64_t>(d.Kg, kSmallCFloats / (d.R * d.S * width));
}

inline bool small_c_fits(const Dims& d) {
  return d.Cg < 16 && d.R <= kSmallCMaxTaps && d.S <= kSmallCMaxTaps && fits_int32(d) &&
         small_c_chunk(d, small_c_width(d.Cg)) >= 1 && d.N * d.G < (int64_t{1} << 31) && d.sh * d.sw <= kMaxGridYZ &&
         ceil_div(ceil_div(d.H, d.sh) * ceil_div(d.W, d.sw), kThreads) <= kMaxGridYZ;
}

// With unit row dilation a phase's row taps reach consecutive dy rows, at most ceil(R / sh) of them.
inline bool strips_fit(const Dims& d) {
  return small_c_fits(d) && d.dh == 1 && ceil_div(d.R, d.sh) <= kStripTaps &&
         small_c_chunk(d, strip_width(d.Cg)) >= 1;
}

enum class Path { Gather, Depthwise, Gemm, UnitGemm, SmallC };

// Which kernel each pass takes (the gather whenever the faster ones do not apply).
inline Path forward_path(const Dims& d) {
  if (dw_plan_fits(d, d.N * d.K, d.P, dw_forward_plan(d))) return Path::Depthwise;
  if (gemm_fits(d, d.Kg, d.Cg * d.R * d.S, d.G)) return is_unit(d) ? Path::UnitGemm : Path::Gemm;
  return Path::Gather;
}

inline Path backward_data_path(const Dims& d) {
  if (dw_plan_fits(d, d.N * d.C, d.H, dw_backward_data_plan(d))) return Path::Depthwise;
  if (gemm_fits(d, d.Cg, d.Kg * d.R * d.S, d.G)) return is_unit(d) ? Path::UnitGemm : Path::Gemm;
  if (small_c_fits(d)) return Path::SmallC;
  return Path::Gather;
}

// Depthwise weight-grad (Cg = 1: GEMM N = R S) would leave most of a GEMM tile empty; it takes a
// block per dw element instead, like the gather but with int32 plane-wise index math.
inline Path backward_weight_path(const Dims& d) {
  if (d.Cg == 1) return fits_int32(d) && d.K * d.R * d.S < (int64_t{1} << 31) ? Path::Depthwise : Path::Gather;
  if (d.Cg * d.R * d.S >= 16 && gemm_fits(d, d.Kg, d.N * d.P * d.Q, d.G)) return Path::Gemm;
  return Path::Gather;
}

}  // namespace fastopt::cuda::conv

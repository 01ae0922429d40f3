/*
Private to cuda/conv2d.cu: the conv2d index math and the per-thread work of every conv kernel, as
FASTOPT_HD functions. The kernels in conv2d.cu are thin loops around them, and a host program can
include this header with a plain C++ compiler and replay a kernel as loops over (block, thread),
so that the index logic the GPU runs is the very code that was checked against a naive conv.

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

#include "fastopt/common.h"
#include "fastopt/conv2d.h"
#include "gemm_tiles.cuh"

namespace fastopt::cuda::conv {

// The GEMM engine's names (Tile, kThreads, gemm_mainloop, ...) read as conv's own in the passes.
using namespace fastopt::cuda::tiled;

// ------------------------------------------------------------------ shapes

// The shape in int64, with the group extents the kernels need.
struct Dims {
  int64_t N, C, H, W, K, R, S, P, Q;
  int64_t sh, sw, ph, pw, dh, dw, G, Cg, Kg;
};

inline Dims make_dims(const Conv2dShape& s) {
  return {s.N,        s.C,        s.H,      s.W,      s.K,      s.R,      s.S,
          s.P,        s.Q,        s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h,
          s.dil_w,    s.groups,   s.C / s.groups, s.K / s.groups};
}

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 by a multiply-high and a shift (Granlund and
// Montgomery; PyTorch's IntDivider): a run-time integer division costs ~20 instructions on the GPU,
// and the im2col gathers of the tiled kernels do several per loaded element.
// With l = ceil(log2 d) and mul = floor(2^32 (2^l - d) / d) + 1 (< 2^32 since 2^l - d < d),
// n / d = (mulhi(n, mul) + n) >> l, and mulhi(n, mul) + n <= 2n < 2^32 does not wrap.
struct Divider {
  uint32_t d, mul, shift;

  static Divider make(uint32_t d) {
    uint32_t l = 0;
    while ((uint64_t{1} << l) < d) ++l;
    const uint64_t mul = ((uint64_t{1} << 32) * ((uint64_t{1} << l) - d)) / d + 1;
    return {d, static_cast<uint32_t>(mul), l};
  }
  FASTOPT_HD int div(int n) const {
    const uint32_t u = static_cast<uint32_t>(n);
#if defined(__CUDA_ARCH__)
    const uint32_t t = __umulhi(u, mul);
#else
    const uint32_t t = static_cast<uint32_t>((uint64_t{u} * mul) >> 32);
#endif
    return static_cast<int>((t + u) >> shift);
  }
};

// The same in int32 for the tiled kernels; valid only when fits_int32(d). The dividers divide by
// the extents the GEMM coordinates are decomposed with.
struct Dims32 {
  int N, C, H, W, K, R, S, P, Q;
  int sh, sw, ph, pw, dh, dw, G, Cg, Kg;
  int RS, PQ, HW;
  Divider by_RS, by_S, by_PQ, by_Q, by_HW, by_W;
  Divider by_sh, by_sw;  // data-grad's dy row and column: a hardware division per tap cost ~20 instructions
};

// Every extent and product the tiled kernels form in int32 stays below 2^31 - 2^16, leaving room
// for a tile origin plus a tile (n0 + 127 and the like) without overflow.
inline bool fits_int32(const Dims& d) {
  const int64_t lim = (int64_t{1} << 31) - (int64_t{1} << 16);
  const int64_t v[] = {d.N * d.P * d.Q, d.N * d.H * d.W, d.Cg * d.R * d.S, d.Kg * d.R * d.S,
                       d.K,             d.C,             d.G,
                       // h = p sh - ph + r dh and its data-grad mirror h + ph - r dh
                       d.P * d.sh + d.ph + d.R * d.dh, d.Q * d.sw + d.pw + d.S * d.dw,
                       d.H + d.ph + d.R * d.dh,        d.W + d.pw + d.S * d.dw};
  for (int64_t x : v)
    if (x >= lim) return false;
  return true;
}

inline Dims32 to_dims32(const Dims& d) {
  Dims32 e{};
  e.N = int(d.N); e.C = int(d.C); e.H = int(d.H); e.W = int(d.W); e.K = int(d.K);
  e.R = int(d.R); e.S = int(d.S); e.P = int(d.P); e.Q = int(d.Q);
  e.sh = int(d.sh); e.sw = int(d.sw); e.ph = int(d.ph); e.pw = int(d.pw); e.dh = int(d.dh); e.dw = int(d.dw);
  e.G = int(d.G); e.Cg = int(d.Cg); e.Kg = int(d.Kg);
  e.RS = e.R * e.S; e.PQ = e.P * e.Q; e.HW = e.H * e.W;
  // A zero extent means an empty pass, which launches nothing: its divider is never used.
  auto div = [](int v) { return Divider::make(static_cast<uint32_t>(v > 0 ? v : 1)); };
  e.by_RS = div(e.RS); e.by_S = div(e.S); e.by_PQ = div(e.PQ);
  e.by_Q = div(e.Q); e.by_HW = div(e.HW); e.by_W = div(e.W);
  e.by_sh = div(e.sh); e.by_sw = div(e.sw);
  return e;
}

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

// Thread t of nt's share of db[k] = sum over (n, p, q) of dy[n, k, p, q].
FASTOPT_HD float backward_bias_part(const Dims& d, const float* dy, int64_t k, int64_t t, int64_t nt) {
  const int64_t pq = d.P * d.Q;
  float acc = 0.0f;
  for (int64_t j = t; j < d.N * pq; j += nt) acc += dy[((j / pq) * d.K + k) * pq + j % pq];
  return acc;
}

// ------------------------------------------------------------------ depthwise direct (Cg = 1)
// A block takes one plane and a band of its rows: forward, output rows of plane (n, k) from input
// plane (n, k / Kg); data-grad, dx rows of plane (n, c) from its Kg dy planes (n, c Kg + kl). It
// first copies the rows the band reads (its halo included; rows and columns past the image as
// zeros) into a shared-memory tile, consecutive threads on consecutive elements (coalesced), then
// every thread computes outputs from the tile: x (or dy) comes from DRAM once instead of through
// R*S cached loads per output, and the taps need no bounds tests. Taps that fall in the padding
// add 0 * w, as the reference's im2col does. The plane's weights are uniform loads (broadcasts).
// In-plane index math is int32 (the host checks fits_int32).

constexpr int kDwTileFloats = 8192;  // 32 KB

// Rows per band, the tile's width and the image column (forward: input column; data-grad: dy
// column) of its first column.
struct DwPlan {
  int band, cols, col0;
  Divider by_cols;
};

FASTOPT_HD int floor_div(int a, int b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }

// tile[i][j] = plane[row0 + i][col0 + j] for i < rows, j < cols (by_cols divides by cols), 0
// outside the plane (height x width); consecutive threads on consecutive elements. (A warp per
// row, which saves the division, ran the 56x56 depthwise layer 1.4x slower on an H100; measured,
// not profiled.) U: elements a thread loads before it stores any. With U = 1 each load's store
// waits for it before the next load issues (the PTX shows load, store, load, ...), so a thread
// has one load in flight: 6 KB per SM at 6 blocks of 256, where ~15 KB would cover an H100's
// DRAM latency at its bandwidth. U = 8 (opt-in: FASTOPT_CONV2D_DW_LOADS=1, until timed) issues 8.
constexpr int kDwLoadBatch = 8;

template <int U = 1>
FASTOPT_HD void dw_load_rows(float* tile, int cols, const Divider& by_cols, int rows, const float* plane, int height,
                             int width, int row0, int col0, int t, int nt) {
  const int total = rows * cols;
  for (int e0 = t; e0 < total; e0 += U * nt) {
    float v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int e = e0 + u * nt;
      const int i = by_cols.div(e), h = row0 + i, c = col0 + e - i * cols;
      v[u] = e < total && h >= 0 && h < height && c >= 0 && c < width ? plane[int64_t(h) * width + c] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (e0 + u * nt < total) tile[e0 + u * nt] = v[u];
  }
}

// Forward band `band_idx`: output rows [o0, o0 + on), tile row i = input row o0 sh - ph + i.
template <int U = 1>
FASTOPT_HD void dw_forward_load(const Dims32& d, const DwPlan& pl, const float* x, int plane, int band_idx,
                                float* tile, int t, int nt) {
  const int n = plane / d.K, k = plane - n * d.K;
  const float* xp = x + (int64_t(n) * d.C + k / d.Kg) * d.HW;
  const int o0 = band_idx * pl.band, on = d.P - o0 < pl.band ? d.P - o0 : pl.band;
  const int i0 = o0 * d.sh - d.ph, rows = (on - 1) * d.sh + (d.R - 1) * d.dh + 1;
  dw_load_rows<U>(tile, pl.cols, pl.by_cols, rows, xp, d.H, d.W, i0, pl.col0, t, nt);
}

// The plane's weights, in registers when the kernel size is a template argument (KR x KS; 0 x 0:
// R x S at run time, read from memory per tap).
template <int KR, int KS>
struct DwWeights {
  static constexpr bool kFixed = KR > 0 && KS > 0;
  float v[kFixed ? KR * KS : 1];
  const float* p;
  FASTOPT_HD explicit DwWeights(const float* wk) : p(wk) {
    if constexpr (kFixed) {
#pragma unroll
      for (int i = 0; i < KR * KS; ++i) v[i] = wk[i];
    }
  }
  FASTOPT_HD float operator[](int i) const {
    if constexpr (kFixed) return v[i];
    return p[i];
  }
};

template <int KR, int KS>
FASTOPT_HD void dw_forward_compute(const Dims32& d, const DwPlan& pl, const float* tile, const float* w,
                                   const float* b, float* y, int plane, int band_idx, int t, int nt) {
  const int R = KR > 0 ? KR : d.R, S = KS > 0 ? KS : d.S;
  const int k = plane % d.K;
  const DwWeights<KR, KS> wk(w + int64_t(k) * d.RS);
  const float bias = b != nullptr ? b[k] : 0.0f;
  const int o0 = band_idx * pl.band, on = d.P - o0 < pl.band ? d.P - o0 : pl.band;
  for (int o = t; o < on * d.Q; o += nt) {
    const int pr = d.by_Q.div(o), q = o - pr * d.Q;
    const float* base = tile + pr * d.sh * pl.cols + q * d.sw;
    float acc = 0.0f;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int s = 0; s < S; ++s) acc = fmaf(base[r * d.dh * pl.cols + s * d.dw], wk[r * S + s], acc);
    y[(int64_t(plane) * d.P + o0 + pr) * d.Q + q] = b != nullptr ? acc + bias : acc;
  }
}

// Data-grad band `band_idx`: dx rows [h0, h0 + hn); tile row i = dy row p_lo + i of plane c Kg + kl.
FASTOPT_HD int dw_dgrad_first_row(const Dims32& d, int h0) { return floor_div(h0 + d.ph - (d.R - 1) * d.dh, d.sh); }

template <int U = 1>
FASTOPT_HD void dw_backward_data_load(const Dims32& d, const DwPlan& pl, const float* dy, int plane, int band_idx,
                                      int kl, float* tile, int t, int nt) {
  const int n = plane / d.C, c = plane - n * d.C;
  const float* dyp = dy + (int64_t(n) * d.K + c * d.Kg + kl) * d.PQ;
  const int h0 = band_idx * pl.band, hn = d.H - h0 < pl.band ? d.H - h0 : pl.band;
  const int p_lo = dw_dgrad_first_row(d, h0), rows = floor_div(h0 + hn - 1 + d.ph, d.sh) - p_lo + 1;
  dw_load_rows<U>(tile, pl.cols, pl.by_cols, rows, dyp, d.P, d.Q, p_lo, pl.col0, t, nt);
}

// Adds plane kl's taps to dx (kl = 0 starts from zero): the sum runs over kl, r, s ascending.
// kUnitStride: sh = sw = 1, where every tap lands on a dy pixel (no division, no test).
template <int KR, int KS, bool kUnitStride>
FASTOPT_HD void dw_backward_data_compute(const Dims32& d, const DwPlan& pl, const float* tile, const float* w,
                                         float* dx, int plane, int band_idx, int kl, int t, int nt) {
  const int R = KR > 0 ? KR : d.R, S = KS > 0 ? KS : d.S;
  const int c = plane % d.C;
  const DwWeights<KR, KS> wk(w + (int64_t(c) * d.Kg + kl) * d.RS);
  const int h0 = band_idx * pl.band, hn = d.H - h0 < pl.band ? d.H - h0 : pl.band;
  const int row0 = dw_dgrad_first_row(d, h0) * d.sh, col0 = pl.col0 * d.sw;
  for (int o = t; o < hn * d.W; o += nt) {
    const int hr = d.by_W.div(o), w_ = o - hr * d.W;
    float* out = dx + (int64_t(plane) * d.H + h0 + hr) * d.W + w_;
    float acc = kl == 0 ? 0.0f : *out;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int th = h0 + hr + d.ph - r * d.dh - row0;  // >= 0
      const int i = kUnitStride ? th : d.by_sh.div(th);
      if (!kUnitStride && i * d.sh != th) continue;
      const float* row = tile + i * pl.cols;
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int tw = w_ + d.pw - s * d.dw - col0;
        const int j = kUnitStride ? tw : d.by_sw.div(tw);
        if (!kUnitStride && j * d.sw != tw) continue;
        acc = fmaf(row[j], wk[r * S + s], acc);
      }
    }
    *out = acc;
  }
}

// Thread t of nt's share of dw[k, 0, r, s] (rs = r S + s) for Cg = 1: the terms (n, p, q) with
// pq = t, t + nt, ... of every plane pair (dy[n, k], x[n, k / Kg]), n ascending. The terms of
// backward_weight_part, with int32 in-plane math and no per-term division by P Q.
FASTOPT_HD float depthwise_backward_weight_part(const Dims32& d, const float* dy, const float* x, int k, int rs,
                                                int t, int nt) {
  const int r = d.by_S.div(rs), s = rs - r * d.S, c = k / d.Kg;
  float acc = 0.0f;
  for (int n = 0; n < d.N; ++n) {
    const float* dyp = dy + (int64_t(n) * d.K + k) * d.PQ;
    const float* xp = x + (int64_t(n) * d.C + c) * d.HW;
    for (int pq = t; pq < d.PQ; pq += nt) {
      const int p = d.by_Q.div(pq), q = pq - p * d.Q;
      const int h = p * d.sh - d.ph + r * d.dh, w = q * d.sw - d.pw + s * d.dw;
      if (h < 0 || h >= d.H || w < 0 || w >= d.W) continue;
      acc = fmaf(dyp[pq], xp[h * d.W + w], acc);
    }
  }
  return acc;
}

// The taps kernel (opt-in: FASTOPT_CONV2D_DW_TAPS=1), for K x K kernels, K in {3, 5, 7}: a block
// takes one filter k and a chunk of images, stages each x band as the forward does, and every
// thread adds dy[n, k, p, q] times all K K taps of its outputs' windows to K K register sums. x
// and dy then come from DRAM once, where the per-element blocks above read them R S times.
// Thread t's outputs of forward band `band_idx`, as dw_forward_compute's, into acc[r KS + s].
template <int KR, int KS>
FASTOPT_HD void dw_weight_grad_accumulate(const Dims32& d, const DwPlan& pl, const float* tile, const float* dy,
                                          int plane, int band_idx, float (&acc)[KR * KS], int t, int nt) {
  const int o0 = band_idx * pl.band, on = d.P - o0 < pl.band ? d.P - o0 : pl.band;
  const float* dyb = dy + (int64_t(plane) * d.P + o0) * d.Q;
  for (int o = t; o < on * d.Q; o += nt) {
    const int pr = d.by_Q.div(o), q = o - pr * d.Q;
    const float* base = tile + pr * d.sh * pl.cols + q * d.sw;
    const float g = dyb[o];
#pragma unroll
    for (int r = 0; r < KR; ++r)
#pragma unroll
      for (int s = 0; s < KS; ++s) acc[r * KS + s] = fmaf(g, base[r * d.dh * pl.cols + s * d.dw], acc[r * KS + s]);
  }
}

// ------------------------------------------------------------------ stage 2: tiled implicit GEMM
// The engine (tiles, main loop, TF32 stage, split ranges) is gemm_tiles.cuh, shared with linear.cu;
// what is conv's here is the three problems it runs.

// ---- the three problems: a(g, m, k), b(g, k, n), store(g, split, m, n, v) over M x N x Kd

// Forward: M = Kg, N = N P Q, Kd = Cg R S. kUnit: 1x1, stride 1, no padding, the plain GEMM
// y[n, k, :] = w[k, :] x[n, :, :] (B rows are contiguous input planes).
template <bool kUnit>
struct ForwardProblem {
  static constexpr bool kAAlongK = true;   // w[k, (c,r,s)] is contiguous along (c,r,s)
  static constexpr bool kBAlongK = false;  // x along (n,p,q) is contiguous along q
  static constexpr bool kHoistB = !kUnit;
  Dims32 d;
  int M, N, Kd;
  int splits;         // 1
  const float* x;
  const float* w;
  const float* bias;  // may be null
  float* y;

  FASTOPT_HD float a(int g, int m, int k) const { return w[int64_t(g * d.Kg + m) * Kd + k]; }
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
    if (kUnit) return x[col.planes + int64_t(k) * d.HW];
    const int c = d.by_RS.div(k), rs = k - c * d.RS, r = d.by_S.div(rs), s = rs - r * d.S;
    const int h = col.h0 + r * d.dh, w_ = col.w0 + s * d.dw;
    if (h < 0 || h >= d.H || w_ < 0 || w_ >= d.W) return 0.0f;
    return x[col.planes + int64_t(c) * d.HW + h * d.W + w_];
  }
  FASTOPT_HD void store(int g, int, int m, int j, float v) const {
    const int n = d.by_PQ.div(j), pq = j - n * d.PQ, k = g * d.Kg + m;
    y[(int64_t(n) * d.K + k) * d.PQ + pq] = bias != nullptr ? v + bias[k] : v;
  }
};

// Data-grad: M = Cg, N = N H W, Kd = Kg R S. kUnit as above: dx[n, c, :] = sum_k w[k, c] dy[n, k, :].
template <bool kUnit>
struct BackwardDataProblem {
  static constexpr bool kAAlongK = true;   // w[k, c, r, s] along (k,r,s): runs of R S
  static constexpr bool kBAlongK = false;  // dy along (n,h,w): contiguous along w for stride 1
  static constexpr bool kHoistB = !kUnit;
  Dims32 d;
  int M, N, Kd;
  int splits;         // 1
  const float* dy;
  const float* w;
  float* dx;

  FASTOPT_HD float a(int g, int m, int k) const {
    const int kl = d.by_RS.div(k), rs = k - kl * d.RS;
    return w[(int64_t(g * d.Kg + kl) * d.Cg + m) * d.RS + rs];
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
    if (kUnit) return dy[col.planes + int64_t(k) * d.PQ];
    const int kl = d.by_RS.div(k), rs = k - kl * d.RS, r = d.by_S.div(rs), s = rs - r * d.S;
    const int th = col.th0 - r * d.dh, tw = col.tw0 - s * d.dw;
    if (th < 0 || tw < 0) return 0.0f;
    const int p = d.by_sh.div(th), q = d.by_sw.div(tw);
    if (p * d.sh != th || q * d.sw != tw || p >= d.P || q >= d.Q) return 0.0f;
    return dy[col.planes + int64_t(kl) * d.PQ + p * d.Q + q];
  }
  FASTOPT_HD void store(int g, int, int m, int j, float v) const {
    const int n = d.by_HW.div(j), hw = j - n * d.HW;
    dx[(int64_t(n) * d.C + g * d.Cg + m) * d.HW + hw] = v;
  }
};

// Weight-grad: M = Kg, N = Cg R S, Kd = N P Q, split over Kd. Split `split` writes its own full
// dw-shaped slice out[split][k][(c,r,s)] (out = dw itself when there is one split, which adds
// into dw with accumulate: store_grad).
struct BackwardWeightProblem {
  static constexpr bool kAAlongK = true;  // dy[n, k, p, q] along (n,p,q): contiguous along p q
  static constexpr bool kBAlongK = true;  // x gathered along (n,p,q): contiguous along q
  static constexpr bool kHoistB = true;
  Dims32 d;
  int M, N, Kd;
  int splits;
  const float* dy;
  const float* x;
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
    return dy[(int64_t(kc.n) * d.K + g * d.Kg + m) * d.PQ + kc.pq];
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
    return x[int64_t(kc.n) * d.C * d.HW + col.plane + h * d.W + w_];
  }
  FASTOPT_HD void store(int g, int split, int m, int j, float v) const {
    store_grad(out + (int64_t(split) * d.K + g * d.Kg + m) * N + j, v, accumulate);
  }
};

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

// The depthwise plans: the tile must hold a band of at least one row, and the grid (planes, bands)
// fit CUDA's limits.
inline bool dw_plan_fits(const Dims& d, int64_t planes, int64_t rows, const DwPlan& pl) {
  return d.Cg == 1 && fits_int32(d) && planes < (int64_t{1} << 31) && pl.band >= 1 &&
         ceil_div(rows, pl.band) <= kMaxGridYZ;
}

inline DwPlan dw_plan(int64_t band, int64_t cols, int64_t col0) {
  const bool ok = band >= 1 && cols <= kDwTileFloats;
  const int c = static_cast<int>(std::clamp<int64_t>(cols, 1, kDwTileFloats));
  return {ok ? static_cast<int>(band) : 0, c, static_cast<int>(col0), Divider::make(static_cast<uint32_t>(c))};
}

// Forward: a band of b output rows reads (b - 1) sh + (R - 1) dh + 1 input rows of
// (Q - 1) sw + (S - 1) dw + 1 columns, from input column -pw.
inline DwPlan dw_forward_plan(const Dims& d) {
  const int64_t cols = (d.Q - 1) * d.sw + (d.S - 1) * d.dw + 1;
  const int64_t rows = kDwTileFloats / std::max<int64_t>(cols, 1);
  const int64_t band = rows < (d.R - 1) * d.dh + 1 ? 0 : std::min<int64_t>(d.P, (rows - (d.R - 1) * d.dh - 1) / d.sh + 1);
  return dw_plan(band, cols, -d.pw);
}

// Data-grad: dx rows [h0, h0 + b) read dy rows floor((h0 + ph - (R-1) dh) / sh) to
// floor((h0 + b - 1 + ph) / sh), at most (b - 1 + (R - 1) dh) / sh + 2 of them; dy columns from
// floor((pw - (S-1) dw) / sw) to floor((W - 1 + pw) / sw).
inline DwPlan dw_backward_data_plan(const Dims& d) {
  const auto fdiv = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((b - 1 - a) / b); };
  const int64_t q_lo = fdiv(d.pw - (d.S - 1) * d.dw, d.sw), q_hi = fdiv(d.W - 1 + d.pw, d.sw);
  const int64_t cols = q_hi - q_lo + 1;
  const int64_t rows = kDwTileFloats / std::max<int64_t>(cols, 1);
  const int64_t band = rows < 2 ? 0 : std::min<int64_t>(d.H, (rows - 2) * d.sh - (d.R - 1) * d.dh + 1);
  return dw_plan(band, cols, q_lo);
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

// Images per block of the depthwise taps kernel: about 12 blocks per SM (two waves of the 6 that
// its 33 KB of shared memory lets reside), whole images each; chunks = ceil(N / per_chunk) <= 65535.
inline int64_t dw_taps_images_per_chunk(const Dims& d, int sms) {
  const int64_t want = std::clamp<int64_t>(ceil_div(12 * int64_t{sms}, d.K), 1, d.N);
  return std::max(ceil_div(d.N, want), ceil_div(d.N, kMaxGridYZ));
}

inline bool dw_taps_fit(const Dims& d) {
  return d.Cg == 1 && d.R == d.S && (d.R == 3 || d.R == 5 || d.R == 7) && d.N > 0 &&
         dw_plan_fits(d, d.N * d.K, d.P, dw_forward_plan(d)) && d.K < (int64_t{1} << 31);
}

// Depthwise weight-grad (Cg = 1: GEMM N = R S) would leave most of a GEMM tile empty; it takes a
// block per dw element instead, like the gather but with int32 plane-wise index math.
inline Path backward_weight_path(const Dims& d) {
  if (d.Cg == 1) return fits_int32(d) && d.K * d.R * d.S < (int64_t{1} << 31) ? Path::Depthwise : Path::Gather;
  if (d.Cg * d.R * d.S >= 16 && gemm_fits(d, d.Kg, d.N * d.P * d.Q, d.G)) return Path::Gemm;
  return Path::Gather;
}

}  // namespace fastopt::cuda::conv

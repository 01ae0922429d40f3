/*
Private to cuda/conv2d.cu: the depthwise (Cg = 1) conv kernels' per-thread work as FASTOPT_HD
functions (a block stages a band of one plane in shared memory; forward, data-grad, the weight-grad
terms and the opt-in taps kernel) and their host-side plans (band height, tile width, whether a
shape fits). conv2d_tiles.cuh includes it and chooses the depthwise path from these plans; the
host replay (tests/native/conv2d_cuda_replay.cpp) runs the same functions as loops.
*/
#pragma once

#include <algorithm>
#include <cstdint>

#include "conv2d_shapes.cuh"
#include "gemm_tiles.cuh"

namespace fastopt::cuda::conv {

// kMaxGridYZ and ceil_div are the GEMM engine's, shared by every conv kernel.
using namespace fastopt::cuda::tiled;

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
// outside the plane (height x width); consecutive threads on consecutive elements (a warp per
// row, tried, was slower: bench/results/notes-kernels.md). U: elements a thread loads before it stores any. With U = 1 each load's store
// waits for it before the next load issues (the PTX shows load, store, load, ...), so a thread
// has one load in flight: 6 KB per SM at 6 blocks of 256, where ~15 KB would cover an H100's
// DRAM latency at its bandwidth. U = 8 (opt-in: FASTOPT_CUDA_CONV2D_DW_LOADS=1, until timed) issues 8.
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

// The taps kernel (opt-in: FASTOPT_CUDA_CONV2D_DW_TAPS=1), for K x K kernels, K in {3, 5, 7}: a block
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

// ------------------------------------------------------------------ host-side planning

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

}  // namespace fastopt::cuda::conv

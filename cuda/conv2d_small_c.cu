/*
Conv2d data-grad for few channels per group (Cg < 16, the GEMM's M, where a GEMM tile would be
mostly empty), e.g. the RGB stem: 7x7 stride 2, C = 3, K = 64, 224x224 at N = 128.

Math: dx[n, c, h, w] = sum_{k in group(c), r, s} dy[n, k, (h + ph - r dh) / sh, (w + pw - s dw) / sw] w[k, c, r, s]
over the taps whose divisions are exact and in range. Split dx by stride phase (h mod sh, w mod
sw): one phase's pixels all take the same taps, so a block lists them once and no warp diverges
on the stride. Work: 2 N K Cg R S H W / (sh sw) flops; bytes at least 4 (|dy| + |w| + |dx|). The
stem moves 488 MB for 30 GFLOP: compute-bound, if each dy value loaded feeds enough FMAs.

Two kernels; grid (N G, pixel tiles of a phase, sh sw), 256 threads; the group's weights pass
through 32 KB of shared memory kc output channels at a time, laid out [k][r][s][c] with c padded
to CG. Every sum runs in a fixed order, no atomics.
  pixels  one thread per dx pixel for all its Cg channels (CG in {4, 8, 16}): per tap, one dy load
          and one weight read for CG FMAs. It ran the stem at 4.0 TFLOP/s on an H100, 0.30x cuDNN.
  strips  (opt-in: FASTOPT_CUDA_CONV2D_STRIPS=1, until timed on a GPU) unit row dilation, at most
          kStripTaps row taps per phase (ceil(R / sh) <= 4: the 7x7/2 stem, every 3x3). A thread
          takes PX pixels of one column of its phase (rows ih0 .. ih0 + PX - 1) and CG channels,
          CG = Cg for Cg <= 4 (no padding FMAs for RGB), PX CG <= 32 accumulators. Phase rows
          ih0 + u read dy rows ih0 + u + p_lo + t for the phase's row taps t = 0 .. nr - 1 (their
          dy offsets are consecutive when dh = 1), so per column tap the thread loads the window of
          PX + nr - 1 dy rows once, coalesced across the warp's neighbouring columns, and every
          value feeds up to nr pixels: per (k, column tap) PX + nr - 1 loads, nr CG weight reads
          (broadcasts) and PX nr CG FMAs; the stem's 3-channel phase with 4 x 4 taps does 96 FMAs
          per 11 loads and 12 weight reads, against the pixels kernel's 4 FMAs (3 of use) per load.
*/
#include <algorithm>

#include "conv2d_small_c.h"
#include "conv2d_tiles.cuh"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using detail::check;
using namespace conv;

// The phase (a, b) = blockIdx.z's taps, written by thread 0: row taps r that reach phase row ih
// from dy row ih + tap_p, column taps likewise, each list by r (s) ascending.
struct PhaseTaps {
  int r[kSmallCMaxTaps], p[kSmallCMaxTaps], s[kSmallCMaxTaps], q[kSmallCMaxTaps];
  int nr, ns;
};

__device__ __forceinline__ void list_taps(const Dims32& d, int a, int b, PhaseTaps& t) {
  int nr = 0, ns = 0;
  for (int r = 0; r < d.R; ++r) {
    const int v = a + d.ph - r * d.dh;
    if (v % d.sh == 0) { t.r[nr] = r; t.p[nr++] = v / d.sh; }
  }
  for (int s_ = 0; s_ < d.S; ++s_) {
    const int v = b + d.pw - s_ * d.dw;
    if (v % d.sw == 0) { t.s[ns] = s_; t.q[ns++] = v / d.sw; }
  }
  t.nr = nr;
  t.ns = ns;
}

// Block (n G + g, tile, a sw + b) of either kernel: image n, group g, phase (a, b) of Hp x Wp
// pixels, and thread i of the tile's; thread 0 lists the phase's taps.
struct PhaseBlock {
  int n, g, a, b, Hp, Wp, i;
};

__device__ __forceinline__ PhaseBlock phase_block(const Dims32& d, PhaseTaps& taps) {
  PhaseBlock p;
  p.n = static_cast<int>(blockIdx.x) / d.G;
  p.g = static_cast<int>(blockIdx.x) - p.n * d.G;
  p.a = static_cast<int>(blockIdx.z) / d.sw;
  p.b = static_cast<int>(blockIdx.z) - p.a * d.sw;
  if (threadIdx.x == 0) list_taps(d, p.a, p.b, taps);
  p.Hp = (d.H - p.a + d.sh - 1) / d.sh;
  p.Wp = (d.W - p.b + d.sw - 1) / d.sw;
  p.i = static_cast<int>(blockIdx.y) * kThreads + static_cast<int>(threadIdx.x);
  return p;
}

// Output channels [k0, k0 + kn) of group g into ws[kk][r][s][c], c padded to CG with zeros.
template <int CG>
__device__ __forceinline__ void stage_weights(const Dims32& d, const float* w, int g, int k0, int kn, float* ws) {
  for (int e = static_cast<int>(threadIdx.x); e < kn * d.RS * CG; e += kThreads) {
    const int c = e % CG, krs = e / CG, kk = krs / d.RS, rs = krs - kk * d.RS;
    ws[e] = c < d.Cg ? w[(int64_t(g) * d.Kg + k0 + kk) * d.Cg * d.RS + c * d.RS + rs] : 0.0f;
  }
}

// Pixels: thread i of the phase's Hp x Wp pixels; the sum runs over k, r, s ascending, as the
// gather's does.
template <int CG>
__global__ void __launch_bounds__(kThreads) backward_data_pixels(const Dims32 d, const float* dy, const float* w,
                                                                 float* dx, int kc) {
  __shared__ float ws[kSmallCFloats];
  __shared__ PhaseTaps taps;
  const PhaseBlock blk = phase_block(d, taps);
  const int n = blk.n, g = blk.g, a = blk.a, b = blk.b, Hp = blk.Hp, Wp = blk.Wp, i = blk.i;
  const bool live = i < Hp * Wp;
  const int ih = live ? i / Wp : 0, jw = live ? i - ih * Wp : 0;
  float acc[CG];
#pragma unroll
  for (int c = 0; c < CG; ++c) acc[c] = 0.0f;
  for (int k0 = 0; k0 < d.Kg; k0 += kc) {
    const int kn = min(kc, d.Kg - k0);
    __syncthreads();  // the last chunk's weights are read (and, the first time, the tap lists written)
    stage_weights<CG>(d, w, g, k0, kn, ws);
    __syncthreads();
    if (!live) continue;
    const int nr = taps.nr, ns = taps.ns;
    for (int kk = 0; kk < kn; ++kk) {
      const float* dyk = dy + (int64_t(n) * d.K + g * d.Kg + k0 + kk) * d.PQ;
      const float* wk = ws + kk * d.RS * CG;
      for (int ir = 0; ir < nr; ++ir) {
        const int p = ih + taps.p[ir];
        if (p < 0 || p >= d.P) continue;
        const float* dyrow = dyk + p * d.Q;
        const float* wrow = wk + taps.r[ir] * d.S * CG;
        for (int is = 0; is < ns; ++is) {
          const int q = jw + taps.q[is];
          if (q < 0 || q >= d.Q) continue;
          const float v = dyrow[q];
          const float* wc = wrow + taps.s[is] * CG;
#pragma unroll
          for (int c = 0; c < CG; ++c) acc[c] = fmaf(v, wc[c], acc[c]);
        }
      }
    }
  }
  if (!live) return;
  const int h = a + ih * d.sh, w_ = b + jw * d.sw;
#pragma unroll
  for (int c = 0; c < CG; ++c)
    if (c < d.Cg) dx[((int64_t(n) * d.C + g * d.Cg + c) * d.H + h) * d.W + w_] = acc[c];
}

// Strips: thread i of the phase's ceil(Hp / PX) x Wp strips; the sum runs over k, s ascending,
// then r descending.
template <int CG, int PX>
__global__ void __launch_bounds__(kThreads) backward_data_strips(const Dims32 d, const float* dy, const float* w,
                                                                 float* dx, int kc) {
  constexpr int NR = kStripTaps, WIN = PX + NR - 1;
  alignas(16) __shared__ float ws[kSmallCFloats];
  __shared__ PhaseTaps taps;
  const PhaseBlock blk = phase_block(d, taps);
  const int n = blk.n, g = blk.g, a = blk.a, b = blk.b, Hp = blk.Hp, Wp = blk.Wp, i = blk.i;
  const bool live = i < ((Hp + PX - 1) / PX) * Wp;
  const int strip = live ? i / Wp : 0, jw = live ? i - strip * Wp : 0, ih0 = strip * PX;
  float acc[PX][CG];
#pragma unroll
  for (int u = 0; u < PX; ++u)
#pragma unroll
    for (int c = 0; c < CG; ++c) acc[u][c] = 0.0f;
  __syncthreads();  // the tap lists
  // Row tap t (t = 0 .. nr - 1) is the list's entry nr - 1 - t: dy offset p_lo + t, so that
  // phase row ih0 + u with tap t reads window row u + t, an index known at compile time.
  const int nr = taps.nr, ns = taps.ns, p_lo = nr > 0 ? taps.p[nr - 1] : 0;
  int wrow[NR];  // row tap t's offset in a channel's weights
#pragma unroll
  for (int t = 0; t < NR; ++t) wrow[t] = t < nr ? taps.r[nr - 1 - t] * d.S * CG : 0;
  unsigned rows_in = 0;  // bit j: window row j (dy row ih0 + p_lo + j) lies in the image
#pragma unroll
  for (int j = 0; j < WIN; ++j) {
    const int p = ih0 + p_lo + j;
    if (j < PX + nr - 1 && p >= 0 && p < d.P) rows_in |= 1u << j;
  }
  for (int k0 = 0; k0 < d.Kg; k0 += kc) {
    const int kn = min(kc, d.Kg - k0);
    if (k0 > 0) __syncthreads();  // the last chunk's weights are read
    stage_weights<CG>(d, w, g, k0, kn, ws);
    __syncthreads();
    if (!live) continue;
    for (int kk = 0; kk < kn; ++kk) {
      const float* dyk = dy + (int64_t(n) * d.K + g * d.Kg + k0 + kk) * d.PQ + (ih0 + p_lo) * d.Q;
      const float* wk = ws + kk * d.RS * CG;
      for (int is = 0; is < ns; ++is) {
        const int q = jw + taps.q[is];
        const unsigned in = q >= 0 && q < d.Q ? rows_in : 0u;
        float win[WIN];
#pragma unroll
        for (int j = 0; j < WIN; ++j) win[j] = (in >> j) & 1u ? dyk[j * d.Q + q] : 0.0f;
        const float* wcol = wk + taps.s[is] * CG;
#pragma unroll
        for (int t = 0; t < NR; ++t) {
          if (t >= nr) break;
          const float* wt = wcol + wrow[t];
          float wv[CG];
          if constexpr (CG % 4 == 0) {
#pragma unroll
            for (int c = 0; c < CG; c += 4) {  // 16-byte aligned: ws is, and CG divides the offset
              const float4 v4 = *reinterpret_cast<const float4*>(wt + c);
              wv[c] = v4.x; wv[c + 1] = v4.y; wv[c + 2] = v4.z; wv[c + 3] = v4.w;
            }
          } else {
#pragma unroll
            for (int c = 0; c < CG; ++c) wv[c] = wt[c];
          }
#pragma unroll
          for (int u = 0; u < PX; ++u)
#pragma unroll
            for (int c = 0; c < CG; ++c) acc[u][c] = fmaf(win[u + t], wv[c], acc[u][c]);
        }
      }
    }
  }
  if (!live) return;
  const int w_ = b + jw * d.sw;
#pragma unroll
  for (int u = 0; u < PX; ++u) {
    if (ih0 + u >= Hp) break;
    const int h = a + (ih0 + u) * d.sh;
#pragma unroll
    for (int c = 0; c < CG; ++c)
      if (c < d.Cg) dx[((int64_t(n) * d.C + g * d.Cg + c) * d.H + h) * d.W + w_] = acc[u][c];
  }
}

bool strips_enabled() { return switch_on(switches::cuda_conv2d_strips); }

template <int CG>
void launch_pixels(const Dims& d, const float* dy, const float* w, float* dx, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>(d.N * d.G),
                  static_cast<unsigned>(ceil_div(ceil_div(d.H, d.sh) * ceil_div(d.W, d.sw), kThreads)),
                  static_cast<unsigned>(d.sh * d.sw));
  backward_data_pixels<CG><<<grid, kThreads, 0, st>>>(to_dims32(d), dy, w, dx,
                                                      static_cast<int>(small_c_chunk(d, CG)));
  check(cudaGetLastError(), "conv2d_backward_data (few channels)");
}

template <int CG>
void launch_strips(const Dims& d, const float* dy, const float* w, float* dx, cudaStream_t st) {
  constexpr int PX = strip_rows(CG);
  const dim3 grid(static_cast<unsigned>(d.N * d.G),
                  static_cast<unsigned>(ceil_div(ceil_div(ceil_div(d.H, d.sh), PX) * ceil_div(d.W, d.sw), kThreads)),
                  static_cast<unsigned>(d.sh * d.sw));
  backward_data_strips<CG, PX><<<grid, kThreads, 0, st>>>(to_dims32(d), dy, w, dx,
                                                          static_cast<int>(small_c_chunk(d, CG)));
  check(cudaGetLastError(), "conv2d_backward_data (few channels, strips)");
}

}  // namespace

void conv2d_backward_data_small_c(const Dims& d, const float* dy, const float* w, float* dx, cudaStream_t st) {
  if (strips_enabled() && strips_fit(d)) {
    switch (strip_width(d.Cg)) {
      case 1: return launch_strips<1>(d, dy, w, dx, st);
      case 2: return launch_strips<2>(d, dy, w, dx, st);
      case 3: return launch_strips<3>(d, dy, w, dx, st);
      case 4: return launch_strips<4>(d, dy, w, dx, st);
      case 8: return launch_strips<8>(d, dy, w, dx, st);
      default: return launch_strips<16>(d, dy, w, dx, st);
    }
  }
  switch (small_c_width(d.Cg)) {
    case 4: return launch_pixels<4>(d, dy, w, dx, st);
    case 8: return launch_pixels<8>(d, dy, w, dx, st);
    default: return launch_pixels<16>(d, dy, w, dx, st);
  }
}

}  // namespace fastopt::cuda

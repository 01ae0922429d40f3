/*
Conv2d by Winograd F(2x2, 3x3) on CUDA, float32, opt-in (conv2d_winograd.h): the forward; the
data-grad as the forward over dy with the filters flipped and transposed and padding 2 - p; the
weight-grad by the adjoint transforms (its own section below). The CPU's conv2d_winograd.cpp
does the same; fastopt/winograd.h holds the transforms both use. Forward, per group, for each 2x2 output
tile t = (n, th, tw) and each position xi of the 4x4 transformed tile:
    U[c][xi][k] = (G w[k, c] G^T)[xi]               filter transform (its own small kernel)
    V[c][xi][t] = (B^T d[c, t] B)[xi]                d: the 4x4 input patch at (2 th - ph, 2 tw - pw)
    M[xi][k][t] = sum over c of U[c][xi][k] V[c][xi][t]     16 GEMMs of Cout x tiles x Cin
    y[k, t]     = A^T M[.][k][t] A  (+ b[k])
The GEMMs do 16 multiply-adds per tile and channel pair where the direct form does 36 (4 pixels x
9 taps): 2.25x fewer flops. Bytes: x once per block of 32 filters (from L2 after the first),
U (16/9 |w|) once per block of 32 tiles, y written once; nothing the size of the batch is
materialized (V and M live in shared memory and registers).

Launch: grid (tile blocks of 32, filter blocks of 32, groups), 256 threads. Thread (xi, kq, tq) =
(tid / 16, tid / 4 % 4, tid % 4) accumulates M[xi] for 8 filters x 8 tiles (own()). The input
channels go by in stages of 4, double-buffered in shared memory (32 KB): while all 8 warps run a
stage's 256 FMAs per thread, every thread also gathers half of one of the next stage's 4 x 32
patches (a warp: 2 rows of 16 neighbouring tiles of one plane, transformed with 4 shuffles) and
copies 2 float4 of its U, so that no warp waits for another at the stage's barrier. Then M goes
through shared memory in 4 rounds of 256 (filter, tile) pairs, one per thread, for the output
transform. Each output is one thread's sum over c ascending: bitwise
reproducible.
*/

#include "conv2d_tiles.cuh"
#include "opt_in/conv2d_winograd.h"
#include "fastopt/winograd.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using conv::Divider;
using conv::load4;
using detail::as_stream;
using detail::check;

constexpr int kWinoThreads = 256;
constexpr int kBK = 32;                // filters per block
constexpr int kBT = 32;                // tiles per block
constexpr int kCC = 4;                 // input channels per stage
constexpr int kStage = kCC * 16 * 32;  // floats of one operand per stage
// M's exchange: 256 pairs per xi row, skewed by one float per 64 (see below), the row padded to
// 16 mod 32 floats so that the rows of xi = 2w and 2w + 1 fall in opposite bank halves.
constexpr int kRow = 272;

// The 2x2 output tiles of N images of Hout x Wout: TH x TW per image, T in all; tile t is
// (n, th, tw), row-major.
struct TileGrid {
  int TH, TW, T;
  Divider by_TW, by_image;  // by TW, by TH TW

  static TileGrid make(int64_t N, int Hout, int Wout) {
    TileGrid g{};
    g.TH = (Hout + 1) / 2;
    g.TW = (Wout + 1) / 2;
    g.T = static_cast<int>(N * g.TH * g.TW);
    g.by_TW = Divider::make(static_cast<uint32_t>(g.TW));
    g.by_image = Divider::make(static_cast<uint32_t>(g.TH * g.TW));
    return g;
  }
  FASTOPT_HD void locate(int t, int& n, int& th, int& tw) const {
    n = by_image.div(t);
    const int r = t - n * TH * TW;
    th = by_TW.div(r);
    tw = r - th * TW;
  }
};

// One pass: `in` (N, G Cin, Hin, Win) correlated with the transformed filters U into `out`
// (N, G Cout, Hout, Wout), padding (ph, pw).
struct WinoPass {
  const float* in;
  const float* U;     // [G][Cpad][16][Kpad], zero past Cin and Cout
  const float* bias;  // nullptr: none
  float* out;
  int Cin, Hin, Win, Cout, Hout, Wout, ph, pw, G;
  TileGrid tiles;  // of the output
  int Cpad, Kpad;
};

struct alignas(16) Stage {
  float u[kStage];  // [c][xi][32 filters]
  float v[kStage];  // [c][xi][32 tiles]
};
static_assert(2 * sizeof(Stage) >= 16 * kRow * sizeof(float), "M's exchange reuses the stages");

// Column of logical column j (0..31) in row xi of a staged operand: the rows with bit 0 ^ bit 1
// of xi set swap their 16-float halves. Then the float4 reads of a warp (rows xi = 2w and
// 2w + 1) cover all 32 banks once, and so do the forward's patch stores (rows xi and xi ^ 2,
// 16 tiles each).
FASTOPT_HD int col(int xi, int j) { return j ^ (((xi ^ (xi >> 1)) & 1) << 4); }

// Logical index (0..31) of the i-th of a thread's 8 filters (or tiles): two runs of 4, 16 apart.
FASTOPT_HD int own(int q, int i) { return (i < 4 ? 0 : 16) + 4 * q + (i & 3); }

// 4 floats at a 16-byte aligned address, one 128-bit access on the GPU. The stores are PTX:
// nvcc split plain float4 stores in these kernels into 4 scalar ones (seen in the PTX).
FASTOPT_HD float4 load4_global(const float* p) { return *reinterpret_cast<const float4*>(p); }
FASTOPT_HD void store4_shared(float* p, float4 v) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(p))),
               "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w) : "memory");
#else
  *reinterpret_cast<float4*>(p) = v;
#endif
}
FASTOPT_HD void store4_global(float* p, float4 v) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w) : "memory");
#else
  *reinterpret_cast<float4*>(p) = v;
#endif
}

// U[g][c][xi][k] for all c < Cpad, k < Kpad, one thread per (g, c, k), k fastest (coalesced
// stores). Forward: in channel c, out channel k of w[k][c]. Data-grad (flip): in = dy's channel
// c, out = dx's channel k, the filter w[c][k] rotated by 180 degrees.
__global__ void __launch_bounds__(kWinoThreads) transform_filters(const float* w, int Cg, int Kg, int Cpad, int Kpad,
                                                                  bool flip, float* U, int64_t total) {
  const int Cin = flip ? Kg : Cg, Cout = flip ? Cg : Kg;
  for (int64_t e = blockIdx.x * int64_t{kWinoThreads} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * kWinoThreads) {
    const int k = static_cast<int>(e % Kpad);
    const int64_t gc = e / Kpad;
    const int c = static_cast<int>(gc % Cpad);
    const int64_t g = gc / Cpad;
    float f[3][3] = {};
    if (c < Cin && k < Cout) {
      const float* src = flip ? w + ((g * Kg + c) * Cg + k) * 9 : w + ((g * Kg + k) * Cg + c) * 9;
      for (int r = 0; r < 3; ++r)
        for (int s = 0; s < 3; ++s) f[r][s] = flip ? src[(2 - r) * 3 + 2 - s] : src[r * 3 + s];
    }
    float rows[3][4], u[4][4];
    for (int r = 0; r < 3; ++r) winograd::weight_1d(f[r][0], f[r][1], f[r][2], rows[r]);
    for (int b = 0; b < 4; ++b) {
      float o[4];
      winograd::weight_1d(rows[0][b], rows[1][b], rows[2][b], o);
      for (int a = 0; a < 4; ++a) u[a][b] = o[a];
    }
    float* dst = U + gc * 16 * Kpad + k;
    for (int xi = 0; xi < 16; ++xi) dst[int64_t{xi} * Kpad] = u[xi / 4][xi % 4];
  }
}

__global__ void __launch_bounds__(kWinoThreads, 2) winograd_kernel(const WinoPass p) {
  __shared__ Stage stages[2];
  const int tid = static_cast<int>(threadIdx.x);
  const int g = static_cast<int>(blockIdx.z), k0 = static_cast<int>(blockIdx.y) * kBK;
  const int t0 = static_cast<int>(blockIdx.x) * kBT;

  // Every thread gathers half a patch, rows 2 half and 2 half + 1 (half = lane / 16), of patch
  // 16 warp + lane % 16 of the stage (channel cl, tile tl); mask bit 4 i + j: the half's pixel
  // (i, j) lies in the image (else it is padding, a zero).
  const int half = (tid >> 4) & 1, pi = (tid >> 5) * 16 + (tid & 15);
  const int tl = pi & 31, cl = pi >> 5;
  const int64_t HWin = int64_t{p.Hin} * p.Win;
  const float* patch = p.in;
  unsigned mask = 0;
  if (t0 + tl < p.tiles.T) {
    int n, th, tw;
    p.tiles.locate(t0 + tl, n, th, tw);
    const int h0 = 2 * th - p.ph + 2 * half, w0 = 2 * tw - p.pw;
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 4; ++j)
        if (h0 + i >= 0 && h0 + i < p.Hin && w0 + j >= 0 && w0 + j < p.Win) mask |= 1u << (4 * i + j);
    // h0 and w0 may be negative: only the mask's pixels are ever read.
    patch = p.in + (int64_t{n} * p.G * p.Cin + int64_t{g} * p.Cin + cl) * HWin + int64_t{h0} * p.Win + w0;
  }
  const float* ublock = p.U + int64_t{g} * p.Cpad * 16 * p.Kpad + k0;

  float px[8];  // the half patch
  float4 uv[2];  // float4 number tid + 256 j of the stage's U
  // The stage of input channels [c0, c0 + kCC) into registers.
  auto fetch = [&](int c0) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int f = tid + 256 * j, c = f >> 7, xi = (f >> 3) & 15, q = f & 7;
      uv[j] = load4_global(ublock + (int64_t{c0 + c} * 16 + xi) * p.Kpad + 4 * q);
    }
    const bool live = c0 + cl < p.Cin;
    const float* src = patch + int64_t{c0} * HWin;
#pragma unroll
    for (int e = 0; e < 8; ++e) px[e] = live && (mask >> e & 1u) ? src[(e / 4) * p.Win + e % 4] : 0.0f;
  };
  // The registers into shared stage s, the patch transformed: each half transforms its two rows
  // (d B), then the partners (lanes l and l ^ 16) swap two columns of them, so that each holds
  // whole columns (half 0: 0 and 1, half 1: 2 and 3) for the column transform (B^T .).
  auto stash = [&](Stage& s) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int f = tid + 256 * j, c = f >> 7, xi = (f >> 3) & 15, q = f & 7;
      store4_shared(s.u + (c * 16 + xi) * 32 + col(xi, 4 * q), uv[j]);
    }
    float rows[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) winograd::input_1d(px[4 * i], px[4 * i + 1], px[4 * i + 2], px[4 * i + 3], rows[i]);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float mine[2], theirs[2];  // this half's two rows of column (2 half + j), and the partner's
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mine[i] = half ? rows[i][2 + j] : rows[i][j];
        theirs[i] = __shfl_xor_sync(0xffffffffu, half ? rows[i][j] : rows[i][2 + j], 16);
      }
      float o[4];
      if (half)
        winograd::input_1d(theirs[0], theirs[1], mine[0], mine[1], o);
      else
        winograd::input_1d(mine[0], mine[1], theirs[0], theirs[1], o);
      const int b = 2 * half + j;
#pragma unroll
      for (int a = 0; a < 4; ++a) s.v[(cl * 16 + 4 * a + b) * 32 + col(4 * a + b, tl)] = o[a];
    }
  };

  const int xi = tid >> 4, kq = (tid >> 2) & 3, tq = tid & 3;
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
  const int ua = xi * 32 + col(xi, 4 * kq), ub = xi * 32 + col(xi, 16 + 4 * kq);
  const int va = xi * 32 + col(xi, 4 * tq), vb = xi * 32 + col(xi, 16 + 4 * tq);

  // Step s reads stages[s & 1] and fills the other; the one barrier per step separates both from
  // step s - 1, which read the other.
  const int steps = p.Cpad / kCC;
  fetch(0);
  stash(stages[0]);
  __syncthreads();
  for (int s = 0; s < steps; ++s) {
    const bool more = s + 1 < steps;
    if (more) fetch((s + 1) * kCC);
    const Stage& cur = stages[s & 1];
#pragma unroll
    for (int c = 0; c < kCC; ++c) {
      float a[8], b[8];
      load4(cur.u + c * 512 + ua, a);
      load4(cur.u + c * 512 + ub, a + 4);
      load4(cur.v + c * 512 + va, b);
      load4(cur.v + c * 512 + vb, b + 4);
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (more) stash(stages[(s + 1) & 1]);
    __syncthreads();
  }

  // Output transform, round r: the pairs of filters own(kq, 2r), own(kq, 2r + 1) with all 32
  // tiles. Pair pr = (2 kq + ii) 32 + tile sits at m[xi kRow + pr + pr / 64]: the skew by kq puts
  // a warp's 32 stores (2 xi x 4 kq x 4 tq) in 32 banks; thread tid then reads pair tid's 16
  // values, a warp 32 consecutive floats per row.
  float* m = reinterpret_cast<float*>(stages);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int ii = 0; ii < 2; ++ii)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int pr = (2 * kq + ii) * 32 + own(tq, j);
        m[xi * kRow + pr + (pr >> 6)] = acc[2 * r + ii][j];
      }
    __syncthreads();
    const int kk = tid >> 5, k = k0 + own(kk >> 1, 2 * r + (kk & 1)), t = t0 + (tid & 31);
    if (k < p.Cout && t < p.tiles.T) {
      float mv[16];
#pragma unroll
      for (int e = 0; e < 16; ++e) mv[e] = m[e * kRow + tid + (tid >> 6)];
      float am[2][4], y[2][2];  // A^T M, then A^T M A
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        float o[2];
        winograd::output_1d(mv[b], mv[4 + b], mv[8 + b], mv[12 + b], o);
        am[0][b] = o[0];
        am[1][b] = o[1];
      }
#pragma unroll
      for (int a = 0; a < 2; ++a) winograd::output_1d(am[a][0], am[a][1], am[a][2], am[a][3], y[a]);
      const float bias = p.bias != nullptr ? p.bias[g * p.Cout + k] : 0.0f;
      int n, th, tw;
      p.tiles.locate(t, n, th, tw);
      float* dst = p.out + (int64_t{n} * p.G * p.Cout + int64_t{g} * p.Cout + k) * p.Hout * p.Wout;
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const int h = 2 * th + a, w_ = 2 * tw + b;
          if (h < p.Hout && w_ < p.Wout) dst[h * p.Wout + w_] = y[a][b] + bias;
        }
    }
    __syncthreads();  // round r's pairs are read before round r + 1 overwrites them
  }
}

// ------------------------------------------------------------------ weight-grad
// dU[xi][k][c] = sum over tiles t of dM[xi][k][t] V[xi][c][t], with dM = A dY A^T the adjoint of
// the output transform (dY: dy's 2x2 tile, zero past the output) and V the forward's input
// transform; then dw[k, c] = G^T dU[.][k][c] G. The tiles are split over grid.z (a deterministic
// split-K): split z sums its tiles into its own dU slice of `part`, and reduce_weight_grad adds
// the slices in order before the filter transform's adjoint.
//
// Launch: grid (channel blocks of 32, filter blocks of 32, groups x splits), 256 threads, the
// same thread tiling as the forward (8 filters x 8 channels of one xi). Stages of 8 tiles go
// through one 32 KB shared buffer, the next stage's dy and x values in flight in registers
// during the FMAs: thread (q, tt) = (tid / 8, tid % 8) transforms filter q's dY and channel q's
// patch of stage tile tt (a warp: 4 planes x 8 neighbouring tiles per load).
constexpr int kTS = 8;  // tiles per stage

struct WinoGradPass {
  const float* x;   // (N, G Cg, H, W)
  const float* dy;  // (N, G Kg, P, Q)
  float* part;      // [splits][G][16][Kpad][Cpad]
  int Cg, H, W, Kg, P, Q, ph, pw, G;
  TileGrid tiles;  // of dy
  int Cpad, Kpad, splits, per_split;  // per_split: tiles per split, a multiple of kTS
};

struct alignas(16) GradStage {
  float m[kTS * 16 * 32];  // [tile][xi][32 filters]
  float v[kTS * 16 * 32];  // [tile][xi][32 channels]
};

// Column of logical column j in row (tt, xi) of a GradStage operand: col()'s half swap, and the
// float4 slots rotated by tile, so that a warp's stores (4 columns x 8 tiles) hit 32 banks; the
// FMA loop reads one tile at a time, where the rotation is uniform.
FASTOPT_HD int grad_col(int tt, int xi, int j) { return col(xi, j) ^ (4 * tt); }

__global__ void __launch_bounds__(kWinoThreads, 2) winograd_weight_kernel(const WinoGradPass p) {
  __shared__ GradStage stage;
  const int tid = static_cast<int>(threadIdx.x);
  const int c0 = static_cast<int>(blockIdx.x) * kBK, k0 = static_cast<int>(blockIdx.y) * kBK;
  const int g = static_cast<int>(blockIdx.z) % p.G, split = static_cast<int>(blockIdx.z) / p.G;
  const int t_begin = split * p.per_split, t_end = min(p.tiles.T, t_begin + p.per_split);
  const int q = tid >> 3, tt = tid & 7;
  const bool k_live = k0 + q < p.Kg, c_live = c0 + q < p.Cg;
  const float* dy_plane = p.dy + (int64_t{g} * p.Kg + k0 + q) * p.P * p.Q;  // + n G Kg P Q per tile
  const float* x_plane = p.x + (int64_t{g} * p.Cg + c0 + q) * p.H * p.W;
  const int64_t dy_image = int64_t{p.G} * p.Kg * p.P * p.Q, x_image = int64_t{p.G} * p.Cg * p.H * p.W;

  float dyv[4], xv[16];
  // Stage tiles [t, t + kTS): this thread's dY values and patch into registers (0 outside).
  auto fetch = [&](int t) {
    t += tt;
    int n = 0, th = 0, tw = 0;
    const bool live = t < t_end;
    if (live) p.tiles.locate(t, n, th, tw);
    const float* dsrc = dy_plane + n * dy_image;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = 2 * th + e / 2, w_ = 2 * tw + e % 2;
      dyv[e] = live && k_live && h < p.P && w_ < p.Q ? dsrc[h * p.Q + w_] : 0.0f;
    }
    const float* xsrc = x_plane + n * x_image;
    const int h0 = 2 * th - p.ph, w0 = 2 * tw - p.pw;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      const int h = h0 + e / 4, w_ = w0 + e % 4;
      xv[e] = live && c_live && h >= 0 && h < p.H && w_ >= 0 && w_ < p.W ? xsrc[h * p.W + w_] : 0.0f;
    }
  };
  auto stash = [&]() {
    float rows[4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) winograd::output_grad_1d(dyv[2 * i], dyv[2 * i + 1], rows[i]);
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      float o[4];
      winograd::output_grad_1d(rows[0][b], rows[1][b], o);
#pragma unroll
      for (int a = 0; a < 4; ++a) stage.m[(tt * 16 + 4 * a + b) * 32 + grad_col(tt, 4 * a + b, q)] = o[a];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) winograd::input_1d(xv[4 * i], xv[4 * i + 1], xv[4 * i + 2], xv[4 * i + 3], rows[i]);
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      float o[4];
      winograd::input_1d(rows[0][b], rows[1][b], rows[2][b], rows[3][b], o);
#pragma unroll
      for (int a = 0; a < 4; ++a) stage.v[(tt * 16 + 4 * a + b) * 32 + grad_col(tt, 4 * a + b, q)] = o[a];
    }
  };

  const int xi = tid >> 4, kq = (tid >> 2) & 3, cq = tid & 3;
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
  if (t_begin < t_end) fetch(t_begin);
  for (int t = t_begin; t < t_end; t += kTS) {
    stash();
    __syncthreads();
    if (t + kTS < t_end) fetch(t + kTS);
#pragma unroll
    for (int s = 0; s < kTS; ++s) {
      const float* mr = stage.m + (s * 16 + xi) * 32;
      const float* vr = stage.v + (s * 16 + xi) * 32;
      float a[8], b[8];
      load4(mr + grad_col(s, xi, 4 * kq), a);
      load4(mr + grad_col(s, xi, 16 + 4 * kq), a + 4);
      load4(vr + grad_col(s, xi, 4 * cq), b);
      load4(vr + grad_col(s, xi, 16 + 4 * cq), b + 4);
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();  // the stage is read before the next stash overwrites it
  }
  // This split's dU[xi][k][c] for the thread's 8 x 8, two float4 runs per filter.
  float* dst = p.part + ((int64_t{split} * p.G + g) * 16 + xi) * p.Kpad * p.Cpad;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    float* row = dst + int64_t{k0 + own(kq, i)} * p.Cpad + c0;
    store4_global(row + own(cq, 0), make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
    store4_global(row + own(cq, 4), make_float4(acc[i][4], acc[i][5], acc[i][6], acc[i][7]));
  }
}

// dw[g Kg + k][c] = G^T (sum over splits, in order, of dU[split][g][.][k][c]) G; one thread per
// (g, k, c), c fastest. accumulate: the result is added into dw (store_grad).
__global__ void __launch_bounds__(kWinoThreads) reduce_weight_grad(const WinoGradPass p, float* dw, int64_t total,
                                                                   bool accumulate) {
  for (int64_t e = blockIdx.x * int64_t{kWinoThreads} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * kWinoThreads) {
    const int c = static_cast<int>(e % p.Cg);
    const int64_t gk = e / p.Cg;
    const int k = static_cast<int>(gk % p.Kg), g = static_cast<int>(gk / p.Kg);
    const int64_t slice = int64_t{p.G} * 16 * p.Kpad * p.Cpad, plane = int64_t{p.Kpad} * p.Cpad;
    const float* src = p.part + int64_t{g} * 16 * plane + int64_t{k} * p.Cpad + c;
    float u[16];
    for (int xi = 0; xi < 16; ++xi) {
      float v = 0.0f;
      for (int s = 0; s < p.splits; ++s) v += src[s * slice + xi * plane];
      u[xi] = v;
    }
    float rows[4][3];
    for (int a = 0; a < 4; ++a) winograd::weight_grad_1d(u[4 * a], u[4 * a + 1], u[4 * a + 2], u[4 * a + 3], rows[a]);
    float* out = dw + e * 9;
    for (int s_ = 0; s_ < 3; ++s_) {
      float o[3];
      winograd::weight_grad_1d(rows[0][s_], rows[1][s_], rows[2][s_], rows[3][s_], o);
      for (int r = 0; r < 3; ++r) store_grad(out + r * 3 + s_, o[r], accumulate);
    }
  }
}

bool enabled() { return switch_on(switches::cuda_conv2d_winograd); }

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// in (N, G Cin, Hin, Win) -> out (N, G Cout, Hout, Wout); flip: the data-grad's filters.
void run(const Conv2dShape& s, bool flip, const float* in, const float* w, const float* b, float* out, void* stream) {
  const cudaStream_t st = as_stream(stream);
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
  WinoPass p{};
  p.in = in;
  p.bias = b;
  p.out = out;
  p.G = static_cast<int>(s.groups);
  if (flip) {
    p.Cin = int(Kg); p.Hin = int(s.P); p.Win = int(s.Q);
    p.Cout = int(Cg); p.Hout = int(s.H); p.Wout = int(s.W);
    p.ph = int(2 - s.pad_h); p.pw = int(2 - s.pad_w);
  } else {
    p.Cin = int(Cg); p.Hin = int(s.H); p.Win = int(s.W);
    p.Cout = int(Kg); p.Hout = int(s.P); p.Wout = int(s.Q);
    p.ph = int(s.pad_h); p.pw = int(s.pad_w);
  }
  p.tiles = TileGrid::make(s.N, p.Hout, p.Wout);
  p.Cpad = static_cast<int>(round_up(p.Cin, kCC));
  p.Kpad = static_cast<int>(round_up(p.Cout, kBK));

  const int64_t u_numel = s.groups * p.Cpad * int64_t{p.Kpad};  // (g, c, k) triples; 16 floats each
  const detail::Scratch scratch(static_cast<size_t>(u_numel) * 16 * sizeof(float), st);
  float* U = reinterpret_cast<float*>(scratch.bytes());
  p.U = U;
  transform_filters<<<detail::grid_stride_grid(u_numel, kWinoThreads), kWinoThreads, 0, st>>>(
      w, int(Cg), int(Kg), p.Cpad, p.Kpad, flip, U, u_numel);
  check(cudaGetLastError(), flip ? "conv2d_backward_data (Winograd filters)" : "conv2d_forward (Winograd filters)");
  const dim3 grid(static_cast<unsigned>((p.tiles.T + kBT - 1) / kBT), static_cast<unsigned>(p.Kpad / kBK),
                  static_cast<unsigned>(p.G));
  winograd_kernel<<<grid, kWinoThreads, 0, st>>>(p);
  check(cudaGetLastError(), flip ? "conv2d_backward_data (Winograd)" : "conv2d_forward (Winograd)");
}

}  // namespace

bool winograd_applies(const Conv2dShape& s, bool allow_tf32) {
  if (allow_tf32 || !enabled()) return false;
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
  // Tiles of the larger of the two passes' outputs (the forward's y, the data-grad's dx).
  const int64_t tiles = s.N * ((std::max(s.P, s.H) + 1) / 2) * ((std::max(s.Q, s.W) + 1) / 2);
  return s.N > 0 && s.P > 0 && s.Q > 0 && s.R == 3 && s.S == 3 && s.stride_h == 1 && s.stride_w == 1 &&
         s.dil_h == 1 && s.dil_w == 1 && s.pad_h <= 2 && s.pad_w <= 2 && std::min(Cg, Kg) >= kBK && s.groups < 65536 &&
         conv::fits_int32(conv::make_dims(s)) && tiles < (int64_t{1} << 31) - kBT;
}

void winograd_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, void* stream) {
  run(s, false, x, w, b, y, stream);
}

void winograd_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx, void* stream) {
  run(s, true, dy, w, nullptr, dx, stream);
}

void winograd_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate,
                              void* stream) {
  const cudaStream_t st = as_stream(stream);
  WinoGradPass p{};
  p.x = x;
  p.dy = dy;
  p.Cg = int(s.C / s.groups); p.H = int(s.H); p.W = int(s.W);
  p.Kg = int(s.K / s.groups); p.P = int(s.P); p.Q = int(s.Q);
  p.ph = int(s.pad_h); p.pw = int(s.pad_w); p.G = int(s.groups);
  p.tiles = TileGrid::make(s.N, p.P, p.Q);
  const int T = p.tiles.T;
  p.Cpad = static_cast<int>(round_up(p.Cg, kBK));
  p.Kpad = static_cast<int>(round_up(p.Kg, kBK));
  // Splits: about 4 waves of 2 blocks per SM, each split at least 4 stages, dU slices <= 2^26 floats.
  const int64_t per_slice = int64_t{p.G} * 16 * p.Kpad * p.Cpad;
  const int64_t blocks = int64_t{p.G} * (p.Kpad / kBK) * (p.Cpad / kBK);
  const int64_t want = std::max<int64_t>(1, (8 * int64_t{detail::sm_count()} + blocks - 1) / blocks);
  const int64_t splits = std::max<int64_t>(1, std::min({want, int64_t{T} / (4 * kTS), (int64_t{1} << 26) / per_slice,
                                                        int64_t{conv::kMaxGridYZ} / p.G}));
  p.per_split = static_cast<int>(round_up((T + splits - 1) / splits, kTS));
  p.splits = (T + p.per_split - 1) / p.per_split;
  const detail::Scratch scratch(static_cast<size_t>(p.splits * per_slice) * sizeof(float), st);
  p.part = reinterpret_cast<float*>(scratch.bytes());
  const dim3 grid(static_cast<unsigned>(p.Cpad / kBK), static_cast<unsigned>(p.Kpad / kBK),
                  static_cast<unsigned>(p.G * p.splits));
  winograd_weight_kernel<<<grid, kWinoThreads, 0, st>>>(p);
  check(cudaGetLastError(), "conv2d_backward_weight (Winograd)");
  const int64_t total = s.groups * int64_t{p.Kg} * p.Cg;
  reduce_weight_grad<<<detail::grid_stride_grid(total, kWinoThreads), kWinoThreads, 0, st>>>(p, dw, total,
                                                                                              accumulate);
  check(cudaGetLastError(), "conv2d_backward_weight (Winograd split sum)");
}

}  // namespace fastopt::cuda

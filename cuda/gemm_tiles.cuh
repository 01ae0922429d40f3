/*
The tiled GEMM engine of the CUDA backend, shared by conv2d (cuda/conv2d.cu, whose problems in
conv2d_tiles.cuh turn each pass into a GEMM) and linear (cuda/linear.cu): FASTOPT_HD functions
and __device__ main loops, so that a host program can include this header with a plain C++
compiler and replay a kernel as loops over (block, thread) (tests/native/conv2d_cuda_replay.cpp).

A problem type Prob supplies the operands and the store: a(g, m, k), b(g, k, n) (or hoisted
column generators), store(g, split, m, n, v), over M x N x Kd per group g, with int32 GEMM
coordinates (the host checks the extents) and int64 addresses.

Bytes / launch: each block of kThreads = 256 computes a BM x BN tile through two shared-memory
tiles BK deep: the next step's operands are loaded into registers while the current tile is
multiplied, then stored into the other buffer; split-K over blockIdx.z for tall reductions, the
splits summed later in a fixed order (deterministic).

Math, one engine for three kinds (Math below): kFma, exact fp32 FMAs over BK = 8 (stage 2);
kTf32 (opt-in allow_tf32), the same fp32 tiles through mma.sync.m16n8k8 TF32 tensor cores
(stage 3); kBf16, bf16 operands staged as bf16 in tiles BK = 16 deep (the same bytes per step as
fp32's 8) through mma.sync.m16n8k16 with fp32 accumulators (gemm_bf16.cuh). All three share the
problems' loaders, the copy slots, the split ranges and the tile planning; kTf32 and kBf16 share
the warp layout and the accumulators' fragment order (store_outputs_mma). A problem reads its
operands as float (a bf16 problem widens exactly, and the bf16 tile narrows exactly) and its store
rounds once to its output type, or keeps fp32 (weight-grad partials and dw).
*/
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastopt/common.h"

namespace fastopt::cuda::tiled {

// ------------------------------------------------------------------ stage 2: tiled implicit GEMM
// A block of kThreads computes a BM x BN tile of C = A B (per group g = blockIdx.z / splits),
// stepping through the reduction BK = 8 at a time. Shared tiles are k-major, As[k][m] and Bs[k][n],
// each row padded by 4 floats: the stores of the global-to-shared copy then hit 32 distinct banks,
// and the float4 fragment reads stay 16-byte aligned. Thread (tm, tn) = (tid / 16, tid % 16) owns
// rows tm*4 + 64 i + {0..3} and columns tn*4 + 64 j + {0..3}: a warp's float4 reads of a k-row
// cover 256 contiguous bytes (conflict-free) and every output is summed over k ascending.

constexpr int kThreads = 256;
constexpr int kBK = 8;
constexpr int kPad = 4;

enum class Math { kFma, kTf32, kBf16 };

template <int BM, int BN>
struct Tile {
  static_assert((BM == 64 || BM == 128) && (BN == 64 || BN == 128), "16 x 16 threads, 4-wide groups");
  static constexpr int TM = BM / 16, TN = BN / 16;          // outputs per thread along m and n
  static constexpr int LA = BM * kBK / kThreads;           // A elements each thread copies per step
  static constexpr int LB = BN * kBK / kThreads;
  static constexpr int BK = kBK;
  alignas(16) float a[kBK][BM + kPad];
  alignas(16) float b[kBK][BN + kPad];
  FASTOPT_HD void put_a(int m, int kk, float v) { a[kk][m] = v; }
  FASTOPT_HD void put_b(int n, int kk, float v) { b[kk][n] = v; }
};

// Local coordinates (row along the tile's outer dim, k) of a thread's i-th copied element. With
// kAlongK, 8 consecutive threads read 8 consecutive k of one row (the operand is contiguous along
// k); otherwise consecutive threads read consecutive rows. BK: the tile's depth.
template <int B, bool kAlongK, int BK = kBK>
FASTOPT_HD void copy_slot(int tid, int i, int& row, int& kk) {
  if (kAlongK) {
    kk = tid % BK;
    row = tid / BK + (kThreads / BK) * i;
  } else {
    row = tid % B;
    kk = tid / B + (kThreads / B) * i;
  }
}

// A thread's B slots keep their column j (the GEMM's n) for the whole main loop: copy_slot's
// row depends on tid and the slot alone. A problem that declares BColumn hoists what it derives
// from j (image and pixel offsets: two divisions and a few multiplies) out of the k loop, with
// b_column(g, j) once and b_at(column, k) per element, when it sets kHoistB; the others keep
// b(g, k, j). (The 1x1 forward ran slower hoisted on an H100, 0.77 ms against 0.62, for about the
// same PTX: its b is one division and one load.)
template <class Prob, class = void>
struct ColumnOf {
  using type = int;
  static FASTOPT_HD int make(const Prob&, int, int j) { return j; }
  static FASTOPT_HD float at(const Prob& pb, int g, int j, int k) { return pb.b(g, k, j); }
};
template <class Prob>
struct ColumnOf<Prob, std::enable_if_t<Prob::kHoistB>> {
  using type = typename Prob::BColumn;
  static FASTOPT_HD type make(const Prob& pb, int g, int j) { return pb.b_column(g, j); }
  static FASTOPT_HD float at(const Prob& pb, int, const type& c, int k) { return pb.b_at(c, k); }
};

// Tl: the tile type (Tile, or gemm_bf16.cuh's TileBf16), whose LA, LB and BK set the copy slots.
template <class Prob, class Tl>
using Columns = typename ColumnOf<Prob>::type[Tl::LB];

template <class Prob, int BM, int BN, class Tl = Tile<BM, BN>>
FASTOPT_HD void make_columns(const Prob& pb, int g, int tid, int n0, Columns<Prob, Tl>& cols) {
#pragma unroll
  for (int i = 0; i < Tl::LB; ++i) {
    int n, kk;
    copy_slot<BN, Prob::kBAlongK, Tl::BK>(tid, i, n, kk);
    cols[i] = ColumnOf<Prob>::make(pb, g, n0 + n);
  }
}

// A problem whose operands both run along k (weight-grad) may declare KCoord: a thread's A and B
// slots then share one k per step (copy_slot along k: kk = tid % 8), decomposed once per step by
// k_coord and read with a_at / b_at, instead of once per element.
template <class Prob, class = void>
struct HasKCoord : std::false_type {};
template <class Prob>
struct HasKCoord<Prob, std::void_t<typename Prob::KCoord>> : std::true_type {};

// Reads this thread's share of the A and B tiles at (m0, n0, k0) into registers (0 outside the
// problem or past k_end), so that the global loads of the next step overlap the current FMAs.
template <class Prob, int BM, int BN, class Tl = Tile<BM, BN>>
FASTOPT_HD void load_tiles(const Prob& pb, int g, int tid, int m0, int n0, int k0, int k_end,
                           const Columns<Prob, Tl>& cols, float (&ra)[Tl::LA], float (&rb)[Tl::LB]) {
  constexpr int BK = Tl::BK;
  if constexpr (HasKCoord<Prob>::value) {
    static_assert(Prob::kAAlongK && Prob::kBAlongK && Prob::kHoistB, "one k per thread and step");
    const int k = k0 + tid % BK;
    const bool live = k < k_end;
    const typename Prob::KCoord kc = pb.k_coord(live ? k : k0);
#pragma unroll
    for (int i = 0; i < Tl::LA; ++i) {
      int m, kk;
      copy_slot<BM, true, BK>(tid, i, m, kk);
      ra[i] = (m0 + m < pb.M && live) ? pb.a_at(g, m0 + m, kc) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < Tl::LB; ++i) {
      int n, kk;
      copy_slot<BN, true, BK>(tid, i, n, kk);
      rb[i] = (n0 + n < pb.N && live) ? pb.b_at(cols[i], kc) : 0.0f;
    }
  } else {
#pragma unroll
    for (int i = 0; i < Tl::LA; ++i) {
      int m, kk;
      copy_slot<BM, Prob::kAAlongK, BK>(tid, i, m, kk);
      ra[i] = (m0 + m < pb.M && k0 + kk < k_end) ? pb.a(g, m0 + m, k0 + kk) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < Tl::LB; ++i) {
      int n, kk;
      copy_slot<BN, Prob::kBAlongK, BK>(tid, i, n, kk);
      rb[i] = (n0 + n < pb.N && k0 + kk < k_end) ? ColumnOf<Prob>::at(pb, g, cols[i], k0 + kk) : 0.0f;
    }
  }
}

// The same without hoisted columns (the host replay's entry point).
template <class Prob, int BM, int BN, class Tl = Tile<BM, BN>>
FASTOPT_HD void load_tiles(const Prob& pb, int g, int tid, int m0, int n0, int k0, int k_end, float (&ra)[Tl::LA],
                           float (&rb)[Tl::LB]) {
  Columns<Prob, Tl> cols;
  make_columns<Prob, BM, BN, Tl>(pb, g, tid, n0, cols);
  load_tiles<Prob, BM, BN, Tl>(pb, g, tid, m0, n0, k0, k_end, cols, ra, rb);
}

template <class Prob, int BM, int BN, class Tl = Tile<BM, BN>>
FASTOPT_HD void store_tiles(Tl& t, int tid, const float (&ra)[Tl::LA], const float (&rb)[Tl::LB]) {
#pragma unroll
  for (int i = 0; i < Tl::LA; ++i) {
    int m, kk;
    copy_slot<BM, Prob::kAAlongK, Tl::BK>(tid, i, m, kk);
    t.put_a(m, kk, ra[i]);
  }
#pragma unroll
  for (int i = 0; i < Tl::LB; ++i) {
    int n, kk;
    copy_slot<BN, Prob::kBAlongK, Tl::BK>(tid, i, n, kk);
    t.put_b(n, kk, rb[i]);
  }
}

// 4 floats from a 16-byte aligned shared-memory address: one ld.shared.v4 on the GPU.
FASTOPT_HD void load4(const float* p, float* v) {
#if defined(__CUDA_ARCH__)
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
#else
  for (int e = 0; e < 4; ++e) v[e] = p[e];
#endif
}

// acc[i][j] += sum over the tile's 8 k (ascending) of A[row i][k] * B[k][col j].
template <int BM, int BN>
FASTOPT_HD void tile_fma(const Tile<BM, BN>& t, int tid, float (&acc)[Tile<BM, BN>::TM][Tile<BM, BN>::TN]) {
  constexpr int TM = Tile<BM, BN>::TM, TN = Tile<BM, BN>::TN;
  const int tm = tid / 16, tn = tid % 16;
#pragma unroll
  for (int kk = 0; kk < kBK; ++kk) {
    float a[TM], b[TN];
#pragma unroll
    for (int i = 0; i < TM / 4; ++i) load4(&t.a[kk][tm * 4 + 64 * i], a + 4 * i);
#pragma unroll
    for (int j = 0; j < TN / 4; ++j) load4(&t.b[kk][tn * 4 + 64 * j], b + 4 * j);
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

template <class Prob, int BM, int BN>
FASTOPT_HD void store_outputs(const Prob& pb, int g, int split, int tid, int m0, int n0,
                              const float (&acc)[Tile<BM, BN>::TM][Tile<BM, BN>::TN]) {
  constexpr int TM = Tile<BM, BN>::TM, TN = Tile<BM, BN>::TN;
  const int tm = tid / 16, tn = tid % 16;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + tm * 4 + 64 * (i / 4) + i % 4;
    if (m >= pb.M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + tn * 4 + 64 * (j / 4) + j % 4;
      if (n < pb.N) pb.store(g, split, m, n, acc[i][j]);
    }
  }
}

// ---- stage 3, opt-in (allow_tf32): the same tiles through TF32 tensor cores, mma.sync.m16n8k8.
// The 8 warps form 2 (m) x 4 (n); warp w owns rows (w / 4) BM/2 + [0, BM/2) and columns
// (w % 4) BN/4 + [0, BN/4) of the tile as MI x NI fragments of 16 x 8. PTX fragment layout, with
// g = lane / 4 and t = lane % 4:
//   A 16x8: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);  B 8x8: b0 (t, g), b1 (t+4, g);
//   C 16x8: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
// A thread keeps element q of fragment (mi, ni) at flat index f = (mi NI + ni) 4 + q of the same
// TM x TN accumulator array the FMA path uses (MI NI 4 = TM TN). One mma per fragment and k step
// sums the 8 products in the tensor core's fixed order, so results are still run-to-run identical.
template <int BM, int BN>
struct Mma {
  static constexpr int MI = BM / 2 / 16, NI = BN / 4 / 8;
  static_assert(MI * NI * 4 == Tile<BM, BN>::TM * Tile<BM, BN>::TN, "same accumulators as the FMA path");
};

// (row, col) in the tile of the thread's flat accumulator f.
template <int BM, int BN>
FASTOPT_HD void mma_coords(int tid, int f, int& row, int& col) {
  constexpr int NI = Mma<BM, BN>::NI;
  const int warp = tid / 32, g = (tid % 32) / 4, t = tid % 4;
  const int mi = f / (4 * NI), ni = (f / 4) % NI, q = f % 4;
  row = (warp / 4) * (BM / 2) + mi * 16 + g + 8 * (q / 2);
  col = (warp % 4) * (BN / 4) + ni * 8 + 2 * t + q % 2;
}

// x rounded to TF32 (10 mantissa bits, to nearest, ties away from zero: cvt.rna.tf32.f32).
FASTOPT_HD float to_tf32(float x) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return __uint_as_float(r);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

// The thread's A and B fragments of this k step, rounded to TF32: a[mi][0..3], b[ni][0..1] in the
// register order of the layout above.
template <int BM, int BN>
FASTOPT_HD void mma_fragments(const Tile<BM, BN>& t, int tid, float (&a)[Mma<BM, BN>::MI][4],
                              float (&b)[Mma<BM, BN>::NI][2]) {
  const int warp = tid / 32, g = (tid % 32) / 4, tq = tid % 4;
  const int wm = (warp / 4) * (BM / 2), wn = (warp % 4) * (BN / 4);
#pragma unroll
  for (int mi = 0; mi < Mma<BM, BN>::MI; ++mi) {
    const int r = wm + mi * 16 + g;
    a[mi][0] = to_tf32(t.a[tq][r]);
    a[mi][1] = to_tf32(t.a[tq][r + 8]);
    a[mi][2] = to_tf32(t.a[tq + 4][r]);
    a[mi][3] = to_tf32(t.a[tq + 4][r + 8]);
  }
#pragma unroll
  for (int ni = 0; ni < Mma<BM, BN>::NI; ++ni) {
    const int c = wn + ni * 8 + g;
    b[ni][0] = to_tf32(t.b[tq][c]);
    b[ni][1] = to_tf32(t.b[tq + 4][c]);
  }
}

#if defined(__CUDACC__) || defined(FASTOPT_CUDA_EMULATION)
// acc += a b over every (mi, ni) fragment pair through mma(d0..d3, a[mi], b[ni]): fragment f =
// (mi NI + ni) 4 holds accumulators f .. f + 3 of the TM x TN array (the TF32 and bf16 stages).
template <int BM, int BN, class R, class MmaOp>
__device__ __forceinline__ void mma_all(float (&acc)[Tile<BM, BN>::TM][Tile<BM, BN>::TN],
                                        const R (&a)[Mma<BM, BN>::MI][4], const R (&b)[Mma<BM, BN>::NI][2], MmaOp mma) {
  constexpr int TN = Tile<BM, BN>::TN, MI = Mma<BM, BN>::MI, NI = Mma<BM, BN>::NI;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
      const int f = (mi * NI + ni) * 4;
      mma(acc[f / TN][f % TN], acc[(f + 1) / TN][(f + 1) % TN], acc[(f + 2) / TN][(f + 2) % TN],
          acc[(f + 3) / TN][(f + 3) % TN], a[mi], b[ni]);
    }
}
#endif

}  // namespace fastopt::cuda::tiled

// The bf16 stage (TileBf16, its fragments and tile_mma_bf16) builds on Tile and Mma above.
#include "gemm_bf16.cuh"

namespace fastopt::cuda::tiled {

#if defined(__CUDACC__) || defined(FASTOPT_CUDA_EMULATION)
// d += a b for one warp-wide m16n8k8 TF32 product, each lane holding its fragments.
__device__ __forceinline__ void mma_m16n8k8_tf32(float& d0, float& d1, float& d2, float& d3, const float (&a)[4],
                                                 const float (&b)[2]) {
#if defined(FASTOPT_CUDA_EMULATION)
  fastopt_emulation::mma_m16n8k8_tf32(d0, d1, d2, d3, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
      : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])), "r"(__float_as_uint(a[3])),
        "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
#endif
}

// acc += this k step's A B for the thread's fragments (device only: the mma is warp-collective;
// a host replay gathers all lanes' mma_fragments and applies the PTX layout itself).
template <int BM, int BN>
__device__ __forceinline__ void tile_mma(const Tile<BM, BN>& t, int tid,
                                         float (&acc)[Tile<BM, BN>::TM][Tile<BM, BN>::TN]) {
  float a[Mma<BM, BN>::MI][4], b[Mma<BM, BN>::NI][2];
  mma_fragments<BM, BN>(t, tid, a, b);
  mma_all<BM, BN>(acc, a, b, [](float& d0, float& d1, float& d2, float& d3, const float(&x)[4], const float(&y)[2]) {
    mma_m16n8k8_tf32(d0, d1, d2, d3, x, y);
  });
}

// The block's main loop (device only: it synchronizes the block), shared by the conv and linear
// GEMM kernels: acc = this block's (m0, n0) tile of A B over the reduction range [k_begin, k_end)
// of group g, double-buffered through `tiles`. Step k reads tiles[buf] and fills tiles[buf ^ 1];
// the one barrier per step separates both from the previous step, which read tiles[buf ^ 1].
// kMath picks the tile type and what a k step runs: FMAs (tile_fma), TF32 mma (tile_mma) or
// bf16 mma (tile_mma_bf16).
template <class Prob, int BM, int BN, Math kMath>
__device__ __forceinline__ void gemm_mainloop(const Prob& pb, int g, int tid, int m0, int n0, int k_begin, int k_end,
                                              TileFor<BM, BN, kMath> (&tiles)[2],
                                              float (&acc)[Tile<BM, BN>::TM][Tile<BM, BN>::TN]) {
  using T = TileFor<BM, BN, kMath>;
  constexpr int BK = T::BK;
#pragma unroll
  for (int i = 0; i < T::TM; ++i)
#pragma unroll
    for (int j = 0; j < T::TN; ++j) acc[i][j] = 0.0f;
  if (k_begin >= k_end) return;
  float ra[T::LA], rb[T::LB];
  Columns<Prob, T> cols;
  make_columns<Prob, BM, BN, T>(pb, g, tid, n0, cols);
  load_tiles<Prob, BM, BN, T>(pb, g, tid, m0, n0, k_begin, k_end, cols, ra, rb);
  store_tiles<Prob, BM, BN, T>(tiles[0], tid, ra, rb);
  __syncthreads();
  int buf = 0;
  for (int k0 = k_begin; k0 < k_end; k0 += BK) {
    const bool more = k0 + BK < k_end;
    if (more) load_tiles<Prob, BM, BN, T>(pb, g, tid, m0, n0, k0 + BK, k_end, cols, ra, rb);
    if constexpr (kMath == Math::kBf16)
      tile_mma_bf16<BM, BN>(tiles[buf], tid, acc);
    else if constexpr (kMath == Math::kTf32)
      tile_mma<BM, BN>(tiles[buf], tid, acc);
    else
      tile_fma<BM, BN>(tiles[buf], tid, acc);
    if (more) store_tiles<Prob, BM, BN, T>(tiles[buf ^ 1], tid, ra, rb);
    __syncthreads();
    buf ^= 1;
  }
}
#endif

template <class Prob, int BM, int BN>
FASTOPT_HD void store_outputs_mma(const Prob& pb, int g, int split, int tid, int m0, int n0,
                                  const float (&acc)[Tile<BM, BN>::TM][Tile<BM, BN>::TN]) {
  constexpr int TN = Tile<BM, BN>::TN;
#pragma unroll
  for (int f = 0; f < Mma<BM, BN>::MI * Mma<BM, BN>::NI * 4; ++f) {
    int row, col;
    mma_coords<BM, BN>(tid, f, row, col);
    if (m0 + row < pb.M && n0 + col < pb.N) pb.store(g, split, m0 + row, n0 + col, acc[f / TN][f % TN]);
  }
}

// The tile epilogue of kMath: a thread's FMA outputs, or its mma fragments' (kTf32 and kBf16
// share the fragment order), each through pb.store.
template <class Prob, int BM, int BN, Math kMath>
FASTOPT_HD void store_tile(const Prob& pb, int g, int split, int tid, int m0, int n0,
                           const float (&acc)[Tile<BM, BN>::TM][Tile<BM, BN>::TN]) {
  if constexpr (kMath == Math::kFma)
    store_outputs<Prob, BM, BN>(pb, g, split, tid, m0, n0, acc);
  else
    store_outputs_mma<Prob, BM, BN>(pb, g, split, tid, m0, n0, acc);
}

// The reduction range [begin, end) of split `split` of `splits`: whole steps of BK (the tile's
// depth), the last split possibly shorter or empty (an empty split stores zeros, which the
// fixed-order sum adds).
FASTOPT_HD void split_range(int Kd, int splits, int split, int& begin, int& end, int BK = kBK) {
  const int steps = (Kd + BK - 1) / BK;
  const int per = (steps + splits - 1) / splits;
  begin = split * per * BK;
  end = begin + per * BK < Kd ? begin + per * BK : Kd;
  if (begin > end) begin = end;
}

// ------------------------------------------------------------------ host-side planning

constexpr int kMaxGridYZ = 65535;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Tile shape of forward and data-grad. Per 8-deep k step a thread does TM TN FMAs against
// (TM + TN) / 4 shared-memory loads and its share of the global loads with their index math, so
// the FMA share of issued instructions grows with the tile: on an H100 a 64x64 tile (4x4 per
// thread) spent half its issue slots on other work. 128x128 when M passes 64 and the grid still
// gives every SM a block; 64x128 when M is at most 64 (the 64-channel layers) and N fills the
// SMs; else 64x64.
enum class Tiles { k64x64, k64x128, k128x128 };

inline Tiles gemm_tiles(int64_t M, int64_t N, int64_t z, int sms) {
  if (M > 64 && ceil_div(M, 128) * ceil_div(N, 128) * z >= sms) return Tiles::k128x128;
  if (M <= 64 && ceil_div(N, 128) * z >= sms) return Tiles::k64x128;
  return Tiles::k64x64;
}

}  // namespace fastopt::cuda::tiled

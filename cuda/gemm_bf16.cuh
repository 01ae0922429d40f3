/*
The bf16 stage of the tiled GEMM engine (gemm_tiles.cuh includes this after Tile and Mma): the
same problems, copy slots, main loop and epilogue, with bf16 tiles and mma.sync.m16n8k16.

Math: bf16 operands, products exact, sums in fp32 accumulators (the tensor core's own order per
mma, then k steps ascending), so a bf16 conv or linear rounds once, in the problem's store. A
block's 8 warps tile BM x BN as TF32's do (2 x 4 warps, MI x NI fragments of 16 x 8 each), so the
accumulators and store_outputs_mma are shared; each 16-deep k step is one m16n8k16 per fragment,
where TF32 takes 8-deep steps. PTX fragment layout, g = lane / 4, t = lane % 4, two bf16 per
32-bit register, the lower k in the low half:
  A 16x16: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
  B 16x8:  b0 (2t..2t+1, g), b1 (2t+8.., g);   C 16x8 as TF32's.

Bytes: a tile holds BM x 16 and BN x 16 bf16 (the bytes of fp32's BM x 8), row-major along k so
that a fragment register is one 4-byte shared load of two consecutive k; rows are padded to 24
bf16 (12 words), so the 8 rows x 4 words a warp's fragment load touches fall in 32 distinct banks.
The global loads go through the problems' float loaders (bf16 widened exactly) and are narrowed
back exactly on the store to shared memory: one code path for both types, at the price of 16-bit
shared stores (with 4-way conflicts for operands not contiguous along k); 16-byte bf16 vector
loads (cp.async) are the next step once a GPU can time it.

Launch: the kernels and grids of the fp32 path (kThreads = 256, tiles 64 or 128 wide, split-K);
sm_80 and sm_90 both run mma.sync. Under the big tiles' register caps (two blocks per SM) ptxas
(CUDA 13, sm_90) spills nothing but 12 bytes in conv data-grad's 128x128 kernel, whose 8 + 8
staged operands are floats: staging them as bf16 pairs would free 8 registers. A Hopper path (sm_90a: wgmma.mma_async m64nNk16 on a
warpgroup of 4 warps, operands read from shared memory through matrix descriptors, tiles filled
by TMA bulk copies into a multi-stage ring guarded by mbarriers) would keep this file's split: the
problems stay the operand and store contract (a TMA path needs im2col'd or plain strided operands:
linear and 1x1 conv first), Math gains a kWgmma whose tile is the TMA's swizzled layout and whose
epilogue reads wgmma's accumulator layout (per warp the m16n8 C layout repeated along n, so
mma_coords generalizes); 90a joins the architecture list only with that code.
*/
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastopt/bf16.h"

namespace fastopt::cuda::tiled {

constexpr int kBK16 = 16;
constexpr int kPad16 = 8;

template <int BM, int BN>
struct TileBf16 {
  static constexpr int TM = Tile<BM, BN>::TM, TN = Tile<BM, BN>::TN;
  static constexpr int LA = BM * kBK16 / kThreads;
  static constexpr int LB = BN * kBK16 / kThreads;
  static constexpr int BK = kBK16;
  alignas(16) bf16 a[BM][kBK16 + kPad16];
  alignas(16) bf16 b[BN][kBK16 + kPad16];
  // v holds a bf16 value (the problems widen bf16 operands): the narrowing is exact.
  FASTOPT_HD void put_a(int m, int kk, float v) { a[m][kk] = from_float<bf16>(v); }
  FASTOPT_HD void put_b(int n, int kk, float v) { b[n][kk] = from_float<bf16>(v); }
};

template <int BM, int BN, Math kMath>
using TileFor = std::conditional_t<kMath == Math::kBf16, TileBf16<BM, BN>, Tile<BM, BN>>;

// Two consecutive bf16 of shared memory (4-byte aligned: an even k of a padded row) as one
// register, the first in the low half.
FASTOPT_HD uint32_t bf16_pair(const bf16* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  return uint32_t{p[0].bits} | uint32_t{p[1].bits} << 16;
#endif
}

// The thread's A and B fragments of this k step in the register order of the layout above.
template <int BM, int BN>
FASTOPT_HD void mma_fragments_bf16(const TileBf16<BM, BN>& t, int tid, uint32_t (&a)[Mma<BM, BN>::MI][4],
                                   uint32_t (&b)[Mma<BM, BN>::NI][2]) {
  const int warp = tid / 32, g = (tid % 32) / 4, k = 2 * (tid % 4);
  const int wm = (warp / 4) * (BM / 2), wn = (warp % 4) * (BN / 4);
#pragma unroll
  for (int mi = 0; mi < Mma<BM, BN>::MI; ++mi) {
    const int r = wm + mi * 16 + g;
    a[mi][0] = bf16_pair(&t.a[r][k]);
    a[mi][1] = bf16_pair(&t.a[r + 8][k]);
    a[mi][2] = bf16_pair(&t.a[r][k + 8]);
    a[mi][3] = bf16_pair(&t.a[r + 8][k + 8]);
  }
#pragma unroll
  for (int ni = 0; ni < Mma<BM, BN>::NI; ++ni) {
    const int c = wn + ni * 8 + g;
    b[ni][0] = bf16_pair(&t.b[c][k]);
    b[ni][1] = bf16_pair(&t.b[c][k + 8]);
  }
}

#if defined(__CUDACC__) || defined(FASTOPT_CUDA_EMULATION)
// d += a b for one warp-wide m16n8k16 bf16 product with fp32 accumulators.
__device__ __forceinline__ void mma_m16n8k16_bf16(float& d0, float& d1, float& d2, float& d3, const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2]) {
#if defined(FASTOPT_CUDA_EMULATION)
  fastopt_emulation::mma_m16n8k16_bf16(d0, d1, d2, d3, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// acc += this k step's A B for the thread's fragments (warp-collective, like tile_mma).
template <int BM, int BN>
__device__ __forceinline__ void tile_mma_bf16(const TileBf16<BM, BN>& t, int tid,
                                              float (&acc)[Tile<BM, BN>::TM][Tile<BM, BN>::TN]) {
  uint32_t a[Mma<BM, BN>::MI][4], b[Mma<BM, BN>::NI][2];
  mma_fragments_bf16<BM, BN>(t, tid, a, b);
  mma_all<BM, BN>(acc, a, b,
                  [](float& d0, float& d1, float& d2, float& d3, const uint32_t(&x)[4], const uint32_t(&y)[2]) {
                    mma_m16n8k16_bf16(d0, d1, d2, d3, x, y);
                  });
}
#endif

}  // namespace fastopt::cuda::tiled

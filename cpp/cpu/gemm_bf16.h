// bfloat16 operands for the packed GEMM of gemm.h, accumulated in float32.
//
// Math: C (M x Nn, fp32) = A (M x Kd) B (Kd x Nn) with A, B in bf16. A product of two bf16
// values is exact in fp32 (8 + 8 significant bits), so every copy computes the same products
// and differs only in how it adds them: the AVX512-BF16 copy (VDPBF16PS) adds pairs of products
// into fp32 lanes, the others take the fp32 micro-kernel of gemm.h on panels widened to fp32 in
// the packing (exact). Each output is reduced over Kd by one thread in fixed blocks, as in
// gemm.h, so no copy depends on the thread count. The callers round an output to bf16 once, at
// the end (round to nearest even; NaN stays NaN), or keep it in fp32 (weight and bias
// gradients: an fp32-master-weight optimizer wants them unrounded).
//
// Packed layout of the AVX512-BF16 copy ("VNNI", pair-interleaved, the B layout of AMX's
// TDPBF16PS too, so a tile kernel can take the same panels): reduction rows come in pairs, and
// an A strip holds a[(p/2)*2*MR + 2*i + p%2] = A[i][p], a B strip b[(p/2)*2*NR + 2*j + p%2] =
// B[p][j], an odd last row paired with zeros. The micro-kernel broadcasts one A pair (32 bits)
// per row and multiplies it into three 16-column B vectors of pairs: 24 VDPBF16PS per pair of
// rows, 2 x the fp32 kernel's multiply-adds per instruction. The packers (conv2d_pack.h,
// linear.cpp) widen bf16 to fp32 at the load and write fp32 strips, or, for the im2col B strips
// (the ones packed per task), the pairs themselves (RowPairs); stage_a / stage_b turn the other
// strips into pairs through a thread-private buffer (exact: the values are bf16 already).
//
// Bytes: the operands move half the bytes of fp32 panels (a 320 x 48 B strip is 30 KiB, in L1).
// Launch: that of gemm::run (an OpenMP team over row x column blocks).
//
// Subnormals: VDPBF16PS treats bf16 subnormals (|v| < 2^-126) as zero and flushes subnormal
// sums, as the instruction is defined (DAZ/FTZ); the fp32 copies keep them. The rounding to bf16
// is done in integer arithmetic in every copy (fastopt/bf16.h; VCVTNE2PS2BF16 would flush
// subnormal results to zero), so every copy rounds an fp32 result to the same bf16 as torch
// and ml_dtypes do.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastopt/bf16.h"
#include "gemm.h"
#include "isa.h"

namespace fastopt::cpu::FASTOPT_ISA {
namespace gemm {

// bf16 storage and its conversions are the house's (fastopt/bf16.h): exact widening, rounding
// to nearest even with NaN kept quiet, subnormals kept.
using fastopt::bf16;
static_assert(sizeof(bf16) == 2, "bf16 arrays are read as 16-bit lanes");

#if defined(__AVX512F__)
// 16 lanes at p (masked: lanes outside m are zero and not read), as fp32.
inline __m512 load16(__mmask16 m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16(__mmask16 m, const bf16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
// 16 lanes at p and p + 1 ... (even elements of 32 at p): a column stride of 2. Lanes of the
// 32-bit mask m (source elements) outside it are zero and not read.
inline __m512 load16_evens(uint32_t m, const float* p) {
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p), evens,
                                _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), p + 16));
}
inline __m512 load16_evens(uint32_t m, const bf16* p) {
  // Element 2i is the low half of 32-bit lane i: shift it into the high half.
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_maskz_loadu_epi16(m, p), 16));
}
// Stores lanes m of v at p: fp32 as it is, bf16 rounded as from_float<bf16> rounds (nearest even
// in integer arithmetic, NaN kept quiet, subnormals kept), 16 at a time. The scalar loop it
// replaces in the GEMM stores went vector only for runs of 32 or more: a 16 x 16 image's runs
// are 16.
inline void store16(__mmask16 m, float* p, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
inline void store16(__mmask16 m, bf16* p, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb)), 16);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                                _mm512_set1_epi32(0x7F800000));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet_nan)));
}
#endif

// An A strip from MR rows of a row-major matrix of type T: dst[p*MR + i] = src[i*ld + p] for
// i < rows and p < kc, zero for the rows past `rows`. AVX-512: 8 x 16 blocks loaded along the
// rows and transposed in registers (the scalar loop's stores at stride MR cost as much as the
// GEMM itself on narrow layers' weight-grad, and 2-3% of a deep layer's forward).
template <class T>
inline void rows_to_strip(const T* __restrict src, int64_t ld, int64_t rows, int64_t kc, float* __restrict dst) {
#if defined(__AVX512F__)
  if constexpr (MR == 8) {
    for (int64_t t = 0; t < kc; t += 16) {
      const int count = static_cast<int>(std::min<int64_t>(16, kc - t));
      const auto m = static_cast<__mmask16>((1u << count) - 1);
      __m512 r[8];
      for (int i = 0; i < 8; ++i) r[i] = i < rows ? load16(m, src + i * ld + t) : _mm512_setzero_ps();
      transpose8x16_to_strip(r, count, dst + t * MR);
    }
    return;
  }
#endif
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t p = 0; p < kc; ++p) dst[p * MR + i] = i < rows ? to_float(src[i * ld + p]) : 0.0f;
}

#if defined(__AVX512F__)
// Where a B packer puts row p's 16 columns 16v .. 16v + 15, and how it loads them: RowsF32
// writes gemm.h's F32 layout from fp32 vectors (bf16 widened at the load); RowPairs writes the
// Bf16 layout from bf16 loaded into the low half of 32-bit lanes, holding each even row back
// and shifting the odd row's into the high half (finish() pairs an odd last row with zeros).
// Either way a packer writes its layout without a staging copy, and RowPairs spends one shift
// per pair of rows where widening and narrowing took three.
struct RowsF32 {
  float* dst;
  template <class T>
  static __m512 load(__mmask16 m, const T* p) {
    return load16(m, p);
  }
  template <class T>
  static __m512 load_evens(uint32_t m, const T* p) {
    return load16_evens(m, p);
  }
  void put(int64_t p, int v, __m512 val) { _mm512_storeu_ps(dst + p * NR + 16 * v, val); }
  // Rows p and p + 1 at once.
  void put2(int64_t p, int v, __m512 even, __m512 odd) {
    put(p, v, even);
    put(p + 1, v, odd);
  }
  void finish(int64_t) {}
};

struct RowPairs {
  bf16* dst;
  __m512i held[NR / 16] = {};
  static __m512 load(__mmask16 m, const bf16* p) {
    return _mm512_castsi512_ps(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)));
  }
  // m has only even source lanes: each element lands in the low half of its lane.
  static __m512 load_evens(uint32_t m, const bf16* p) { return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, p)); }
  void put(int64_t p, int v, __m512 val) {
    const __m512i u = _mm512_castps_si512(val);
    if (p % 2 == 0) held[v] = u;
    else _mm512_storeu_si512(dst + (p - 1) * NR + 32 * v, _mm512_or_si512(_mm512_slli_epi32(u, 16), held[v]));
  }
  // Rows p (even) and p + 1 at once: nothing held.
  void put2(int64_t p, int v, __m512 even, __m512 odd) {
    _mm512_storeu_si512(dst + p * NR + 32 * v,
                        _mm512_or_si512(_mm512_slli_epi32(_mm512_castps_si512(odd), 16), _mm512_castps_si512(even)));
  }
  void finish(int64_t kc) {
    if (kc % 2)
      for (int v = 0; v < NR / 16; ++v) put(kc, v, _mm512_setzero_ps());
  }
};

template <class Dst>
using RowsOf = std::conditional_t<std::is_same_v<Dst, float>, RowsF32, RowPairs>;

// Pairs from fp32 rows of W (16 or 8) floats holding bf16 values: dst[(p/2)*2W + 2j + p%2] =
// bf16 of src[p*W + j] for p < kc, the odd last row paired with zeros. Truncation is exact here.
template <int W>
inline void pairs_from_rows(const float* __restrict src, int64_t kc, bf16* __restrict dst) {
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t p = 0; p < kc; p += 2) {
    const float* r0 = src + p * W;
    for (int j = 0; j < W; j += 16) {
      const __mmask16 m = W - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (W - j)) - 1);
      const __m512i lo = _mm512_srli_epi32(_mm512_castps_si512(_mm512_maskz_loadu_ps(m, r0 + j)), 16);
      const __m512i up = p + 1 < kc ? _mm512_castps_si512(_mm512_maskz_loadu_ps(m, r0 + W + j))
                                    : _mm512_setzero_si512();
      // The odd row's bf16 in the high half of each 32-bit pair.
      _mm512_mask_storeu_epi32(dst + p * W + 2 * j, m, _mm512_or_si512(_mm512_and_si512(up, hi), lo));
    }
  }
}

// A thread-private fp32 strip of up to KC rows of NR floats, for the staging packers.
inline float* stage_buffer() {
  thread_local Panel stage(static_cast<size_t>(KC * NR));
  return stage.data();
}
#endif

// fill(strip) writes an fp32 B strip of kc rows; into dst itself (Dst = float), or into the stage,
// then paired into dst (Dst = bf16: the AVX-512 copies only).
template <class Dst, class Fill>
void via_stage(Dst* dst, [[maybe_unused]] int64_t kc, Fill&& fill) {
  if constexpr (std::is_same_v<Dst, float>) {
    fill(dst);
  } else {
#if defined(__AVX512F__)
    float* stage = stage_buffer();
    fill(stage);
    pairs_from_rows<NR>(stage, kc, dst);
#else
    static_assert(std::is_same_v<Dst, float>, "only the AVX-512 copies pack bf16 pairs");
#endif
  }
}

#if defined(__AVX512F__)
// Packers of the Bf16 layout from packers of fp32 strips (gemm.h's F32 layout), through a
// thread-private stage.
template <class PackA>
auto stage_a(PackA& pack) {
  return [&pack](int64_t item, int64_t i0, int64_t rows, int64_t p0, int64_t kc, bf16* dst) {
    float* s = stage_buffer();
    pack(item, i0, rows, p0, kc, s);
    pairs_from_rows<MR>(s, kc, dst);
  };
}
template <class PackB>
auto stage_b(PackB& pack) {
  return [&pack](int64_t item, int64_t p0, int64_t kc, int64_t j0, int64_t cols, bf16* dst) {
    via_stage(dst, kc, [&](float* strip) { pack(item, p0, kc, j0, cols, strip); });
  };
}

// A B packer that also takes a bf16* destination writes the Bf16 layout itself (RowPairs); the
// others are staged.
template <class PackB>
auto pairs_b(PackB& pack) {
  if constexpr (std::is_invocable_v<PackB&, int64_t, int64_t, int64_t, int64_t, int64_t, bf16*>) return pack;
  else return stage_b(pack);
}
#endif

#if defined(__AVX512BF16__)
// tile (MR x NR) = (acc ? tile : 0) + sum over the kp/2 row pairs of a and b (layout above).
// NV < NR / 16 computes only the first 16 NV columns.
template <int NV = NR / 16>
inline void micro_kernel_bf16(int64_t kp, const bf16* __restrict a, const bf16* __restrict b, float* __restrict tile,
                              bool acc) {
  __m512 c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) c[i][v] = acc ? _mm512_load_ps(tile + i * NR + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < kp / 2; ++p) {
    // Prefetch distances as in gemm.h's fp32 kernel: a pair row of B is 3 lines, like an fp32 row.
    for (int v = 0; v < NV; ++v)
      _mm_prefetch(reinterpret_cast<const char*>(b + (p + 8) * 2 * NR + 32 * v), _MM_HINT_T0);
    if (p % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(a + (p + 32) * 2 * MR), _MM_HINT_T0);
    __m512i bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(b + p * 2 * NR + 32 * v);
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + p * 2 * MR + 2 * i, sizeof pair);
      const __m512i ai = _mm512_set1_epi32(pair);
      for (int v = 0; v < NV; ++v) c[i][v] = _mm512_dpbf16_ps(c[i][v], (__m512bh)ai, (__m512bh)bv[v]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) _mm512_store_ps(tile + i * NR + 16 * v, c[i][v]);
}

struct Bf16 {
  using Elem = bf16;
  static constexpr int64_t kstep = 2;
  static void begin() {}
  static void end() {}
  static void micro(int64_t cols, int64_t kc, const bf16* a, const bf16* b, float* tile, bool acc) {
    const int64_t kp = kpad<Bf16>(kc);
    if (cols <= 16) return micro_kernel_bf16<1>(kp, a, b, tile, acc);
    if (cols <= 32) return micro_kernel_bf16<2>(kp, a, b, tile, acc);
    micro_kernel_bf16(kp, a, b, tile, acc);
  }
};
#endif

// The kernel for operands of type T: VDPBF16PS for bf16 where this copy has it, else fp32 (on
// exactly widened values).
#if defined(__AVX512BF16__)
template <class T>
using KernFor = std::conditional_t<std::is_same_v<T, bf16>, Bf16, F32>;
#else
template <class T>
using KernFor = F32;
#endif

}  // namespace gemm
}  // namespace fastopt::cpu::FASTOPT_ISA

#include "gemm_amx.h"  // the AMX kernel, built on the packers above

namespace fastopt::cpu::FASTOPT_ISA {
namespace gemm {

// f(Kern{}, pack_a', pack_b'): the kernel for operands of type T (float or bf16) with the fp32-strip
// packers adapted to its layout. KernFor<T>, except that bf16 in the AVX512-BF16 copy takes AMX
// tiles where amx_mode() says so (isa.cpp: the CPU's tiles, or their software copy for tests).
template <class T, class PackA, class PackB, class F>
void with_kernel(PackA& pack_a, PackB& pack_b, F&& f) {
  if constexpr (std::is_same_v<KernFor<T>, F32>) {
    f(F32{}, pack_a, pack_b);
  } else {
#if defined(__AVX512BF16__)
    switch (amx_mode()) {
#if defined(FASTOPT_AMX_ASM)
      case AmxMode::tiles: return f(AmxKern<Tiles>{}, amx_stage_a(pack_a), amx_pairs_b(pack_b));
#endif
      case AmxMode::emulated: return f(AmxKern<Emulated>{}, amx_stage_a(pack_a), amx_pairs_b(pack_b));
      default: break;
    }
#endif
    f(KernFor<T>{}, stage_a(pack_a), pairs_b(pack_b));
  }
}

// gemm::run and gemm::serial for operands of type T, with with_kernel's kernel.
template <class T, class PackA, class PackB, class Store>
void run_typed(int64_t items, int64_t M, int64_t Nn, int64_t Kd, bool prepack_a, PackA pack_a, PackB pack_b,
               Store store) {
  with_kernel<T>(pack_a, pack_b,
                 [&](auto kern, auto a, auto b) { run<decltype(kern)>(items, M, Nn, Kd, prepack_a, a, b, store); });
}

template <class T, class PackA, class PackB, class Store>
void serial_typed(int64_t item, int64_t M, int64_t Nn, int64_t Kd, PackA pack_a, PackB pack_b, Store store,
                  WorkspaceOf<KernFor<T>>& ws) {
  with_kernel<T>(pack_a, pack_b,
                 [&](auto kern, auto a, auto b) { serial<decltype(kern)>(item, M, Nn, Kd, a, b, store, ws); });
}

}  // namespace gemm
}  // namespace fastopt::cpu::FASTOPT_ISA

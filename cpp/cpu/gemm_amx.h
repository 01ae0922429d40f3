// AMX-BF16 tiles as the micro-kernel of gemm.h's packed GEMM (bf16 operands, fp32 accumulation),
// and a software copy of the same tile instructions so the kernel is tested on CPUs without AMX.
//
// Math: tile (MR x NR, fp32) = (acc ? tile : 0) + A B over kp reduction rows, in steps of 32.
// TDPBF16PS C, A, B adds to C[m][n] the products A[m][2k+e] B[k][2n+e] (k < 16, e = 0, 1) one
// at a time in fp32: a product of two bf16 values is exact in fp32; bf16 subnormal inputs count
// as zero and subnormal sums flush to zero (the instruction's definition, as VDPBF16PS). So the
// error bound of the other copies (tests/bf16_checks.py) holds unchanged.
//
// Packed layouts (gemm.h's strips, kstep = 32 rows, zero-padded past kc):
//   B: the VNNI pairs of gemm_bf16.h, b[(p/2) 2NR + 2j + p%2] = B[p][j]: 16 pair rows x 16
//      columns of one k step are a B tile as they lie (row stride 2NR bf16 = 192 bytes), so the
//      B packers are those of the AVX512-BF16 copy, plus zeroed rows up to the step.
//   A: a[(p/32) 32MR + 32i + p%32] = A[i][p]: row i of a k step is 64 contiguous bytes, one A
//      tile row (the AVX512-BF16 copy's pair layout interleaves rows, which a tile cannot load).
// Tiles (palette 1): tmm0-2 the three 16-column C blocks of the MR x NR tile (MR rows x 64 B,
// loaded from and stored to the tile buffer at a row stride of NR floats), tmm3 the A block
// (MR rows x 64 B), tmm4-6 the three B blocks (16 rows x 64 B). Seven of the eight tiles.
//
// Bytes: per k step one A tile (MR x 64 B) and NV <= 3 B tiles (1 KiB each) from L1/L2 for
// NV TDPBF16PS of MR x 16 x 32 multiply-adds; the C tiles are loaded and stored once per KC block.
// With MR = 8 a TDPBF16PS uses half the rows the unit can take (16): the engine's strips are
// shared with the AVX-512 copies; 16-row strips would double the work per instruction (measured
// once an AMX machine runs bench conv2d --dtype bf16).
//
// Launch: that of gemm::run. LDTILECFG is per thread and anyone may reconfigure the tiles in
// between (oneDNN, in the same process as torch, does), so every task configures them when it
// starts and releases them when it ends (Amx::begin / end).
//
// The software copy (Emulated) keeps eight 1 KiB tiles per thread and follows the instruction's
// pseudo-code (Intel SDM, TDPBF16PS), so the same micro-kernel runs under both, chosen at run
// time: FASTOPT_CPU_AMX=emulate (isa.cpp) on a machine without AMX, real tiles where the CPU has
// them and the OS grants the tile state (and they pass a self-check against the software copy).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "fastopt/bf16.h"
#include "gemm.h"
// Included by gemm_bf16.h after its packers (stage_buffer, pairs_from_rows, pairs_b), which this
// file builds on, and before run_typed, which dispatches to it.

namespace fastopt::cpu::FASTOPT_ISA {
namespace gemm {

#if defined(__AVX512BF16__)
constexpr int64_t kAmxK = 32;             // reduction rows per TDPBF16PS
constexpr int64_t kAmxBStride = 4 * NR;   // bytes between B tile rows (pair rows of NR pairs)
constexpr int64_t kAmxCStride = 4 * NR;   // bytes between C tile rows (the tile buffer's rows)

// LDTILECFG's 64-byte operand.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

inline TileConfig amx_config() {
  TileConfig cfg;
  for (int t = 0; t < 7; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = t < 4 ? MR : 16;  // C0-2 and A: MR rows; B0-2: 16 pair rows
  }
  return cfg;
}

#if defined(FASTOPT_AMX_ASM)
// The real instructions, as inline assembly (the assembler knows them; no -mamx flags needed,
// so the file builds with any compiler that builds the AVX512-BF16 copy). Tile numbers are
// fixed: C block v is tmm v, A is tmm3, B block v is tmm 4 + v.
struct Tiles {
  static void config(const TileConfig& cfg) { asm volatile("ldtilecfg %0" ::"m"(cfg)); }
  static void release() { asm volatile("tilerelease" ::); }
#define FASTOPT_AMX_BY_V(V, OP)  \
  if constexpr (V == 0) {        \
    OP(0, 4);                    \
  } else if constexpr (V == 1) { \
    OP(1, 5);                    \
  } else {                       \
    OP(2, 6);                    \
  }
  template <int V>
  static void load_c(const float* p) {
#define FASTOPT_AMX_LOAD_C(c, b) asm volatile("tileloadd (%0,%1,1), %%tmm" #c::"r"(p), "r"(kAmxCStride) : "memory")
    FASTOPT_AMX_BY_V(V, FASTOPT_AMX_LOAD_C)
  }
  template <int V>
  static void zero_c() {
#define FASTOPT_AMX_ZERO_C(c, b) asm volatile("tilezero %%tmm" #c::)
    FASTOPT_AMX_BY_V(V, FASTOPT_AMX_ZERO_C)
  }
  template <int V>
  static void store_c(float* p) {
#define FASTOPT_AMX_STORE_C(c, b) \
  asm volatile("tilestored %%tmm" #c ", (%0,%1,1)" ::"r"(p), "r"(kAmxCStride) : "memory")
    FASTOPT_AMX_BY_V(V, FASTOPT_AMX_STORE_C)
  }
  static void load_a(const bf16* p) {
    asm volatile("tileloadd (%0,%1,1), %%tmm3" ::"r"(p), "r"(int64_t{64}) : "memory");
  }
  // B block V and C_V += A B_V (AT&T order: B, A, C).
  template <int V>
  static void load_b_dot(const bf16* p) {
#define FASTOPT_AMX_LOAD_B_DOT(c, b)                                                  \
  asm volatile("tileloadd (%0,%1,1), %%tmm" #b::"r"(p), "r"(kAmxBStride) : "memory"); \
  asm volatile("tdpbf16ps %%tmm" #b ", %%tmm3, %%tmm" #c::)
    FASTOPT_AMX_BY_V(V, FASTOPT_AMX_LOAD_B_DOT)
  }
#undef FASTOPT_AMX_LOAD_B_DOT
#undef FASTOPT_AMX_STORE_C
#undef FASTOPT_AMX_ZERO_C
#undef FASTOPT_AMX_LOAD_C
#undef FASTOPT_AMX_BY_V
};
#endif

// The same instructions in software: eight tiles of 16 rows x 64 bytes per thread, the shapes
// of the last config() (rows and bytes per row), TDPBF16PS as the SDM's pseudo-code.
struct Emulated {
  struct State {
    alignas(64) uint8_t t[8][16][64];
    TileConfig cfg;
  };
  static State& state() {
    thread_local State s;
    return s;
  }
  static void config(const TileConfig& cfg) {
    State& s = state();
    s.cfg = cfg;
    std::memset(s.t, 0, sizeof s.t);  // LDTILECFG zeroes the tiles
  }
  static void release() { config(TileConfig{}); }
  static void load(int t, const void* p, int64_t stride) {
    State& s = state();
    for (int r = 0; r < s.cfg.rows[t]; ++r)
      std::memcpy(s.t[t][r], static_cast<const uint8_t*>(p) + r * stride, s.cfg.colsb[t]);
  }
  static void store(int t, void* p, int64_t stride) {
    const State& s = state();
    for (int r = 0; r < s.cfg.rows[t]; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, s.t[t][r], s.cfg.colsb[t]);
  }
  // DAZ on bf16 inputs, FTZ on fp32 results.
  static float daz(uint16_t v) { return bits_float(static_cast<uint32_t>((v & 0x7f80u) == 0 ? v & 0x8000u : v) << 16); }
  static float ftz(float v) { return std::fabs(v) < 0x1p-126f ? 0.0f * v : v; }
  static void dot(int c, int a, int b) {
    State& s = state();
    const int rows = s.cfg.rows[c], cols = s.cfg.colsb[c] / 4, ks = s.cfg.colsb[a] / 4;
    for (int m = 0; m < rows; ++m) {
      float acc[16];
      std::memcpy(acc, s.t[c][m], sizeof acc);
      for (int k = 0; k < ks; ++k)
        for (int n = 0; n < cols; ++n)
          for (int e = 0; e < 2; ++e) {
            uint16_t x, y;
            std::memcpy(&x, s.t[a][m] + 4 * k + 2 * e, 2);
            std::memcpy(&y, s.t[b][k] + 4 * n + 2 * e, 2);
            acc[n] = ftz(acc[n] + daz(x) * daz(y));
          }
      std::memcpy(s.t[c][m], acc, sizeof acc);
    }
  }
  template <int V>
  static void load_c(const float* p) {
    load(V, p, kAmxCStride);
  }
  template <int V>
  static void zero_c() {
    std::memset(state().t[V], 0, sizeof state().t[V]);
  }
  template <int V>
  static void store_c(float* p) {
    store(V, p, kAmxCStride);
  }
  static void load_a(const bf16* p) { load(3, p, 64); }
  template <int V>
  static void load_b_dot(const bf16* p) {
    load(4 + V, p, kAmxBStride);
    dot(V, 3, 4 + V);
  }
};

// tile (MR x NR) = (acc ? tile : 0) + the kp / 32 k steps of a and b (layouts above); NV < 3
// computes only the first 16 NV columns.
template <class T, int... V>
void amx_micro(std::integer_sequence<int, V...>, int64_t kp, const bf16* __restrict a, const bf16* __restrict b,
               float* __restrict tile, bool acc) {
  if (acc) (T::template load_c<V>(tile + 16 * V), ...);
  else (T::template zero_c<V>(), ...);
  for (int64_t q = 0; q < kp / kAmxK; ++q) {
    T::load_a(a + q * kAmxK * MR);
    (T::template load_b_dot<V>(b + q * kAmxK * NR + 32 * V), ...);
  }
  (T::template store_c<V>(tile + 16 * V), ...);
}

template <class T>
struct AmxKern {
  using Elem = bf16;
  static constexpr int64_t kstep = kAmxK;
  static void begin() { T::config(amx_config()); }
  static void end() { T::release(); }
  static void micro(int64_t cols, int64_t kc, const bf16* a, const bf16* b, float* tile, bool acc) {
    const int64_t kp = kpad<AmxKern>(kc);
    if (cols <= 16) return amx_micro<T>(std::make_integer_sequence<int, 1>{}, kp, a, b, tile, acc);
    if (cols <= 32) return amx_micro<T>(std::make_integer_sequence<int, 2>{}, kp, a, b, tile, acc);
    amx_micro<T>(std::make_integer_sequence<int, 3>{}, kp, a, b, tile, acc);
  }
};

// An A strip of the tile layout from an fp32 strip s[p*MR + i] (bf16 values: truncation is
// exact) of kc rows, zero up to the k step.
inline void amx_rows_from_strip(const float* __restrict s, int64_t kc, bf16* __restrict dst) {
  const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(MR));
  const int64_t kp = (kc + kAmxK - 1) / kAmxK * kAmxK;
  for (int64_t p0 = 0; p0 < kp; p0 += 16) {
    const __mmask16 m = first_lanes(kc - p0);
    for (int i = 0; i < MR; ++i) {
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, s + p0 * MR + i, 4);
      const __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + p0 / kAmxK * kAmxK * MR + i * kAmxK + p0 % kAmxK), h);
    }
  }
}

// Packers for the AMX layouts from the fp32 A packer and the B packer of the AVX512-BF16 copy.
template <class PackA>
auto amx_stage_a(PackA& pack) {
  return [&pack](int64_t item, int64_t i0, int64_t rows, int64_t p0, int64_t kc, bf16* dst) {
    float* s = stage_buffer();
    pack(item, i0, rows, p0, kc, s);
    amx_rows_from_strip(s, kc, dst);
  };
}
template <class PackB>
auto amx_pairs_b(PackB& pack) {
  return [inner = pairs_b(pack)](int64_t item, int64_t p0, int64_t kc, int64_t j0, int64_t cols, bf16* dst) mutable {
    inner(item, p0, kc, j0, cols, dst);
    const int64_t even = (kc + 1) / 2 * 2, kp = (kc + kAmxK - 1) / kAmxK * kAmxK;
    std::memset(static_cast<void*>(dst + even * NR), 0, static_cast<size_t>((kp - even) * NR) * sizeof(bf16));
  };
}
#endif

}  // namespace gemm
}  // namespace fastopt::cpu::FASTOPT_ISA

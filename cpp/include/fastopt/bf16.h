// Low-precision storage: bfloat16 and IEEE float16 values held in memory, fp32 in registers.
//
// Every kernel with a bf16 path is templated on its storage type T (float, bf16 or f16) and
// reads through to_float(T) and writes through from_float<T>(float). All arithmetic between the
// two is fp32 (reductions in fp32 or double), so a bf16 result differs from the fp32 kernel's
// result on the same (bf16-valued) inputs only by its final rounding.
//
//   bf16 -> fp32: exact, the 16 bits become the high half of the float.
//   fp32 -> bf16: round to nearest, ties to even (as ml_dtypes, torch and vcvtneps2bf16 on normal
//                 numbers; subnormals are kept, not flushed); NaN stays a quiet NaN of its sign.
//   f16 <-> fp32: IEEE binary16, round to nearest even, subnormals kept, overflow to +-Inf
//                 (NumPy's float16 rules).
//   stochastic:   fp32 -> bf16 rounding up in magnitude with probability (dropped bits) / 2^16,
//                 from 16 random bits: E[result] = input for finite inputs (llm.c's rule).
// Conversions are integer operations on the bits (no float arithmetic that FMA contraction or a
// rounding mode could change), written branch-free so that host loops vectorize them and nvcc
// compiles the same source for the device.
#pragma once
#include <cstdint>
#include <cstring>

#include "fastopt/common.h"

namespace fastopt {

// Which storage type an array of an op holds; the bindings map array dtypes onto it.
enum class Storage : uint8_t { f32 = 0, bf16 = 1, f16 = 2 };

struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

FASTOPT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

FASTOPT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

FASTOPT_HD float to_float(float v) { return v; }
FASTOPT_HD float to_float(bf16 v) { return bits_float(static_cast<uint32_t>(v.bits) << 16); }

// Exact: normal halves rebias their exponent (a power-of-two scaling), subnormal ones are
// m * 2^-24 formed as (2^-1 + m * 2^-24) - 2^-1 (Maratyszcza's FP16 method).
FASTOPT_HD float to_float(f16 v) {
  const uint32_t w = static_cast<uint32_t>(v.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normal = bits_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
  return bits_float(sign | float_bits(two_w < (1u << 27) ? subnormal : normal));
}

template <class T>
FASTOPT_HD T from_float(float v);

template <>
FASTOPT_HD float from_float<float>(float v) {
  return v;
}

template <>
FASTOPT_HD bf16 from_float<bf16>(float v) {
  const uint32_t u = float_bits(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return bf16{static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded)};
}

template <>
FASTOPT_HD f16 from_float<f16>(float v) {
  const uint32_t u = float_bits(v);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normal range [2^-14, 65520): rebias the exponent (127 -> 15), round the 13 dropped bits.
  const uint32_t r = a - (112u << 23);
  const uint32_t normal = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
  // Below 2^-14: round |v| * 2^24 to an integer (1024 carries into the smallest normal).
  const uint32_t e = a >> 23;
  const uint32_t shift = e > 112u ? 14u : e < 95u ? 31u : 126u - e;  // in [14, 31]: no UB shifts
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t q = m >> shift, rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  const uint32_t sub = e < 102u ? 0u : q + ((rest > half || (rest == half && (q & 1u))) ? 1u : 0u);
  const uint32_t out = a > 0x7F800000u   ? 0x7E00u | ((a >> 13) & 0x3FFu)  // NaN, kept quiet
                       : a >= 0x477FF000u ? 0x7C00u                       // rounds past 65504: Inf
                       : a >= 0x38800000u ? normal
                                          : sub;
  return f16{static_cast<uint16_t>(sign | out)};
}

// bf16 by stochastic rounding with the low 16 bits of `random`: magnitude up with probability
// (low 16 bits of v) / 2^16, so E[to_float(result)] = v. Inf stays Inf; NaN as from_float.
FASTOPT_HD bf16 bf16_stochastic(float v, uint32_t random) {
  const uint32_t u = float_bits(v);
  const uint32_t rounded = (u + (random & 0xFFFFu)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return bf16{static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded)};
}

// The Storage tag of a type, for templates that dispatch on it.
template <class T>
struct StorageOf;
template <>
struct StorageOf<float> {
  static constexpr Storage value = Storage::f32;
};
template <>
struct StorageOf<bf16> {
  static constexpr Storage value = Storage::bf16;
};
template <>
struct StorageOf<f16> {
  static constexpr Storage value = Storage::f16;
};

// Calls f(T{}) for the storage type s: the one switch host code uses to instantiate a kernel
// per storage type (the bindings only hand a kernel the types it supports).
template <class F>
void dispatch_storage(Storage s, F&& f) {
  switch (s) {
    case Storage::bf16: f(bf16{}); break;
    case Storage::f16: f(f16{}); break;
    default: f(float{}); break;
  }
}

#if !defined(__CUDACC__)
// Bulk conversions for host loops (a row into an fp32 scratch buffer and back).
template <class T>
inline void to_float_n(const T* __restrict src, float* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}
template <class T>
inline void from_float_n(const float* __restrict src, T* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = from_float<T>(src[i]);
}

// 8 values as one GCC vector of floats, for host loops written in vector types (the same lane
// arithmetic on every ISA copy): bf16 widens exactly (zero-extend, shift into the high half).
typedef float f32x8 __attribute__((vector_size(32)));
inline f32x8 load_f8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline f32x8 load_f8(const bf16* p) {
  typedef uint16_t u16x8 __attribute__((vector_size(16)));
  typedef uint32_t u32x8 __attribute__((vector_size(32)));
  u16x8 h;
  std::memcpy(&h, p, sizeof h);
  const u32x8 w = __builtin_convertvector(h, u32x8) << 16;
  f32x8 v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}
#endif

}  // namespace fastopt

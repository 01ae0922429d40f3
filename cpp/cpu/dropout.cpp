// Inverted dropout on the CPU: y = x * (word(offset + i) < threshold ? scale : 0), the mask
// regenerated from Philox4x32-10 (fastopt/philox.h, fastopt/dropout.h) in forward and backward.
//
// Traffic: read x + write y = 8 B/element, 4 B in bf16 (the mask: 1 B/element written). Compute: one Philox
// evaluation (10 rounds, 20 32x32->64-bit multiplies) per 4 elements.
//
// Shape: OpenMP over fixed chunks of kChunk elements. Inside a chunk, batches of kLanes = 16
// consecutive Philox blocks (64 words) are generated lane-parallel in structure-of-arrays form,
// so each round is a handful of vector instructions (AVX-512: intrinsics, one zmm per counter
// word; other ISAs: a lane loop over philox_round() that the compiler vectorizes), then a vector
// loop multiplies up to 64 elements by their factors. On one core of the 2-core AVX-512 dev VM, at
// 2^24 elements: the mask (Philox alone) ~13 ms, forward ~29 ms (the rest is the 8 B/element of
// traffic and the fresh output's page faults). On both cores, with outputs from the host cache
// (no fresh pages), forward takes 6.0-6.9 ms: about Philox's time, 65% of the copy rate. The words an element draws depend on its stream
// position only, so chunking, thread count and ISA never change a bit (all three ISA copies were
// checked against the scalar philox_block() definition).
#include <algorithm>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "fastopt/dropout.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d);
                     void dropout_apply(const bf16* x, bf16* y, int64_t n, const DropoutParams& d);
                     void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d);)

namespace FASTOPT_ISA {
namespace {

constexpr int kLanes = 16;
constexpr int kWords = 4 * kLanes;

// words[4 l + w] = word w of Philox block j0 + l.
#ifdef __AVX512F__
// The 16 lanes are one zmm per counter word. vpmuludq multiplies the even 32-bit lanes; the odd
// ones are shifted down first, and the two 64-bit product vectors are blended back into hi and lo
// words. Same bits as philox_round() (the known-answer and reference tests run this path).
inline void mulhilo(__m512i m, __m512i c, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(c, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

void philox_batch(uint64_t j0, uint64_t seed, uint32_t* __restrict words) {
  static_assert(kLanes == 16, "one zmm of counters");
  alignas(64) uint32_t lo[kLanes], hi[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t j = j0 + static_cast<uint64_t>(l);
    lo[l] = static_cast<uint32_t>(j);
    hi[l] = static_cast<uint32_t>(j >> 32);
  }
  __m512i c0 = _mm512_load_si512(lo), c1 = _mm512_load_si512(hi);
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    __m512i hi0, lo0, hi1, lo1;
    mulhilo(m0, c0, hi0, lo0);
    mulhilo(m1, c2, hi1, lo1);
    c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);  // a ^ b ^ c
    c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
    c1 = lo1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  // 4 x 4 transpose of (word, block): u_k holds in its 128-bit lane q the 4 words of block 4q + k,
  // the shuffles then gather lane q of u0..u3 into output vector q (blocks 4q .. 4q + 3).
  const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
  const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i v1 = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i v3 = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
  _mm512_store_si512(words + 0, _mm512_shuffle_i32x4(v0, v1, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_store_si512(words + 16, _mm512_shuffle_i32x4(v0, v1, _MM_SHUFFLE(3, 1, 3, 1)));
  _mm512_store_si512(words + 32, _mm512_shuffle_i32x4(v2, v3, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_store_si512(words + 48, _mm512_shuffle_i32x4(v2, v3, _MM_SHUFFLE(3, 1, 3, 1)));
}
#else
void philox_batch(uint64_t j0, uint64_t seed, uint32_t* __restrict words) {
  philox_blocks<kLanes>(j0, 0u, 0u, seed, words);
}
#endif

// Calls emit(i, w, count): elements [i, i + count) draw words w[0, count). The caller guarantees
// offset + n <= 2^64, so stream positions never wrap. Each emit gets kBatches Philox batches of
// words, so that the element loop's set-up (its vector constants, the bf16 conversions' masks) is
// paid per 256 elements, not per 64 (one thread, 6.4M elements: fp32 5.2 -> 4.8 ms, bf16 6.9 ->
// 5.7 ms; the rest of bf16's gap is its wider loop's 64-bit threshold compares).
constexpr int kBatches = 4;

template <class Emit>
void for_each_batch(int64_t n, const DropoutParams& d, Emit emit) {
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < num_chunks; ++c) {
    alignas(64) uint32_t words[kBatches * kWords];
    const int64_t end = std::min(n, (c + 1) * kChunk);
    int64_t i = c * kChunk;
    uint64_t s = d.offset + static_cast<uint64_t>(i);
    while (i < end) {
      const int lead = static_cast<int>(s & 3u);  // nonzero only for the first batch of a chunk
      for (int b = 0; b < kBatches; ++b)
        philox_batch((s >> 2) + static_cast<uint64_t>(b * kLanes), d.seed, words + b * kWords);
      const int64_t count = std::min<int64_t>(kBatches * kWords - lead, end - i);
      emit(i, words + lead, count);
      i += count;
      s += static_cast<uint64_t>(count);
    }
  }
}

template <class T>
void apply(const T* x, T* y, int64_t n, const DropoutParams& d) {
  const uint64_t threshold = d.threshold;
  const float scale = d.scale;
  for_each_batch(n, d, [x, y, threshold, scale](int64_t i, const uint32_t* __restrict w, int64_t count) {
    const T* __restrict xi = x + i;
    T* __restrict yi = y + i;
#pragma omp simd
    for (int64_t k = 0; k < count; ++k) yi[k] = from_float<T>(to_float(xi[k]) * dropout_factor(w[k], threshold, scale));
  });
}

}  // namespace

void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d) { apply(x, y, n, d); }
void dropout_apply(const bf16* x, bf16* y, int64_t n, const DropoutParams& d) { apply(x, y, n, d); }

void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d) {
  const uint64_t threshold = d.threshold;
  for_each_batch(n, d, [mask, threshold](int64_t i, const uint32_t* __restrict w, int64_t count) {
    uint8_t* __restrict mi = mask + i;
#pragma omp simd
    for (int64_t k = 0; k < count; ++k) mi[k] = dropout_keep(w[k], threshold) ? 1 : 0;
  });
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d) {
  FASTOPT_CPU_DISPATCH(dropout_apply(x, y, n, d))
}
void dropout_apply(const bf16* x, bf16* y, int64_t n, const DropoutParams& d) {
  FASTOPT_CPU_DISPATCH(dropout_apply(x, y, n, d))
}
void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d) { FASTOPT_CPU_DISPATCH(dropout_mask(mask, n, d)) }
#endif

}  // namespace fastopt::cpu

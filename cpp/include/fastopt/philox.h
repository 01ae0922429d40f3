// Philox4x32-10, the counter-based generator of Salmon et al. (SC'11) exactly as Random123 defines
// it: a 128-bit counter (c0..c3) and a 64-bit key (k0, k1) give four 32-bit words after 10 rounds
//   (hi0, lo0) = M0 * c0;  (hi1, lo1) = M1 * c2   (32 x 32 -> 64-bit products)
//   c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);  then k0 += W0, k1 += W1
// The key is bumped between rounds only (round r uses the key bumped r times).
//
// How fastopt uses the stream (dropout.h, python/fastopt/reference/dropout.py):
//   key     = (k0, k1) = (low, high) 32 bits of the 64-bit seed;
//   word s  of the stream (s = 0, 1, 2, ... as a 64-bit integer, wrapping mod 2^64) is output word
//           s mod 4 of block j = s div 4, block j's counter being (low 32 bits of j, high 32 bits of
//           j, 0, 0).
// Element i of a call with `offset` draws word s = offset + i. The draw therefore depends on
// (seed, offset, i) only, never on how a backend splits the work into threads, vector lanes or
// CUDA blocks, and `offset` reads as "skip that many words": calls with offset += numel never reuse
// a word. Deriving a whole block per 4 consecutive elements lets every backend use all four outputs
// of one Philox evaluation (4 elements per 20 multiplies) instead of one word per evaluation.
//
// All arithmetic is on uint32_t/uint64_t, so the host compiler's vector loops, nvcc's device code
// and NumPy's uint64 arrays compute identical bits.
#pragma once
#include <cstdint>

#include "fastopt/common.h"

namespace fastopt {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

struct Philox4 {
  uint32_t v[4];
};

// One round on the counter state with round key (k0, k1). Written with 64-bit products rather
// than __umulhi so the host loop vectorizes (AVX-512/AVX2 vpmuludq) from the same source.
FASTOPT_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(p1);
  c3 = static_cast<uint32_t>(p0);
  c0 = n0;
  c2 = n2;
}

FASTOPT_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < kPhiloxRounds; ++r) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four stream words of block j (see the header comment) under a 64-bit seed.
FASTOPT_HD Philox4 philox_block(uint64_t j, uint64_t seed) {
  return philox4x32_10(static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32), 0u, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The words of L consecutive blocks j0 .. j0 + L - 1 with counter words (c2, c3) (the stream
// above has c2 = c3 = 0): words[4 l + w] = word w of block j0 + l. Lane loops over
// philox_round() in structure-of-arrays form, which host compilers vectorize; the same bits as
// philox4x32_10() block by block.
template <int L>
inline void philox_blocks(uint64_t j0, uint32_t c2, uint32_t c3, uint64_t seed, uint32_t* __restrict words) {
  alignas(64) uint32_t x0[L], x1[L], x2[L], x3[L];
#pragma omp simd
  for (int l = 0; l < L; ++l) {
    const uint64_t j = j0 + static_cast<uint64_t>(l);
    x0[l] = static_cast<uint32_t>(j);
    x1[l] = static_cast<uint32_t>(j >> 32);
    x2[l] = c2;
    x3[l] = c3;
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
#pragma omp simd
    for (int l = 0; l < L; ++l) philox_round(x0[l], x1[l], x2[l], x3[l], k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int l = 0; l < L; ++l) {
    words[4 * l + 0] = x0[l];
    words[4 * l + 1] = x1[l];
    words[4 * l + 2] = x2[l];
    words[4 * l + 3] = x3[l];
  }
}

}  // namespace fastopt

// Inverted dropout on the CPU: y = x * (word(offset + i) < threshold ? scale : 0), the mask
// regenerated from Philox4x32-10 (fastopt/philox.h, fastopt/dropout.h) in forward and backward.
//
// Traffic: read x + write y = 8 B/element (the mask: 1 B/element written). Compute: one Philox
// evaluation (10 rounds, 20 32x32->64-bit multiplies) per 4 elements.
//
// Shape: OpenMP over fixed chunks of kChunk elements. Inside a chunk, batches of kLanes = 16
// consecutive Philox blocks (64 words) are generated lane-parallel in structure-of-arrays form,
// so each round is a handful of vector instructions (AVX-512: vpmuludq on 8 lanes; AVX2: 4), then
// a vector loop multiplies up to 64 elements by their factors. The words an element draws depend
// on its stream position only, so chunking, thread count and ISA never change a bit.
#include <algorithm>

#include "fastopt/dropout.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d);
                     void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d);)

namespace FASTOPT_ISA {
namespace {

constexpr int kLanes = 16;
constexpr int kWords = 4 * kLanes;

// words[4 l + w] = word w of Philox block j0 + l.
void philox_batch(uint64_t j0, uint64_t seed, uint32_t* __restrict words) {
  alignas(64) uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t j = j0 + static_cast<uint64_t>(l);
    c0[l] = static_cast<uint32_t>(j);
    c1[l] = static_cast<uint32_t>(j >> 32);
    c2[l] = 0u;
    c3[l] = 0u;
  }
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) philox_round(c0[l], c1[l], c2[l], c3[l], k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int l = 0; l < kLanes; ++l) {
    words[4 * l + 0] = c0[l];
    words[4 * l + 1] = c1[l];
    words[4 * l + 2] = c2[l];
    words[4 * l + 3] = c3[l];
  }
}

// Calls emit(i, w, count): elements [i, i + count) draw words w[0, count). The caller guarantees
// offset + n <= 2^64, so stream positions never wrap.
template <class Emit>
void for_each_batch(int64_t n, const DropoutParams& d, Emit emit) {
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < num_chunks; ++c) {
    alignas(64) uint32_t words[kWords];
    const int64_t end = std::min(n, (c + 1) * kChunk);
    int64_t i = c * kChunk;
    uint64_t s = d.offset + static_cast<uint64_t>(i);
    while (i < end) {
      const int lead = static_cast<int>(s & 3u);  // nonzero only for the first batch of a chunk
      philox_batch(s >> 2, d.seed, words);
      const int64_t count = std::min<int64_t>(kWords - lead, end - i);
      emit(i, words + lead, count);
      i += count;
      s += static_cast<uint64_t>(count);
    }
  }
}

}  // namespace

void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d) {
  const DropoutParams dd = d;
  for_each_batch(n, dd, [x, y, &dd](int64_t i, const uint32_t* __restrict w, int64_t count) {
#pragma omp simd
    for (int64_t k = 0; k < count; ++k) y[i + k] = x[i + k] * dropout_factor(w[k], dd);
  });
}

void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d) {
  const DropoutParams dd = d;
  for_each_batch(n, dd, [mask, &dd](int64_t i, const uint32_t* __restrict w, int64_t count) {
#pragma omp simd
    for (int64_t k = 0; k < count; ++k) mask[i + k] = dropout_keep(w[k], dd.threshold) ? 1 : 0;
  });
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d) {
  FASTOPT_CPU_DISPATCH(dropout_apply(x, y, n, d))
}
void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d) { FASTOPT_CPU_DISPATCH(dropout_mask(mask, n, d)) }
#endif

}  // namespace fastopt::cpu

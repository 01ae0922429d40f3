// Inverted dropout (torch.nn.functional.dropout, training mode), float32:
//   y_i = x_i * m_i,   m_i = keep_i ? scale : 0,   scale = 1.0f / float(1 - p)
//   keep_i  <=>  word(offset + i) < threshold,   threshold = floor((1 - p) * 2^32)
// word(s) is 32-bit word s of the Philox4x32-10 stream keyed by the seed (philox.h says which
// block and lane). The backward pass is the same map applied to dy (dx = dy * m), so it
// regenerates the mask instead of storing it: 8 bytes per element each way, no mask traffic.
//
// Choices, and why:
// - threshold is a uint64 in [0, 2^32]: (1 - p) * 2^32 is exact in double (a power-of-two
//   scaling of the double 1 - p), so floor() of it is the exact threshold of that double. p = 0
//   gives 2^32, which every 32-bit word is below (kept, no overflow); p = 1 gives 0 (all dropped).
//   A full 32-bit comparison: an 8-bit one would bias the keep rate (0.8984 for keep 0.9).
// - scale is 1.0f / float(1 - p), the float32 value torch multiplies by (it divides a float32
//   bernoulli tensor by 1 - p). For p = 1 the scale is unused and set to 0, so no inf is formed.
// - a dropped element is x * 0.0f, not a literal 0: as in torch, NaN/Inf inputs stay NaN in
//   dropped positions and negative inputs give -0.0, so outputs match torch bit for bit.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastopt/bf16.h"
#include "fastopt/common.h"
#include "fastopt/philox.h"

namespace fastopt {

struct DropoutParams {
  uint64_t seed;
  uint64_t offset;     // stream word of element 0
  uint64_t threshold;  // keep iff word < threshold; in [0, 2^32]
  float scale;         // multiplier of kept elements
};

// p must already be checked to lie in [0, 1].
inline DropoutParams dropout_params(double p, uint64_t seed, uint64_t offset) {
  const double keep = 1.0 - p;
  DropoutParams d;
  d.seed = seed;
  d.offset = offset;
  d.threshold = static_cast<uint64_t>(std::floor(keep * 4294967296.0));
  d.scale = p < 1.0 ? 1.0f / static_cast<float>(keep) : 0.0f;
  return d;
}

FASTOPT_HD bool dropout_keep(uint32_t word, uint64_t threshold) { return word < threshold; }

// Scalars rather than DropoutParams, so that vector loops see loop-invariant registers.
FASTOPT_HD float dropout_factor(uint32_t word, uint64_t threshold, float scale) {
  return dropout_keep(word, threshold) ? scale : 0.0f;
}

namespace cpu {
// y[i] = x[i] * m_i for i < n (x == y allowed). Forward on x, backward on dy. bf16: the product in
// fp32 rounded once to nearest even (the same mask; kept values x * scale, dropped ones x * 0).
void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d);
void dropout_apply(const bf16* x, bf16* y, int64_t n, const DropoutParams& d);
// mask[i] = keep_i as 0/1 bytes (NumPy bool).
void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d);
}  // namespace cpu

namespace cuda {
// Same contracts on device pointers, queued on `stream` (a cudaStream_t; 0 = legacy default).
void dropout_apply(const float* x, float* y, int64_t n, const DropoutParams& d, void* stream);
void dropout_apply(const bf16* x, bf16* y, int64_t n, const DropoutParams& d, void* stream);  // fp32 product, rounded once
void dropout_mask(uint8_t* mask, int64_t n, const DropoutParams& d, void* stream);
}  // namespace cuda

}  // namespace fastopt

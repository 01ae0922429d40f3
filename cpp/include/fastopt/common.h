// Shared by the CPU and CUDA backends: the host/device qualifier and small helpers.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FASTOPT_HD __host__ __device__ __forceinline__
#define FASTOPT_HD_INLINE FASTOPT_HD
#else
#define FASTOPT_HD inline
// For the per-element bodies of the fused loops: a call left in one costs the loop its
// vectorization (GCC's inliner gave up on the Adam rule in optim.cpp once the translation unit
// grew, and the AdamW step ran 5x slower).
#define FASTOPT_HD_INLINE inline __attribute__((always_inline))
#endif

namespace fastopt {

// True for a finite v, false for +-Inf and NaN (Inf - Inf and NaN - NaN are NaN); the same
// test on the host and the device, with no library call.
template <class T>
FASTOPT_HD bool is_finite(T v) {
  return v - v == T(0);
}

// torch's clip coefficient min(1, max_norm / (norm + 1e-6)), written as c > 1 ? 1 : c so that a
// NaN norm gives a NaN coefficient (torch.clamp(max=1) keeps NaN) rather than 1. An Inf norm
// gives 0. T: the precision of the caller's arithmetic (double on the CPU, float on the GPU).
template <class T>
FASTOPT_HD T clip_coefficient(T max_norm, T norm) {
  const T c = max_norm / (norm + T(1e-6));
  return c > T(1) ? T(1) : c;
}

// A contiguous float32 buffer and its length, host or device memory alike.
struct Span {
  float* data;
  int64_t numel;
};

}  // namespace fastopt

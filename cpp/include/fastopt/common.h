// Shared by the CPU and CUDA backends: the host/device qualifier and small helpers.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FASTOPT_HD __host__ __device__ __forceinline__
#else
#define FASTOPT_HD inline
#endif

namespace fastopt {

// A contiguous float32 buffer and its length, host or device memory alike.
struct Span {
  float* data;
  int64_t numel;
};

}  // namespace fastopt

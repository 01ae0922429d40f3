/*
Private to the cuda/ sources: vector loads and stores of N elements of a storage type T (float or
bf16, fastopt/bf16.h), widened to fp32 registers. Pack<T, N> is PyTorch's aligned_vector: an
aligned struct of N * sizeof(T) bytes, which nvcc moves with one 8- or 16-byte access (4 floats or
8 bf16 in 16 bytes: the bytes per access, not the elements, set the bandwidth). The bits travel
untouched; only to_float / from_float convert, so a bf16 kernel rounds each output once.
*/
#pragma once

#include <cstdint>

#include "fastopt/bf16.h"

namespace fastopt::cuda::detail {

template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements of T in one 16-byte access.
template <class T>
constexpr int kPack16 = static_cast<int>(16 / sizeof(T));

template <class T, int N>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int e = 0; e < N; ++e) out[e] = to_float(pk.v[e]);
}

template <class T, int N>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int e = 0; e < N; ++e) pk.v[e] = from_float<T>(in[e]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// Whether N elements of T at p can move as one access.
template <class T, int N>
__host__ __device__ __forceinline__ bool pack_aligned(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N)) == 0;
}

}  // namespace fastopt::cuda::detail

/*
Private to the cuda/ sources: error checking, stream-ordered scratch, and the multi-tensor launch that
every kernel of the optimizer and clipping families shares.

Multi-tensor launch (after PyTorch's multi_tensor_apply, minus its device-side pointer tables):
up to kMaxTensors tensors travel by value in ONE kernel parameter (CUDA 12.1+ allows 32764 bytes
of parameters on sm_70+, we target sm_80+), so a step costs no host-to-device copy and no sync.
Each tensor is cut into chunks of kChunk elements, one block per chunk; the prefix block_start[]
lets a block find its tensor by a binary search over <= 256 entries (8 uniform constant-bank loads).

kChunk = 16384 elements (64 KiB per array): with 256 threads that is 64 elements per thread, which
amortizes a block's fixed cost (tensor search, the two double pows of Adam's bias corrections) while
a 2^24-parameter model still yields 1024 blocks, several waves on a 132-SM H100. It also keeps the
norm pass's partial-sum buffer at 8 bytes per 64 KiB of gradients.

Every thread works on "quads" of 4 consecutive elements, kIlp quads of every array loaded before any
is used, so kIlp * N 16-byte loads are in flight per thread. The quad a thread owns depends only on
the element's offset within its chunk, never on pointer alignment (misaligned tensors take scalar
loads of the same quads), so per-block reductions are bitwise identical whatever the alignment.
*/
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastopt/backend.h"
#include "fastopt/device.h"
#include "fastopt/switches.h"

namespace fastopt::cuda::detail {

constexpr int kThreads = 256;          // threads per chunk block
constexpr int kFinalThreads = 1024;    // the single block that folds per-block partials
// 2 quads per array and thread in flight: AdamW then needs 58 registers (4 blocks of 256 per SM,
// 128 KiB of loads in flight per SM); 4 quads took 90 registers and halved the resident blocks.
constexpr int kIlp = 2;
constexpr int64_t kChunk = 16384;      // elements per block
constexpr int kMaxTensors = 256;       // tensors per launch
static_assert(kChunk % (4 * kThreads * kIlp) == 0, "a chunk is a whole number of unrolled rounds");

inline void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  // A failed call is also recorded as the "last error"; clear it so that the next launch check
  // does not blame a later kernel for it. (Sticky errors cannot be cleared and stay reported.)
  cudaGetLastError();
  throw std::runtime_error(std::string("fastopt CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Streaming multiprocessors of the current device, for grid sizing.
inline int sm_count() {
  int dev = 0, sms = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return sms;
}

// Grid-stride kernels: plenty of blocks, never past int32.
constexpr int64_t kMaxGridX = 65535LL * 64;
inline dim3 grid_stride_grid(int64_t total, int threads = kThreads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : blocks < kMaxGridX ? blocks : kMaxGridX));
}

// Stream-ordered scratch: freed on the stream after the kernels that use it, even when a later
// launch throws.
class Scratch {
 public:
  Scratch(size_t nbytes, cudaStream_t stream) : ptr_(malloc_async(nbytes, stream)), stream_(stream) {}
  ~Scratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  char* bytes() const { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// One launch's tensors. N arrays per tensor (optimizer: param, grad, states; reductions: 1).
// sizeof = 5136 + 2048 * N bytes: 7184 for the reductions, 13328 for Adam, 15376 for AMSGrad.
template <int N>
struct TensorList {
  float* ptr[N][kMaxTensors];
  int64_t numel[kMaxTensors];
  int64_t index[kMaxTensors];            // position in the caller's list (steps[i])
  int64_t first_block;                   // global number of this launch's block 0 (partial slots)
  int32_t block_start[kMaxTensors + 1];  // prefix sums of blocks; block_start[0] = 0
  int32_t num_tensors;
};
static_assert(sizeof(TensorList<5>) + 256 <= 32764, "kernel parameters above CUDA's limit");

inline int64_t num_blocks(int64_t numel) { return (numel + kChunk - 1) / kChunk; }

// Calls launch(list, grid) for consecutive batches of the tensors i in [0, count) for which
// get(i, ptrs) returns a nonzero numel (filling ptrs[N]); tensors with numel 0 get no block.
// A single tensor cannot overflow the int32 grid: that would take 2^45 floats (128 TiB).
template <int N, class Get, class Launch>
void for_each_batch(int64_t count, Get&& get, Launch&& launch) {
  TensorList<N> list{};
  for (int64_t i = 0; i < count; ++i) {
    float* ptrs[N];
    const int64_t numel = get(i, ptrs);
    if (numel == 0) continue;
    const int64_t blocks = num_blocks(numel);
    int32_t t = list.num_tensors;
    if (t == kMaxTensors || list.block_start[t] + blocks > INT_MAX) {
      launch(static_cast<const TensorList<N>&>(list), static_cast<int>(list.block_start[t]));
      list.first_block += list.block_start[t];
      list.num_tensors = t = 0;
    }
    for (int a = 0; a < N; ++a) list.ptr[a][t] = ptrs[a];
    list.numel[t] = numel;
    list.index[t] = i;
    list.block_start[t + 1] = list.block_start[t] + static_cast<int32_t>(blocks);
    list.num_tensors = t + 1;
  }
  if (list.num_tensors > 0) {
    launch(static_cast<const TensorList<N>&>(list), static_cast<int>(list.block_start[list.num_tensors]));
  }
}

// ------------------------------------------------------------------------------ device side

struct Chunk {
  int t;          // tensor slot in the launch
  int64_t begin;  // element range [begin, end) of that tensor
  int64_t end;
};

// The block's tensor is the last slot whose first block is <= blockIdx.x (the host adds no empty
// tensors, so block_start is strictly increasing).
template <int N>
__device__ __forceinline__ Chunk locate(const TensorList<N>& list) {
  const int b = static_cast<int>(blockIdx.x);
  int lo = 0;
  int hi = list.num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (list.block_start[mid] <= b) lo = mid; else hi = mid - 1;
  }
  const int64_t begin = static_cast<int64_t>(b - list.block_start[lo]) * kChunk;
  const int64_t end = begin + kChunk < list.numel[lo] ? begin + kChunk : list.numel[lo];
  return {lo, begin, end};
}

template <int N>
__device__ __forceinline__ void load_quad(float* const (&p)[N], int64_t q, int64_t end, bool aligned,
                                          float (&x)[4][N]) {
  if (aligned && q + 4 <= end) {
#pragma unroll
    for (int a = 0; a < N; ++a) {
      const float4 v = *reinterpret_cast<const float4*>(p[a] + q);
      x[0][a] = v.x; x[1][a] = v.y; x[2][a] = v.z; x[3][a] = v.w;
    }
  } else {
#pragma unroll
    for (int a = 0; a < N; ++a)
#pragma unroll
      for (int e = 0; e < 4; ++e) x[e][a] = q + e < end ? p[a][q + e] : 0.0f;
  }
}

template <int N, unsigned kStore>
__device__ __forceinline__ void store_quad(float* const (&p)[N], int64_t q, int64_t end, bool aligned,
                                           const float (&x)[4][N]) {
  if (aligned && q + 4 <= end) {
#pragma unroll
    for (int a = 0; a < N; ++a)
      if (kStore & (1u << a)) *reinterpret_cast<float4*>(p[a] + q) = make_float4(x[0][a], x[1][a], x[2][a], x[3][a]);
  } else {
#pragma unroll
    for (int a = 0; a < N; ++a)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if ((kStore & (1u << a)) && q + e < end) p[a][q + e] = x[e][a];
  }
}

// Runs op(float (&x)[N]) on every element of [begin, end) of the N arrays, x[a] being array a's
// value; arrays whose bit is set in kStore are written back. Loads of a round all precede its
// stores, which is what lets them overlap although the arrays may alias as far as nvcc knows.
template <int N, unsigned kStore, class Op>
__device__ __forceinline__ void chunk_apply(float* const (&p)[N], int64_t begin, int64_t end, Op&& op) {
  bool aligned = true;
#pragma unroll
  for (int a = 0; a < N; ++a) aligned = aligned && (reinterpret_cast<uintptr_t>(p[a]) & 15u) == 0;
  constexpr int64_t kStep = 4 * kThreads;  // elements between a thread's consecutive quads
  for (int64_t base = begin + 4 * static_cast<int64_t>(threadIdx.x); base < end; base += kIlp * kStep) {
    float x[kIlp][4][N];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) load_quad<N>(p, base + u * kStep, end, aligned, x[u]);
#pragma unroll
    for (int u = 0; u < kIlp; ++u)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (base + u * kStep + e < end) op(x[u][e]);
    if (kStore != 0u) {
#pragma unroll
      for (int u = 0; u < kIlp; ++u) store_quad<N, kStore>(p, base + u * kStep, end, aligned, x[u]);
    }
  }
}

// ------------------------------------------------------------------------ norm reductions
// Deterministic two-stage reductions: each chunk block folds its elements in a fixed order (per
// thread in quad order, then a fixed shuffle tree) into its own slot; one block then folds the
// slots, again in a fixed order. No atomics, so the result is bitwise the same run to run.

enum class NormKind { L1, L2, LINF, LP };

template <NormKind kNorm>
__device__ __forceinline__ float norm_term(float g, float p) {
  if constexpr (kNorm == NormKind::L2) return g * g;
  else if constexpr (kNorm == NormKind::LP) return powf(fabsf(g), p);
  else return fabsf(g);
}

// Max propagates NaN, as torch's inf-norm does (fmaxf would drop it). All terms are >= 0 or NaN,
// so 0 is the identity of both folds.
template <NormKind kNorm>
__device__ __forceinline__ float norm_fold(float a, float b) {
  if constexpr (kNorm == NormKind::LINF) return (a > b || a != a) ? a : b;
  else return a + b;
}

// The block's fold of v, valid in thread 0. Called once per kernel (one shared array).
template <NormKind kNorm, int kBlock>
__device__ __forceinline__ float block_fold(float v) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "whole warps, at most 32 of them");
  __shared__ float warp_value[kBlock / 32];
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v = norm_fold<kNorm>(v, __shfl_down_sync(0xffffffffu, v, off));
  if (threadIdx.x % 32 == 0) warp_value[threadIdx.x / 32] = v;
  __syncthreads();
  v = 0.0f;
  if (threadIdx.x < 32) {
    if (threadIdx.x < kBlock / 32) v = warp_value[threadIdx.x];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v = norm_fold<kNorm>(v, __shfl_down_sync(0xffffffffu, v, off));
  }
  return v;
}

// Body of a chunk block of a norm pass: the fold of |g|-terms of its chunk into partial[slot] and,
// when kFlag, whether any of them is NaN or Inf into flag[slot]; slot = the global block number.
template <NormKind kNorm, bool kFlag>
__device__ __forceinline__ void norm_partials(const TensorList<1>& list, float p, float* partial,
                                              int32_t* flag) {
  const Chunk c = locate(list);
  float* const ptr[1] = {list.ptr[0][c.t]};
  float acc = 0.0f;
  bool bad = false;
  chunk_apply<1, 0u>(ptr, c.begin, c.end, [&](float (&x)[1]) {
    acc = norm_fold<kNorm>(acc, norm_term<kNorm>(x[0], p));
    if constexpr (kFlag) bad = bad || !isfinite(x[0]);
  });
  acc = block_fold<kNorm, kThreads>(acc);
  const int64_t slot = list.first_block + blockIdx.x;
  if constexpr (kFlag) {
    const int any = __syncthreads_or(bad);
    if (threadIdx.x == 0) flag[slot] = any;
  }
  if (threadIdx.x == 0) partial[slot] = acc;
}

// Fold of partial[0, count) by a kBlock-thread block, valid in thread 0.
template <NormKind kNorm, int kBlock>
__device__ __forceinline__ float fold_partials(const float* partial, int64_t count) {
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < count; i += kBlock) acc = norm_fold<kNorm>(acc, partial[i]);
  return block_fold<kNorm, kBlock>(acc);
}

}  // namespace fastopt::cuda::detail

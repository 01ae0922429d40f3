/*
The CUDA host emulation (FASTOPT_CUDA=EMULATE): this header stands in for <cuda_runtime.h> when
the cuda/*.cu sources are compiled by the host C++ compiler, so that every kernel runs, unchanged,
on a machine without a GPU. It is a test harness, not a backend: no speed, and a GPU remains the
only proof that a kernel is right on a GPU.

What it models, to catch the bugs a GPU would show:
- Every CUDA thread runs on a fiber of its own. A block's fibers run one at a time, each until it
  waits at a barrier (__syncthreads, __syncthreads_or, a warp shuffle) or returns; the order in
  which they are resumed is reversed or shuffled from launch to launch, so code that reads
  another thread's shared or global writes without a barrier in between gives varying results
  (the order's seed is fixed; FASTOPT_CUDA_EMULATION_SEED=N draws other orders). Blocks run one
  at a time, also in an order that changes per launch.
- Warp shuffles exchange values through the warp's 32 lanes exactly as the hardware does
  (__shfl_down_sync, __shfl_xor_sync: the ones the sources use), and block barriers count exited
  threads as arrived. A barrier that some live thread never reaches is reported as a deadlock.
- Launch limits: block size (<= 1024), grid dimensions (x < 2^31, y and z < 65536) and the 32764
  bytes of kernel parameters; a launch beyond them records cudaErrorInvalidConfiguration (or
  cudaErrorInvalidValue) for cudaGetLastError, as the runtime does, and runs nothing.
- Device memory comes poisoned (every byte 0xFF: float NaN), as uninitialized GPU memory is not
  zero; pointers know their "device", so the bindings' device checks behave as on a GPU.
Not modelled: timing, blocks running at the same time, memory ordering across blocks, and TF32
rounding inside the tensor-core product (the operands are rounded to TF32 or are bf16, the sums
are fp32, in k order).

Shared memory is poisoned at the start of every block, too. The launch syntax
kernel<<<grid, block, smem, stream>>>(args) is rewritten at build time (rewrite_for_host.py) into fastopt_emulation::launch(grid, block, smem, stream)(call, args), where
call is a generic lambda that calls the kernel, so that template arguments are deduced as nvcc
deduces them.
*/
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define FASTOPT_CUDA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __grid_constant__
#define __launch_bounds__(...)
// One block runs at a time, so a block's shared memory can be a static of the kernel.
#define __shared__ static

// ------------------------------------------------------------------------------ types
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidConfiguration = 9,
};
using cudaError = cudaError_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaMemoryType { cudaMemoryTypeUnregistered, cudaMemoryTypeHost, cudaMemoryTypeDevice, cudaMemoryTypeManaged };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 4 };
constexpr unsigned int cudaHostAllocDefault = 0;
struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUmemPool_st;
using cudaMemPool_t = CUmemPool_st*;
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
  void* devicePointer;
  void* hostPointer;
};
struct cudaDeviceProp {
  char name[256];
  int multiProcessorCount;
  int major, minor;
  size_t totalGlobalMem;
};

// ------------------------------------------------------------------------------ runtime API
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr);
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
cudaError_t cudaMalloc(void** ptr, size_t nbytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocAsync(void** ptr, size_t nbytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream);
cudaError_t cudaHostAlloc(void** ptr, size_t nbytes, unsigned int flags);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t nbytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t nbytes, cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t nbytes, cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
// Two blocks per SM whatever the kernel (the count the tiled kernels' launch bounds aim at): only
// grid sizing reads it, and any count >= 1 is one a GPU could report.
template <class Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int block_size, size_t) {
  *blocks = block_size > 0 && block_size <= 1024 ? 2 : 0;
  return block_size > 0 && block_size <= 1024 ? cudaSuccess : cudaErrorInvalidValue;
}

// ------------------------------------------------------------------------------ device side
namespace fastopt_emulation {

struct ThreadState {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
const ThreadState& current();

// Poisons a __shared__ variable (every byte 0xFF) the first time a thread of the block reaches
// its declaration: a block's shared memory starts as garbage, and a static would keep the last
// block's values.
void fresh_shared(void* p, size_t nbytes);

void sync_block();
int sync_block_or(int predicate);
// Writes this lane's 8-byte value, waits for the warp, reads lane `src` (own value if src < 0),
// waits again so that the slots can be reused.
uint64_t warp_exchange(uint64_t value, int src);
int lane_id();

template <class T>
T shuffle(T v, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(bits, src);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}

// Runs grid x block fibers of `body` (which calls the kernel). A configuration beyond CUDA's
// limits runs nothing and records the runtime's error for cudaGetLastError.
void run_grid(dim3 grid, dim3 block, size_t smem, size_t param_bytes, void (*body)(void*), void* ctx);

// One warp-wide mma.sync.m16n8k8 TF32 product, d += a b, with PTX's fragment layout: every lane
// passes its a[4], b[2] and d[4] registers.
void mma_m16n8k8_tf32(float& d0, float& d1, float& d2, float& d3, const float (&a)[4], const float (&b)[2]);

// One warp-wide mma.sync.m16n8k16 bf16 product with fp32 accumulation, d += a b: every lane passes
// its A fragment as 4 registers of bf16 pairs, B as 2, and its 4 fp32 accumulators (PTX's layout;
// the lower k of a pair in the low 16 bits). Products of bf16 are exact in fp32; they are added to
// d in k order, in fp32.
void mma_m16n8k16_bf16(float& d0, float& d1, float& d2, float& d3, const uint32_t (&a)[4], const uint32_t (&b)[2]);

struct Launch {
  dim3 grid, block;
  size_t smem;
  // call(args...) calls the kernel; the arguments are copied once, as the runtime copies them,
  // and every thread's call copies them into the kernel's by-value parameters.
  template <class Call, class... Args>
  void operator()(Call call, Args&&... args) const {
    std::tuple<std::decay_t<Args>...> params(std::forward<Args>(args)...);
    struct Ctx {
      Call* call;
      std::tuple<std::decay_t<Args>...>* params;
    } ctx{&call, &params};
    run_grid(
        grid, block, smem, (sizeof(std::decay_t<Args>) + ... + 0),
        [](void* p) {
          auto* c = static_cast<Ctx*>(p);
          std::apply(*c->call, *c->params);
        },
        &ctx);
  }
};

inline Launch launch(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) { return {grid, block, smem}; }

}  // namespace fastopt_emulation

#define threadIdx (::fastopt_emulation::current().thread)
#define blockIdx (::fastopt_emulation::current().block)
#define blockDim (::fastopt_emulation::current().block_dim)
#define gridDim (::fastopt_emulation::current().grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads() { fastopt_emulation::sync_block(); }
inline int __syncthreads_or(int predicate) { return fastopt_emulation::sync_block_or(predicate); }

template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = fastopt_emulation::lane_id();
  const int src = lane + static_cast<int>(delta);
  return fastopt_emulation::shuffle(v, src / width == lane / width ? src : -1);
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = fastopt_emulation::lane_id();
  const int src = lane ^ mask;
  return fastopt_emulation::shuffle(v, src / width == lane / width ? src : -1);
}

inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((uint64_t{a} * b) >> 32); }
// Round-to-nearest products and sums that are never fused into an FMA (the sources are compiled
// with -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
// CUDA's device min/max take mixed integer types.
template <class A, class B>
std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <class A, class B>
std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
using std::isfinite;
using std::isinf;

/*
Device management and memory for the bindings: thin wrappers over the CUDA runtime that turn
errors into std::runtime_error (message from cudaGetErrorString), so nothing reachable from
Python aborts; an allocation the device refuses throws std::bad_alloc instead (MemoryError in
Python, reworded by the bindings for the array it was for).

The runtime is linked statically, so this file is loaded on machines without a driver. There
cudaGetDeviceCount fails (cudaErrorInsufficientDriver, cudaErrorNoDevice): that means "no GPU",
so device_count() answers 0 and clears the error instead of throwing.

`void* stream` is a cudaStream_t; 0 is the legacy default stream. Allocation is stream-ordered
(cudaMallocAsync/cudaFreeAsync): no device-wide sync as with cudaMalloc/cudaFree. Host buffers
handed to memcpy_h2d/d2h are pageable, so those copies end with a stream synchronize: the caller
may free or read its host buffer on return.
*/
#include <new>
#include <string>

#include "fastopt/backend.h"
#include "fastopt/device.h"
#include "launch.cuh"

namespace fastopt::cuda {

using detail::as_stream;
using detail::check;

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

// Pinned host memory counts as host (-1); managed memory belongs to its device. Pointers the
// runtime does not know (plain host memory, or no driver at all) are host memory as well.
int pointer_device(const void* ptr) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged ? attr.device : -1;
}

// The default pool hands memory back to the OS at every synchronization, which makes the next
// cudaMallocAsync pay for mapping it again; a per-step scratch buffer would pay that every step.
static void keep_pool_memory() {
  static thread_local int done_for = -1;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  if (done_for == device) return;
  cudaMemPool_t pool;
  check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
  uint64_t keep = UINT64_MAX;
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
  done_for = device;
}

namespace {
struct DeviceOutOfMemory : std::bad_alloc {
  std::string msg;
  explicit DeviceOutOfMemory(size_t nbytes)
      : msg("fastopt CUDA: cudaMallocAsync of " + std::to_string(nbytes) + " bytes: out of memory") {}
  const char* what() const noexcept override { return msg.c_str(); }
};
}  // namespace

void* malloc_async(size_t nbytes, void* stream) {
  if (nbytes == 0) return nullptr;
  keep_pool_memory();
  void* ptr = nullptr;
  const cudaError_t err = cudaMallocAsync(&ptr, nbytes, as_stream(stream));
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it, as check() does
    throw DeviceOutOfMemory(nbytes);
  }
  check(err, "cudaMallocAsync");
  return ptr;
}

void free_async(void* ptr, void* stream) {
  if (ptr == nullptr) return;
  check(cudaFreeAsync(ptr, as_stream(stream)), "cudaFreeAsync");
}

void memcpy_h2d(void* dst, const void* src, size_t nbytes, void* stream) {
  if (nbytes == 0) return;
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, as_stream(stream)),
        "cudaMemcpyAsync (host to device)");
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

void memcpy_d2h(void* dst, const void* src, size_t nbytes, void* stream) {
  if (nbytes == 0) return;
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, as_stream(stream)),
        "cudaMemcpyAsync (device to host)");
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

void memcpy_d2d(void* dst, const void* src, size_t nbytes, void* stream) {
  if (nbytes == 0) return;
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, as_stream(stream)),
        "cudaMemcpyAsync (device to device)");
}

void memset_async(void* ptr, int value, size_t nbytes, void* stream) {
  if (nbytes == 0) return;
  check(cudaMemsetAsync(ptr, value, nbytes, as_stream(stream)), "cudaMemsetAsync");
}

void synchronize(void* stream) { check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize"); }

void* host_alloc_pinned(size_t nbytes) {
  void* p = nullptr;
  if (cudaHostAlloc(&p, nbytes, cudaHostAllocDefault) != cudaSuccess) {
    cudaGetLastError();
    throw std::bad_alloc();  // pybind11 turns it into MemoryError
  }
  return p;
}

void host_free_pinned(void* ptr) { check(cudaFreeHost(ptr), "cudaFreeHost"); }

bool is_pinned(const void* ptr) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeHost;
}

void memcpy_h2d_async(void* dst, const void* src, size_t nbytes, void* stream) {
  if (nbytes == 0) return;
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, as_stream(stream)),
        "cudaMemcpyAsync (host to device)");
}

}  // namespace fastopt::cuda

// The CUDA runtime as the bindings see it (cuda/runtime.cu): device queries, stream-ordered and
// pinned memory, copies; apart from the op interfaces (backend.h: the optimizer step and clipping;
// the family headers), so that code owning device arrays needs nothing of the kernels. A build
// without CUDA defines none of it: its callers sit behind FASTOPT_WITH_CUDA or on_gpu.
#pragma once
#include <cstddef>
#include <string>

namespace fastopt::cuda {

// Device management. device_count() is 0 (never an error) without a GPU or driver.
int device_count();
std::string device_name(int device);
int runtime_version();
int driver_version();
void set_device(int device);
int pointer_device(const void* ptr);   // device owning ptr, -1 for host memory

void* malloc_async(size_t nbytes, void* stream);
void free_async(void* ptr, void* stream);
void memcpy_h2d(void* dst, const void* src, size_t nbytes, void* stream);  // synchronous for the host
void memcpy_d2h(void* dst, const void* src, size_t nbytes, void* stream);  // synchronous for the host
void memcpy_d2d(void* dst, const void* src, size_t nbytes, void* stream);  // asynchronous
void memset_async(void* ptr, int value, size_t nbytes, void* stream);
void synchronize(void* stream);
// Page-locked (pinned) host memory, which the copy engine reads directly: the source an
// asynchronous host-to-device copy needs. memcpy_h2d_async returns before the copy is done; the
// caller keeps src unchanged until the stream has passed the copy.
void* host_alloc_pinned(size_t nbytes);
void host_free_pinned(void* ptr);
bool is_pinned(const void* ptr);
void memcpy_h2d_async(void* dst, const void* src, size_t nbytes, void* stream);

}  // namespace fastopt::cuda

// fastopt.DeviceArray: a minimal GPU array owned by fastopt. Memory comes from the CUDA
// stream-ordered allocator on the stream it was made for, and goes back to it on that stream.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "arrays.h"

namespace fastopt {

// Python callables that allocate and free device memory in place of fastopt's stream-ordered
// pool (fastopt.cuda.set_allocator; fastopt.torch installs torch's caching allocator, so the two
// libraries share one pool of GPU memory).
struct ExternalAllocator {
  py::object alloc;  // alloc(nbytes, device, stream) -> int address
  py::object free;   // free(address, nbytes, device, stream)
};

struct Allocation {
  void* ptr = nullptr;
  size_t nbytes = 0;
  int device = 0;
  uintptr_t stream = 0;
  std::shared_ptr<ExternalAllocator> external;  // who made ptr: null for the pool
  Allocation(size_t nbytes, int device, uintptr_t stream);
  ~Allocation();
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;
};

struct DeviceArray {
  std::shared_ptr<Allocation> alloc;
  size_t offset = 0;  // bytes into alloc
  std::vector<int64_t> shape;
  DType dtype = DType::f32;

  void* data() const { return static_cast<char*>(alloc->ptr) + offset; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * itemsize(dtype); }
  int device() const { return alloc->device; }
};

bool cuda_compiled();
bool cuda_emulated();                 // FASTOPT_CUDA=EMULATE: "device" memory and kernels on the host
int cuda_device_count();              // 0 without CUDA support, driver or GPU
int cuda_device_of(const void* ptr);  // for CUDA-array-interface pointers
void require_cuda(const char* what);  // RuntimeError unless a GPU can be used

// An uninitialized DeviceArray of `shape` (a user's argument: errors name it "shape").
DeviceArray device_empty(std::vector<int64_t> shape, DType dtype, int device, uintptr_t stream);

// A new uninitialized output array where the inputs live: a NumPy array for kCPU, else a
// DeviceArray on that GPU (allocated on `stream`). Every op allocates its outputs here, so the
// size checks live in one place: `output` names the array ("y") and `source` the argument(s) its
// shape came from ("padding"). A shape with a negative dimension or of 2^63 bytes or more raises
// ValueError; one the allocator refuses raises MemoryError; each message names both.
py::object new_array(const std::vector<int64_t>& shape, DType dtype, int device, uintptr_t stream, const char* output,
                     const char* source);

void bind_device_array(py::module_& m);

}  // namespace fastopt

// What every binding does after its checks: run the GPU half of an op (the CPU half is the
// binding's own `if (device == kCPU)` branch), and take the data pointer of an output it made.
#pragma once

#include <stdexcept>
#include <type_traits>

#include "arrays.h"
#include "fastopt/device.h"

namespace fastopt {

// Runs `gpu(device)` with `device` current. A build without CUDA never sees a GPU array
// (view_array refuses them), so reaching this there is a bug in the binding, not a user error.
// `gpu` must be a generic lambda, [&](auto) { ... }: a build without CUDA then never instantiates
// its body, whose CUDA calls have no definitions there (a plain lambda's body is compiled, and its
// templates instantiated, even if never called).
template <class F>
void on_gpu(int device, F&& gpu) {
  static_assert(!std::is_invocable_v<F>, "on_gpu takes a generic lambda, [&](auto) { ... }");
#ifdef FASTOPT_WITH_CUDA
  cuda::set_device(device);
  gpu(device);
#else
  (void)device;
  (void)gpu;
  throw std::runtime_error("unreachable: a CUDA array in a build without CUDA");
#endif
}

// The data of `out`, an array the binding has just made (new_array), viewed writable; `dtype`,
// when given, is the dtype it must have.
inline void* data_of(py::handle out, const char* name, const DType* dtype = nullptr) {
  return view_array(out, ArgName{name}, true, dtype).data;
}

}  // namespace fastopt

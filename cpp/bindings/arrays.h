// Turning Python arguments into raw views: NumPy arrays (CPU), fastopt.DeviceArray, and any
// object with __cuda_array_interface__ (CuPy, PyTorch, Numba), all zero-copy. Every check
// failure raises a Python exception that names the argument, e.g. "grads[3]: ...".
//
// This is the one place that decides an argument's dtype. bfloat16 comes as ml_dtypes'
// bfloat16 NumPy arrays (recognized by their registered type number: they have no buffer
// protocol, but NumPy's C API reads them like any array), torch.bfloat16 tensors and bf16
// DeviceArrays; float16 as NumPy/torch float16. Outputs of bf16 ops are ml_dtypes arrays.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fastopt/bf16.h"

namespace fastopt {
namespace py = pybind11;

enum class DType : uint8_t { f32, f64, i32, i64, u8, b1, bf16, f16 };

size_t itemsize(DType t);
const char* dtype_name(DType t);
DType dtype_from_numpy(const py::dtype& dt);  // TypeError for anything else
py::dtype numpy_dtype(DType t);           // bf16: ml_dtypes.bfloat16
bool is_low_precision(DType t);           // bf16 or f16
Storage storage_of(DType t);              // f32, bf16 or f16 (the kernels' storage types)

constexpr int kCPU = -1;  // device id of host memory; GPUs are 0, 1, ...

// Where an argument came from, for error messages: "name" or "name[index]".
struct ArgName {
  const char* name;
  int64_t index = -1;
  std::string str() const;
};

struct ArrayView {
  void* data = nullptr;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  DType dtype = DType::f32;
  int device = kCPU;
  bool writable = true;
};

std::string device_str(int device);
std::string shape_str(const std::vector<int64_t>& shape);  // "(2, 3)", "(4,)"

// Parses obj; checks C-contiguity (and writability when `writable`). With want_dtype set the
// dtype must match exactly: nothing is ever converted, since a converted copy would silently
// swallow an in-place update.
ArrayView view_array(py::handle obj, const ArgName& name, bool writable, const DType* want_dtype);

inline ArrayView view_f32(py::handle obj, const ArgName& name, bool writable) {
  const DType f = DType::f32;
  return view_array(obj, name, writable, &f);
}

// A float32 or bfloat16 array (host or GPU): the inputs of kernels that have a bf16 path.
// Anything else raises TypeError naming the argument.
ArrayView view_floating(py::handle obj, const ArgName& name, bool writable);

// Calls f(float{}) or f(bf16{}) for the dtype of a view_floating array v, so that one generic
// lambda instantiates an op's kernel call for both storage types.
template <class F>
void by_floating_dtype(const ArrayView& v, F&& f) {
  if (v.dtype == DType::bf16) f(bf16{});
  else f(float{});
}

// v's data as a T array (T: the storage type the view's dtype holds).
template <class T>
const T* data_as(const ArrayView& v) {
  return static_cast<const T*>(v.data);
}

// TypeError naming b unless b has a's dtype: ops that need one dtype never mix (or convert) them.
void require_same_dtype(const ArrayView& a, const ArgName& an, const ArrayView& b, const ArgName& bn);

// Raises ValueError unless a and b live on the same device.
void require_same_device(const ArrayView& a, const ArgName& an, const ArrayView& b, const ArgName& bn);

[[noreturn]] void raise_value(const std::string& msg);
[[noreturn]] void raise_type(const std::string& msg);

// An image op's layout argument: false for "nchw", true for "nhwc" (channels_last), which the CPU
// kernels take only: ValueError naming layout for any other string or for arrays on a GPU.
bool nhwc_layout(const std::string& layout, int device);
[[noreturn]] void raise_memory(const std::string& msg);  // MemoryError

// The byte ranges an operation writes must not overlap anything else it touches.
struct ByteRange {
  uintptr_t begin;
  uintptr_t end;
  int32_t arg;    // index into the caller's name table
  int64_t index;
};
// Raises ValueError naming both arguments when two non-empty ranges overlap.
void require_disjoint(std::vector<ByteRange> ranges, const std::vector<const char*>& names);

}  // namespace fastopt

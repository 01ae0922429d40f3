// The weight-gradient outputs of the backward bindings (conv2d dw/db, linear dweight/dbias, the
// norms' dweight/dbias): each a fresh float32 array, or the caller's `out` array (a parameter's
// slot in a flat gradient buffer) that the kernel writes, or with accumulate adds into, at its
// final store, so neither a temporary nor a copy pass is needed.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "arrays.h"
#include "device_array.h"

namespace fastopt {

struct GradOut {
  py::object obj;  // what the binding returns: the out array itself, a fresh array, or None
  float* ptr;      // null when the gradient is not computed
};

// An input the outputs must not share memory with.
struct NamedRange {
  const char* name;
  const ArrayView* view;
};

// ValueError naming the output first when its bytes overlap another array's.
inline void require_apart(const ArrayView& out, const char* out_name, const ArrayView& other, const char* other_name) {
  const auto ob = reinterpret_cast<uintptr_t>(out.data), tb = reinterpret_cast<uintptr_t>(other.data);
  const uintptr_t oe = ob + static_cast<uintptr_t>(out.numel) * itemsize(out.dtype),
                  te = tb + static_cast<uintptr_t>(other.numel) * itemsize(other.dtype);
  if (ob < oe && tb < te && ob < te && tb < oe)
    raise_value(std::string(out_name) + " and " + other_name + " share memory; they must be distinct arrays");
}

// `grad` (e.g. "dw") of `shape` on x's device, when wanted: out_obj if not None (a writable,
// C-contiguous float32 array of that shape on that device, sharing no memory with `inputs`),
// else fresh. accumulate needs the out array; an out for a gradient not computed is refused,
// since it would silently stay unchanged. Errors name the argument (out_name).
inline GradOut grad_output(bool wanted, const char* grad, py::handle out_obj, const char* out_name,
                           const std::vector<int64_t>& shape, const ArrayView& x, bool accumulate, uintptr_t stream,
                           const char* source, const std::vector<NamedRange>& inputs) {
  if (!wanted) {
    if (!out_obj.is_none())
      raise_value(std::string(out_name) + ": given, but " + grad + " is not computed (not asked for, or no parameter)");
    return {py::none(), nullptr};
  }
  if (out_obj.is_none()) {
    if (accumulate)
      raise_value(std::string(out_name) + ": accumulate=True adds " + grad + " into this array, got None");
    py::object fresh = new_array(shape, DType::f32, x.device, stream, grad, source);
    return {fresh, static_cast<float*>(view_f32(fresh, ArgName{grad}, true).data)};
  }
  const ArrayView v = view_f32(out_obj, ArgName{out_name}, true);
  require_same_device(x, ArgName{"x"}, v, ArgName{out_name});
  if (v.shape != shape)
    raise_value(std::string(out_name) + ": expected shape " + shape_str(shape) + " (the shape of " + grad + "), got " +
                shape_str(v.shape));
  for (const NamedRange& in : inputs) require_apart(v, out_name, *in.view, in.name);
  return {py::reinterpret_borrow<py::object>(out_obj), static_cast<float*>(v.data)};
}

// Two outputs of one call (dw and db) must not share memory either.
inline void require_distinct_outputs(const GradOut& a, const char* an, const GradOut& b, const char* bn) {
  if (a.ptr != nullptr && b.ptr != nullptr)
    require_apart(view_f32(b.obj, ArgName{bn}, true), bn, view_f32(a.obj, ArgName{an}, true), an);
}

}  // namespace fastopt

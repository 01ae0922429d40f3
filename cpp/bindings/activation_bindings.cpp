// Python entry points of the pointwise family: ReLU, LeakyReLU and the smooth activations,
// forward and backward; the residual add with drop path; axpby over lists of arrays. Every
// argument is validated here with a message naming it; the GIL is released around the kernels.
#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "dispatch.h"
#include "fastopt/activation.h"
#include "fastopt/backend.h"

namespace fastopt {
namespace {

enum class Act { relu, relu_grad, leaky, leaky_grad };

// A backward's dy (float32, or bf16 where the op has that path): x's dtype, device and shape.
// Returns its data, or null for a forward (dy_obj null).
const void* dy_data(py::handle dy_obj, const ArrayView& x) {
  if (!dy_obj) return nullptr;
  const ArrayView dy = view_floating(dy_obj, ArgName{"dy"}, false);
  require_same_device(x, ArgName{"x"}, dy, ArgName{"dy"});
  require_same_dtype(x, ArgName{"x"}, dy, ArgName{"dy"});
  if (dy.shape != x.shape)
    raise_value("dy: expected the shape " + shape_str(x.shape) + " of x, got " + shape_str(dy.shape));
  return dy.data;
}

// Forward: dy_obj is null. Backward: dy must match x in shape and device. The output is a new
// array like x.
// x and dy: float32 or bfloat16 (one dtype); the output has x's dtype.
py::object activation(Act act, py::handle dy_obj, py::handle x_obj, double negative_slope, uintptr_t stream) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const void* dyv = dy_data(dy_obj, x);
  const float slope = static_cast<float>(negative_slope);  // torch multiplies by the float32 value
  const int64_t n = x.numel;
  py::object out = new_array(x.shape, x.dtype, x.device, stream, dy_obj ? "dx" : "y", "x");
  void* yv = view_array(out, ArgName{"out"}, true, &x.dtype).data;
  if (x.device == kCPU) {
    py::gil_scoped_release nogil;
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      const T* xp = data_as<T>(x);
      const T* dyp = static_cast<const T*>(dyv);
      T* yp = static_cast<T*>(yv);
      switch (act) {
        case Act::relu: cpu::relu_forward(xp, yp, n); break;
        case Act::relu_grad: cpu::relu_backward(dyp, xp, yp, n); break;
        case Act::leaky: cpu::leaky_relu_forward(xp, yp, n, slope); break;
        case Act::leaky_grad: cpu::leaky_relu_backward(dyp, xp, yp, n, slope); break;
      }
    });
    return out;
  }
  on_gpu(x.device, [&](auto) {
    py::gil_scoped_release nogil;
    void* s = reinterpret_cast<void*>(stream);
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      const T* xp = data_as<T>(x);
      const T* dyp = static_cast<const T*>(dyv);
      T* yp = static_cast<T*>(yv);
      switch (act) {
        case Act::relu: cuda::relu_forward(xp, yp, n, s); break;
        case Act::relu_grad: cuda::relu_backward(dyp, xp, yp, n, s); break;
        case Act::leaky: cuda::leaky_relu_forward(xp, yp, n, slope, s); break;
        case Act::leaky_grad: cuda::leaky_relu_backward(dyp, xp, yp, n, slope, s); break;
      }
    });
  });
  return out;
}

// tanh / sigmoid / elu / gelu, forward (dy_obj null) and backward, same checks as activation().
py::object smooth_activation(Smooth op, py::handle dy_obj, py::handle x_obj, double alpha, uintptr_t stream) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const void* dyv = dy_data(dy_obj, x);
  py::object out = new_array(x.shape, x.dtype, x.device, stream, dy_obj ? "dx" : "y", "x");
  void* yv = view_array(out, ArgName{"out"}, true, &x.dtype).data;
  const float a = static_cast<float>(alpha);
  py::gil_scoped_release nogil;
  if (x.device == kCPU) {
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      const T* dyp = static_cast<const T*>(dyv);
      if (dyp) cpu::smooth_backward(op, dyp, data_as<T>(x), static_cast<T*>(yv), x.numel, a);
      else cpu::smooth_forward(op, data_as<T>(x), static_cast<T*>(yv), x.numel, a);
    });
    return out;
  }
  on_gpu(x.device, [&](auto) {
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      const T* dyp = static_cast<const T*>(dyv);
      void* s = reinterpret_cast<void*>(stream);
      if (dyp) cuda::smooth_backward(op, dyp, data_as<T>(x), static_cast<T*>(yv), x.numel, a, s);
      else cuda::smooth_forward(op, data_as<T>(x), static_cast<T*>(yv), x.numel, a, s);
    });
  });
  return out;
}

// y = s + b * f_n per sample n (the first dim), s optional; p, seed, offset are checked in Python.
py::object residual_add_op(py::handle b_obj, py::handle s_obj, double p, uint64_t seed, uint64_t offset,
                           uintptr_t stream) {
  const ArrayView b = view_floating(b_obj, ArgName{"body"}, false);
  const void* sv = nullptr;
  if (!s_obj.is_none()) {
    const ArrayView s = view_floating(s_obj, ArgName{"shortcut"}, false);
    require_same_device(b, ArgName{"body"}, s, ArgName{"shortcut"});
    require_same_dtype(b, ArgName{"body"}, s, ArgName{"shortcut"});
    if (s.shape != b.shape)
      raise_value("shortcut: its output shape " + shape_str(s.shape) + " differs from the body's " +
                  shape_str(b.shape) +
                  " (a projection shortcut, e.g. a strided 1x1 conv + batch norm, makes them match)");
    sv = s.data;
  }
  if (b.shape.empty()) raise_value("body: expected at least 1 dimension (samples first), got a 0-d array");
  const int64_t rows = b.shape[0], inner = rows == 0 ? 0 : b.numel / rows;
  py::object out = new_array(b.shape, b.dtype, b.device, stream, "y", "body");
  void* yv = view_array(out, ArgName{"out"}, true, &b.dtype).data;
  const DropoutParams d = dropout_params(p, seed, offset);
  py::gil_scoped_release nogil;
  if (b.device == kCPU) {
    by_floating_dtype(b, [&](auto tag) {
      using T = decltype(tag);
      cpu::residual_add(data_as<T>(b), static_cast<const T*>(sv), static_cast<T*>(yv), rows, inner, d);
    });
    return out;
  }
  on_gpu(b.device, [&](auto) {
    by_floating_dtype(b, [&](auto tag) {
      using T = decltype(tag);
      cuda::residual_add(data_as<T>(b), static_cast<const T*>(sv), static_cast<T*>(yv), rows, inner, d,
                         reinterpret_cast<void*>(stream));
    });
  });
  return out;
}

// The pairs (ys[i], xs[i]) of a list op, checked: as many xs as ys, each pair on one device with
// one element count, ys writable, no memory shared between any two arrays but an x that is its
// own y (when in_place; a partial overlap would make the result depend on the order of work).
// view(obj, name, writable) reads one array and checks its dtype.
template <class View>
std::pair<std::vector<ArrayView>, std::vector<ArrayView>> array_pairs(py::sequence ys_obj, py::sequence xs_obj,
                                                                      View view, bool in_place) {
  const size_t n = py::len(ys_obj);
  if (py::len(xs_obj) != n)
    raise_value("xs: expected " + std::to_string(n) + " arrays (one per ys), got " + std::to_string(py::len(xs_obj)));
  std::vector<ArrayView> ys, xs;
  std::vector<ByteRange> ranges;
  for (size_t i = 0; i < n; ++i) {
    const int64_t k = static_cast<int64_t>(i);
    ys.push_back(view(ys_obj[i], ArgName{"ys", k}, true));
    xs.push_back(view(xs_obj[i], ArgName{"xs", k}, false));
    require_same_device(ys[i], ArgName{"ys", k}, xs[i], ArgName{"xs", k});
    require_same_device(ys[0], ArgName{"ys", 0}, ys[i], ArgName{"ys", k});
    if (xs[i].numel != ys[i].numel)
      raise_value(ArgName{"xs", k}.str() + ": expected " + std::to_string(ys[i].numel) + " elements like ys[" +
                  std::to_string(i) + "], got shape " + shape_str(xs[i].shape));
    const auto yb = reinterpret_cast<uintptr_t>(ys[i].data), xb = reinterpret_cast<uintptr_t>(xs[i].data);
    ranges.push_back({yb, yb + static_cast<uintptr_t>(ys[i].numel) * itemsize(ys[i].dtype), 0, k});
    if (!(in_place && xb == yb))
      ranges.push_back({xb, xb + static_cast<uintptr_t>(xs[i].numel) * itemsize(xs[i].dtype), 1, k});
  }
  require_disjoint(std::move(ranges), {"ys", "xs"});
  return {std::move(ys), std::move(xs)};
}

// ys[i] = a * xs[i] + b * ys[i] for every pair (float32), in one call; xs[i] may be ys[i] itself.
void axpby_lists(py::sequence ys_obj, py::sequence xs_obj, double a, double b, uintptr_t stream) {
  const auto pairs = array_pairs(ys_obj, xs_obj, view_f32, true);
  const std::vector<ArrayView>& ys = pairs.first;
  const std::vector<ArrayView>& xs = pairs.second;
  const float af = static_cast<float>(a), bf = static_cast<float>(b);
  py::gil_scoped_release nogil;
  for (size_t i = 0; i < ys.size(); ++i) {
    const auto* xp = static_cast<const float*>(xs[i].data);
    auto* yp = static_cast<float*>(ys[i].data);
    if (ys[i].device == kCPU) {
      cpu::axpby(xp, yp, ys[i].numel, af, bf);
      continue;
    }
    on_gpu(ys[i].device, [&](auto) { cuda::axpby(xp, yp, ys[i].numel, af, bf, reinterpret_cast<void*>(stream)); });
  }
}

// ys[i] = xs[i] converted to ys[i]'s dtype (float32 <-> bfloat16), pair by pair, in one call.
void cast_lists(py::sequence ys_obj, py::sequence xs_obj, uintptr_t stream) {
  const auto pairs = array_pairs(ys_obj, xs_obj, view_floating, false);
  const std::vector<ArrayView>& ys = pairs.first;
  const std::vector<ArrayView>& xs = pairs.second;
  for (size_t i = 0; i < ys.size(); ++i)
    if (xs[i].dtype == ys[i].dtype)
      raise_type(ArgName{"xs", static_cast<int64_t>(i)}.str() + ": already " + dtype_name(xs[i].dtype) + " like ys[" +
                 std::to_string(i) + "]; cast_ converts between float32 and bfloat16 (copy_ copies)");
  py::gil_scoped_release nogil;
  for (size_t i = 0; i < ys.size(); ++i) {
    const ArrayView &x = xs[i], &y = ys[i];
    const bool narrow = x.dtype == DType::f32;  // else bf16 -> f32
    if (y.device == kCPU) {
      if (narrow) cpu::cast(static_cast<const float*>(x.data), static_cast<bf16*>(y.data), x.numel);
      else cpu::cast(static_cast<const bf16*>(x.data), static_cast<float*>(y.data), x.numel);
      continue;
    }
    on_gpu(y.device, [&](auto) {
      void* st = reinterpret_cast<void*>(stream);
      if (narrow) cuda::cast(static_cast<const float*>(x.data), static_cast<bf16*>(y.data), x.numel, st);
      else cuda::cast(static_cast<const bf16*>(x.data), static_cast<float*>(y.data), x.numel, st);
    });
  }
}

}  // namespace

void bind_activation(py::module_& m) {
  m.def(
      "relu_forward", [](py::handle x, uintptr_t stream) { return activation(Act::relu, {}, x, 0.0, stream); },
      py::arg("x"), py::arg("stream") = 0,
      "y = max(x, 0) (NaN propagates), a new array of x's dtype (float32 or bfloat16) on its device.");
  m.def(
      "relu_backward",
      [](py::handle dy, py::handle x, uintptr_t stream) { return activation(Act::relu_grad, dy, x, 0.0, stream); },
      py::arg("dy"), py::arg("x"), py::arg("stream") = 0,
      "dx = x <= 0 ? 0 : dy (torch's threshold_backward: a NaN x passes dy).");
  m.def(
      "leaky_relu_forward",
      [](py::handle x, double slope, uintptr_t stream) { return activation(Act::leaky, {}, x, slope, stream); },
      py::arg("x"), py::arg("negative_slope") = 0.01, py::arg("stream") = 0,
      "y = x > 0 ? x : x * negative_slope (the slope rounded to float32, as torch does).");
  m.def(
      "leaky_relu_backward",
      [](py::handle dy, py::handle x, double slope, uintptr_t stream) {
        return activation(Act::leaky_grad, dy, x, slope, stream);
      },
      py::arg("dy"), py::arg("x"), py::arg("negative_slope") = 0.01, py::arg("stream") = 0,
      "dx = x > 0 ? dy : dy * negative_slope.");
  py::enum_<Smooth>(m, "Smooth")
      .value("tanh", Smooth::tanh)
      .value("sigmoid", Smooth::sigmoid)
      .value("elu", Smooth::elu)
      .value("gelu", Smooth::gelu);
  m.def(
      "smooth_forward",
      [](Smooth op, py::handle x, double alpha, uintptr_t stream) {
        return smooth_activation(op, {}, x, alpha, stream);
      },
      py::arg("op"), py::arg("x"), py::arg("alpha") = 1.0, py::arg("stream") = 0,
      "y = tanh, sigmoid, elu (alpha) or exact gelu of x, a new array of x's dtype (float32 or bfloat16) on its "
      "device.");
  m.def(
      "smooth_backward",
      [](Smooth op, py::handle dy, py::handle x, double alpha, uintptr_t stream) {
        return smooth_activation(op, dy, x, alpha, stream);
      },
      py::arg("op"), py::arg("dy"), py::arg("x"), py::arg("alpha") = 1.0, py::arg("stream") = 0,
      "dx of the smooth activation at x for the output gradient dy.");
  m.def("residual_add", &residual_add_op, py::arg("body"), py::arg("shortcut"), py::arg("p"), py::arg("seed"),
        py::arg("offset"), py::arg("stream") = 0,
        "y = shortcut + body * f_n per sample n (drop path: f_n = keep ? 1/(1-p) : 0), a new array.");
  m.def("axpby_", &axpby_lists, py::arg("ys"), py::arg("xs"), py::arg("a"), py::arg("b"), py::arg("stream") = 0,
        "ys[i] = a * xs[i] + b * ys[i] in place for every pair (a zero coefficient's term is not read).");
  m.def("cast_", &cast_lists, py::arg("ys"), py::arg("xs"), py::arg("stream") = 0,
        "ys[i] = xs[i] converted between float32 and bfloat16 (rounded to nearest even, or widened exactly), "
        "in place, for every pair.");
}

}  // namespace fastopt

// Python entry points of the linear family: _C.linear_forward and _C.linear_backward. Each
// validates shapes against the interface (fastopt/linear.h), allocates the outputs on the
// inputs' device, releases the GIL and dispatches to the CPU or CUDA backend.
// dtypes: x, weight, bias and dy all float32 or all bfloat16, on either device (the GPU's bf16
// runs on tensor cores); a mix raises TypeError naming the odd one. y and dx take the
// inputs' dtype, dweight and dbias are float32 either way (fp32 master gradients), fresh or written
// (with accumulate: added) into the caller's dweight_out / dbias_out at the final store (grad_out.h).
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "dispatch.h"
#include "grad_out.h"
#include "fastopt/backend.h"
#include "fastopt/linear.h"

namespace fastopt {
namespace {

void require_2d(const ArrayView& v, const char* name, const char* dims) {
  if (v.shape.size() != 2)
    raise_value(std::string(name) + ": expected a 2-D array " + dims + ", got shape " + shape_str(v.shape));
}

// Checks x (N, in) against weight (out, in).
LinearShape linear_shape(const ArrayView& x, const ArrayView& w) {
  require_2d(x, "x", "(N, in_features)");
  require_2d(w, "weight", "(out_features, in_features)");
  if (w.shape[1] != x.shape[1])
    raise_value("weight: expected shape (out_features, " + std::to_string(x.shape[1]) + ") to match x " +
                shape_str(x.shape) + ", got " + shape_str(w.shape));
  return LinearShape{x.shape[0], x.shape[1], w.shape[0]};
}

py::object linear_forward(py::handle x_obj, py::handle w_obj, py::handle b_obj, uintptr_t stream) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const ArrayView w = view_floating(w_obj, ArgName{"weight"}, false);
  require_same_device(x, ArgName{"x"}, w, ArgName{"weight"});
  require_same_dtype(x, ArgName{"x"}, w, ArgName{"weight"});
  const LinearShape s = linear_shape(x, w);
  const void* b = nullptr;
  if (!b_obj.is_none()) {
    const ArrayView bv = view_floating(b_obj, ArgName{"bias"}, false);
    require_same_device(x, ArgName{"x"}, bv, ArgName{"bias"});
    require_same_dtype(x, ArgName{"x"}, bv, ArgName{"bias"});
    if (bv.shape != std::vector<int64_t>{s.out})
      raise_value("bias: expected shape (" + std::to_string(s.out) + ",), one per output feature, got " +
                  shape_str(bv.shape));
    b = bv.data;
  }
  py::object y = new_array({s.N, s.out}, x.dtype, x.device, stream, "y", "x and weight");
  void* yp = data_of(y, "y");
  if (x.device == kCPU) {
    {
      py::gil_scoped_release nogil;
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        cpu::linear_forward(s, data_as<T>(x), data_as<T>(w), static_cast<const T*>(b), static_cast<T*>(yp));
      });
    }
    return y;
  }
  on_gpu(x.device, [&](auto) {
    py::gil_scoped_release nogil;
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      cuda::linear_forward(s, data_as<T>(x), data_as<T>(w), static_cast<const T*>(b), static_cast<T*>(yp),
                           reinterpret_cast<void*>(stream));
    });
  });
  return y;
}

py::tuple linear_backward(py::handle dy_obj, py::handle x_obj, py::handle w_obj, bool need_dx, bool need_dw,
                          bool need_db, uintptr_t stream, py::handle dw_out, py::handle db_out, bool accumulate) {
  const ArrayView dy = view_floating(dy_obj, ArgName{"dy"}, false);
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const ArrayView w = view_floating(w_obj, ArgName{"weight"}, false);
  require_same_device(x, ArgName{"x"}, w, ArgName{"weight"});
  require_same_device(x, ArgName{"x"}, dy, ArgName{"dy"});
  require_same_dtype(x, ArgName{"x"}, w, ArgName{"weight"});
  require_same_dtype(x, ArgName{"x"}, dy, ArgName{"dy"});
  const LinearShape s = linear_shape(x, w);
  const std::vector<int64_t> yshape{s.N, s.out};
  if (dy.shape != yshape)
    raise_value("dy: expected the output shape " + shape_str(yshape) + " of x " + shape_str(x.shape) + " and weight " +
                shape_str(w.shape) + ", got " + shape_str(dy.shape));

  const std::vector<NamedRange> inputs{{"dy", &dy}, {"x", &x}, {"weight", &w}};
  const GradOut dw = grad_output(need_dw, "dweight", dw_out, "dweight_out", w.shape, x, accumulate, stream, "weight",
                                 inputs);
  const GradOut db = grad_output(need_db, "dbias", db_out, "dbias_out", {s.out}, x, accumulate, stream, "weight",
                                 inputs);
  require_distinct_outputs(dw, "dweight_out", db, "dbias_out");
  py::object dx = py::none();
  void* dxp = nullptr;
  if (need_dx) dxp = data_of(dx = new_array(x.shape, x.dtype, x.device, stream, "dx", "x"), "dx");
  float *const dwp = dw.ptr, *const dbp = db.ptr;
  if (x.device == kCPU) {
    {
      py::gil_scoped_release nogil;
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        if (dxp) cpu::linear_backward_data(s, data_as<T>(dy), data_as<T>(w), static_cast<T*>(dxp));
        if (dwp) cpu::linear_backward_weight(s, data_as<T>(dy), data_as<T>(x), dwp, accumulate);
        if (dbp) cpu::linear_backward_bias(s, data_as<T>(dy), dbp, accumulate);
      });
    }
    return py::make_tuple(dx, dw.obj, db.obj);
  }
  on_gpu(x.device, [&](auto) {
    py::gil_scoped_release nogil;
    void* st = reinterpret_cast<void*>(stream);
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      const T *dyp = data_as<T>(dy), *xp = data_as<T>(x), *wp = data_as<T>(w);
      if (dxp) cuda::linear_backward_data(s, dyp, wp, static_cast<T*>(dxp), st);
      if (dwp) cuda::linear_backward_weight(s, dyp, xp, dwp, accumulate, st);
      if (dbp) cuda::linear_backward_bias(s, dyp, dbp, accumulate, st);
    });
  });
  return py::make_tuple(dx, dw.obj, db.obj);
}

}  // namespace

void bind_linear(py::module_& m) {
  m.def("linear_forward", &linear_forward, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stream") = 0,
        "y = x @ weight.T + bias in float32 or bfloat16: x (N, in), weight (out, in), bias (out,) or None.");
  m.def("linear_backward", &linear_backward, py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("need_dx") = true,
        py::arg("need_dweight") = true, py::arg("need_dbias") = true, py::arg("stream") = 0,
        py::arg("dweight_out") = py::none(), py::arg("dbias_out") = py::none(), py::arg("accumulate") = false,
        "(dx, dweight, dbias) of linear for the output gradient dy (dx in the inputs' dtype, dweight and dbias "
        "float32); an output not asked for is None. dweight_out / dbias_out receive them (accumulate: added).");
}

}  // namespace fastopt

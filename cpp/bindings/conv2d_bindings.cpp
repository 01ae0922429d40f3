// Python entry points of the conv2d family: _C.conv2d_forward and _C.conv2d_backward. Each
// validates shapes and hyper-parameters against the interface (fastopt/conv2d.h), allocates the
// outputs on the inputs' device, releases the GIL and dispatches to the CPU or CUDA backend.
// dtypes: x, w, b and dy all float32 or all bfloat16, on either device (the GPU's bf16 GEMM
// passes run on tensor cores); a mix raises TypeError naming the odd one. y and dx take the inputs' dtype,
// dw and db are float32 either way (fp32 master gradients), fresh or written (with accumulate:
// added) into the caller's dw_out / db_out by the kernels' final stores (grad_out.h).
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "dispatch.h"
#include "grad_out.h"
#include "fastopt/backend.h"
#include "fastopt/conv2d.h"

namespace fastopt {
namespace {

using Pair = std::array<int64_t, 2>;

void require_4d(const ArrayView& v, const char* name, const char* dims) {
  if (v.shape.size() != 4)
    raise_value(std::string(name) + ": expected a 4-D array " + dims + ", got shape " + shape_str(v.shape));
}

// layout "nchw" (x (N, C, H, W), y (N, K, P, Q)) or "nhwc" (channels_last: x (N, H, W, C),
// y (N, P, Q, K), CPU only (nhwc_layout), groups = 1); w is (K, C/groups, R, S) in both.
void require_nhwc_groups(bool nhwc, int64_t groups) {
  if (nhwc && groups != 1)
    raise_value("groups: layout 'nhwc' takes groups=1 only, got groups=" + std::to_string(groups) +
                "; pass NCHW arrays for grouped convolutions");
}

// Checks x (N, C, H, W) (or (N, H, W, C): nhwc), w (K, C/groups, R, S) and the hyper-parameters;
// fills in P and Q.
Conv2dShape conv_shape(const ArrayView& x, const ArrayView& w, Pair stride, Pair padding, Pair dilation, int64_t groups,
                       bool nhwc = false) {
  require_4d(x, "x", nhwc ? "(N, H, W, C)" : "(N, C, H, W)");
  require_4d(w, "w", "(K, C/groups, R, S)");
  for (int i = 0; i < 2; ++i) {
    if (stride[i] < 1) raise_value("stride: must be >= 1, got " + std::to_string(stride[i]));
    if (padding[i] < 0) raise_value("padding: must be >= 0, got " + std::to_string(padding[i]));
    if (dilation[i] < 1) raise_value("dilation: must be >= 1, got " + std::to_string(dilation[i]));
  }
  if (groups < 1) raise_value("groups: must be >= 1, got " + std::to_string(groups));
  Conv2dShape s{};
  s.N = x.shape[0];
  s.C = x.shape[nhwc ? 3 : 1];
  s.H = x.shape[nhwc ? 1 : 2];
  s.W = x.shape[nhwc ? 2 : 3];
  s.K = w.shape[0];
  s.R = w.shape[2];
  s.S = w.shape[3];
  if (s.C < 1) raise_value("x: needs at least one input channel, got shape " + shape_str(x.shape));
  if (s.C % groups)
    raise_value("groups: the " + std::to_string(s.C) +
                " input channels of x are not divisible by groups=" + std::to_string(groups));
  if (s.K < 1 || s.R < 1 || s.S < 1) raise_value("w: every dimension must be >= 1, got shape " + shape_str(w.shape));
  if (s.K % groups)
    raise_value("groups: the " + std::to_string(s.K) +
                " output channels of w are not divisible by groups=" + std::to_string(groups));
  if (w.shape[1] * groups != s.C)
    raise_value("w: expected shape (K, C/groups = " + std::to_string(s.C / groups) + ", R, S) for x " +
                shape_str(x.shape) + " and groups=" + std::to_string(groups) + ", got " + shape_str(w.shape));
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dil_h = dilation[0];
  s.dil_w = dilation[1];
  s.groups = groups;
  // H + 2 * pad and dil * (R - 1), checked: a huge padding or dilation must not wrap around.
  int64_t padded_h, padded_w, span_h, span_w;
  if (__builtin_mul_overflow(s.pad_h, 2, &padded_h) || __builtin_add_overflow(padded_h, s.H, &padded_h) ||
      __builtin_mul_overflow(s.pad_w, 2, &padded_w) || __builtin_add_overflow(padded_w, s.W, &padded_w))
    raise_value("padding: " + shape_str({s.pad_h, s.pad_w}) + " is too large: the padded input " +
                shape_str({s.H, s.W}) + " would have 2^63 or more rows or columns");
  if (__builtin_mul_overflow(s.dil_h, s.R - 1, &span_h) || __builtin_mul_overflow(s.dil_w, s.S - 1, &span_w))
    raise_value("dilation: " + shape_str({s.dil_h, s.dil_w}) + " is too large: the dilated kernel " +
                shape_str({s.R, s.S}) + " would span 2^63 or more rows or columns");
  const int64_t eh = padded_h - span_h - 1, ew = padded_w - span_w - 1;
  s.P = eh < 0 ? 0 : eh / s.stride_h + 1;
  s.Q = ew < 0 ? 0 : ew / s.stride_w + 1;
  if (s.P < 1 || s.Q < 1)
    raise_value("x: output size would be <= 0: input " + shape_str({s.H, s.W}) + " is too small for kernel " +
                shape_str({s.R, s.S}) + " with padding " + shape_str({s.pad_h, s.pad_w}) + " and dilation " +
                shape_str({s.dil_h, s.dil_w}));
  return s;
}

py::object conv2d_forward(py::handle x_obj, py::handle w_obj, py::handle b_obj, Pair stride, Pair padding,
                          Pair dilation, int64_t groups, bool allow_tf32, uintptr_t stream, const std::string& layout) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const ArrayView w = view_floating(w_obj, ArgName{"w"}, false);
  require_same_device(x, ArgName{"x"}, w, ArgName{"w"});
  require_same_dtype(x, ArgName{"x"}, w, ArgName{"w"});
  const bool nhwc = nhwc_layout(layout, x.device);
  const Conv2dShape s = conv_shape(x, w, stride, padding, dilation, groups, nhwc);
  require_nhwc_groups(nhwc, groups);
  const void* b = nullptr;
  if (!b_obj.is_none()) {
    const ArrayView bv = view_floating(b_obj, ArgName{"b"}, false);
    require_same_device(x, ArgName{"x"}, bv, ArgName{"b"});
    require_same_dtype(x, ArgName{"x"}, bv, ArgName{"b"});
    if (bv.shape != std::vector<int64_t>{s.K})
      raise_value("b: expected shape (" + std::to_string(s.K) + ",), one bias per output channel, got " +
                  shape_str(bv.shape));
    b = bv.data;
  }
  // Only padding can make the output plane larger than the input's; else N * K makes the size.
  const char* source = s.pad_h > s.H || s.pad_w > s.W ? "padding" : "x and w";
  const std::vector<int64_t> yshape = nhwc ? std::vector<int64_t>{s.N, s.P, s.Q, s.K}
                                           : std::vector<int64_t>{s.N, s.K, s.P, s.Q};
  py::object y = new_array(yshape, x.dtype, x.device, stream, "y", source);
  void* yp = data_of(y, "y");
  if (x.device == kCPU) {
    {
      py::gil_scoped_release nogil;
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        const T *xp = data_as<T>(x), *wp = data_as<T>(w), *bp = static_cast<const T*>(b);
        if (nhwc) cpu::conv2d_nhwc_forward(s, xp, wp, bp, static_cast<T*>(yp));
        else cpu::conv2d_forward(s, xp, wp, bp, static_cast<T*>(yp));
      });
    }
    return y;
  }
  on_gpu(x.device, [&](auto) {
    py::gil_scoped_release nogil;
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      cuda::conv2d_forward(s, data_as<T>(x), data_as<T>(w), static_cast<const T*>(b), static_cast<T*>(yp), allow_tf32,
                           reinterpret_cast<void*>(stream));
    });
  });
  return y;
}

py::tuple conv2d_backward(py::handle dy_obj, py::handle x_obj, py::handle w_obj, Pair stride, Pair padding,
                          Pair dilation, int64_t groups, bool need_dx, bool need_dw, bool need_db, bool allow_tf32,
                          uintptr_t stream, py::handle dw_out, py::handle db_out, bool accumulate,
                          const std::string& layout) {
  const ArrayView dy = view_floating(dy_obj, ArgName{"dy"}, false);
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const ArrayView w = view_floating(w_obj, ArgName{"w"}, false);
  require_same_device(x, ArgName{"x"}, w, ArgName{"w"});
  require_same_device(x, ArgName{"x"}, dy, ArgName{"dy"});
  require_same_dtype(x, ArgName{"x"}, w, ArgName{"w"});
  require_same_dtype(x, ArgName{"x"}, dy, ArgName{"dy"});
  const bool nhwc = nhwc_layout(layout, x.device);
  const Conv2dShape s = conv_shape(x, w, stride, padding, dilation, groups, nhwc);
  require_nhwc_groups(nhwc, groups);
  const std::vector<int64_t> yshape = nhwc ? std::vector<int64_t>{s.N, s.P, s.Q, s.K}
                                           : std::vector<int64_t>{s.N, s.K, s.P, s.Q};
  if (dy.shape != yshape)
    raise_value("dy: expected the output shape " + shape_str(yshape) + " of this convolution, got " +
                shape_str(dy.shape));

  const std::vector<NamedRange> inputs{{"dy", &dy}, {"x", &x}, {"w", &w}};
  const GradOut dw = grad_output(need_dw, "dw", dw_out, "dw_out", w.shape, x, accumulate, stream, "w", inputs);
  const GradOut db = grad_output(need_db, "db", db_out, "db_out", {s.K}, x, accumulate, stream, "w", inputs);
  require_distinct_outputs(dw, "dw_out", db, "db_out");
  py::object dx = py::none();
  void* dxp = nullptr;
  if (need_dx) dxp = data_of(dx = new_array(x.shape, x.dtype, x.device, stream, "dx", "x"), "dx");
  float *const dwp = dw.ptr, *const dbp = db.ptr;
  if (x.device == kCPU) {
    {
      py::gil_scoped_release nogil;
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        const T *dyp = data_as<T>(dy), *xp = data_as<T>(x), *wp = data_as<T>(w);
        if (nhwc) {
          if (dxp) cpu::conv2d_nhwc_backward_data(s, dyp, wp, static_cast<T*>(dxp));
          if (dwp) cpu::conv2d_nhwc_backward_weight(s, dyp, xp, dwp, accumulate);
          if (dbp) cpu::conv2d_backward_bias(s, dyp, dbp, accumulate, true);
          return;
        }
        if (dxp) cpu::conv2d_backward_data(s, dyp, wp, static_cast<T*>(dxp));
        if (dwp) cpu::conv2d_backward_weight(s, dyp, xp, dwp, accumulate);
        if (dbp) cpu::conv2d_backward_bias(s, dyp, dbp, accumulate);
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
      if (dxp) cuda::conv2d_backward_data(s, dyp, wp, static_cast<T*>(dxp), allow_tf32, st);
      if (dwp) cuda::conv2d_backward_weight(s, dyp, xp, dwp, accumulate, allow_tf32, st);
      if (dbp) cuda::conv2d_backward_bias(s, dyp, dbp, accumulate, st);
    });
  });
  return py::make_tuple(dx, dw.obj, db.obj);
}

}  // namespace

void bind_conv2d(py::module_& m) {
  m.def("conv2d_forward", &conv2d_forward, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("allow_tf32") = false,
        py::arg("stream") = 0, py::arg("layout") = "nchw",
        "y = conv2d(x, w, b), float32 or bfloat16, NCHW or (layout='nhwc', CPU, groups=1) channels_last x "
        "and y; stride, padding, dilation are (h, w) pairs.");
  m.def("conv2d_backward", &conv2d_backward, py::arg("dy"), py::arg("x"), py::arg("w"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("need_dx") = true,
        py::arg("need_dw") = true, py::arg("need_db") = true, py::arg("allow_tf32") = false, py::arg("stream") = 0,
        py::arg("dw_out") = py::none(), py::arg("db_out") = py::none(), py::arg("accumulate") = false,
        py::arg("layout") = "nchw",
        "(dx, dw, db) of conv2d for the output gradient dy (dx in the inputs' dtype, dw and db float32); "
        "an output not asked for is None. dw_out / db_out receive dw / db (accumulate: added into them).");
}

}  // namespace fastopt

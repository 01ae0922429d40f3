// Python entry points of the pooling family: max_pool2d (values + int32 indices), avg_pool2d and
// global average pooling, forward and backward. Shapes and hyper-parameters are checked against torch's
// rules here, with messages naming the argument, and so that every index the kernels form fits
// in int32 (fastopt/pooling.h); the GIL is released around the kernels.
#include <pybind11/stl.h>

#include <array>
#include <climits>
#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "dispatch.h"
#include "fastopt/backend.h"
#include "fastopt/pooling.h"

namespace fastopt {
namespace {

using Pair = std::array<int64_t, 2>;

std::string fmt_pair(Pair p) { return shape_str(std::vector<int64_t>{p[0], p[1]}); }

void require_4d(const std::vector<int64_t>& shape, const char* name, const char* dims = "(N, C, H, W)") {
  if (shape.size() != 4)
    raise_value(std::string(name) + ": expected 4 dimensions " + dims + ", got shape " + shape_str(shape));
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) raise_value(std::string(name) + ": negative dimension in " + shape_str(shape));
    if (d != 0 && numel > (int64_t{1} << 62) / d)
      raise_value(std::string(name) + ": too many elements in " + shape_str(shape));
    numel *= d;
  }
}

// input_shape (N, C, H, W) of x (name "x") or of the forward input (name "input_shape").
Pool2dShape pool_shape(const std::vector<int64_t>& in, const char* name, Pair kernel, Pair stride, Pair padding) {
  require_4d(in, name);
  for (int i = 0; i < 2; ++i) {
    if (kernel[i] < 1) raise_value("kernel_size: must be >= 1, got " + fmt_pair(kernel));
    if (stride[i] < 1 || stride[i] > INT_MAX) raise_value("stride: must be in [1, 2^31), got " + fmt_pair(stride));
    if (padding[i] < 0) raise_value("padding: must be >= 0, got " + fmt_pair(padding));
    if (padding[i] > kernel[i] / 2)
      raise_value("padding: should be at most half of kernel_size, got padding " + fmt_pair(padding) +
                  " and kernel_size " + fmt_pair(kernel));
  }
  const int64_t H = in[2], W = in[3];
  if (H < 1 || W < 1) raise_value(std::string(name) + ": H and W must be >= 1, got shape " + shape_str(in));
  if (H > INT_MAX || W > INT_MAX || H * W > INT_MAX)
    raise_value(std::string(name) + ": plane " + shape_str({H, W}) + " too large: indices are int32 (H*W < 2^31)");
  if (padding[0] > INT_MAX - H || padding[1] > INT_MAX - W || H + 2 * padding[0] > INT_MAX ||
      W + 2 * padding[1] > INT_MAX)
    raise_value("padding: " + fmt_pair(padding) + " too large: the padded plane must have sides < 2^31");
  const int64_t eh = H + 2 * padding[0] - kernel[0], ew = W + 2 * padding[1] - kernel[1];
  const int64_t P = eh < 0 ? 0 : eh / stride[0] + 1, Q = ew < 0 ? 0 : ew / stride[1] + 1;
  if (P < 1 || Q < 1)
    raise_value(std::string(name) + ": output size would be " + shape_str({P, Q}) + ", below 1: input " +
                shape_str({H, W}) + " is too small for kernel_size " + fmt_pair(kernel) + " with padding " +
                fmt_pair(padding));
  if (P * Q > INT_MAX)
    raise_value(std::string(name) + ": output plane " + shape_str({P, Q}) + " has 2^31 or more elements");
  Pool2dShape s{};
  s.planes = in[0] * in[1];
  s.H = static_cast<int>(H);
  s.W = static_cast<int>(W);
  s.P = static_cast<int>(P);
  s.Q = static_cast<int>(Q);
  s.kh = static_cast<int>(kernel[0]);
  s.kw = static_cast<int>(kernel[1]);
  s.sh = static_cast<int>(stride[0]);
  s.sw = static_cast<int>(stride[1]);
  s.ph = static_cast<int>(padding[0]);
  s.pw = static_cast<int>(padding[1]);
  return s;
}

// shape in its layout (NHWC: (N, H, W, C)) as (N, C, H, W), for pool_shape.
std::vector<int64_t> as_nchw(const std::vector<int64_t>& shape, const char* name, bool nhwc) {
  if (!nhwc) return shape;
  require_4d(shape, name, "(N, H, W, C)");
  return {shape[0], shape[3], shape[1], shape[2]};
}

// The output shape (N, C, P, Q), or (N, P, Q, C) for NHWC.
std::vector<int64_t> out_shape(const std::vector<int64_t>& nchw, const Pool2dShape& s, bool nhwc) {
  if (nhwc) return {nchw[0], s.P, s.Q, nchw[1]};
  return {nchw[0], nchw[1], s.P, s.Q};
}

// x: float32 or bfloat16; y has x's dtype.
py::tuple max_pool2d_forward(py::handle x_obj, Pair kernel, Pair stride, Pair padding, uintptr_t stream,
                             const std::string& layout) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const bool nhwc = nhwc_layout(layout, x.device);
  const std::vector<int64_t> in = as_nchw(x.shape, "x", nhwc);
  const Pool2dShape s = pool_shape(in, "x", kernel, stride, padding);
  const std::vector<int64_t> yshape = out_shape(in, s, nhwc);
  py::object y = new_array(yshape, x.dtype, x.device, stream, "y", "x");
  py::object idx = new_array(yshape, DType::i32, x.device, stream, "indices", "x");
  void* yp = view_array(y, ArgName{"out"}, true, &x.dtype).data;
  const DType i32 = DType::i32;
  int32_t* ip = static_cast<int32_t*>(data_of(idx, "out", &i32));
  if (x.device == kCPU) {
    py::gil_scoped_release nogil;
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      if (nhwc) cpu::max_pool2d_forward_nhwc(s, in[1], data_as<T>(x), static_cast<T*>(yp), ip);
      else cpu::max_pool2d_forward(s, data_as<T>(x), static_cast<T*>(yp), ip);
    });
  } else {
    on_gpu(x.device, [&](auto) {
      py::gil_scoped_release nogil;
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        cuda::max_pool2d_forward(s, data_as<T>(x), static_cast<T*>(yp), ip, reinterpret_cast<void*>(stream));
      });
    });
  }
  return py::make_tuple(y, idx);
}

py::object max_pool2d_backward(py::handle dy_obj, py::handle idx_obj, std::vector<int64_t> input_shape, Pair kernel,
                               Pair stride, Pair padding, uintptr_t stream, const std::string& layout) {
  const ArrayView dy = view_floating(dy_obj, ArgName{"dy"}, false);
  const DType i32 = DType::i32;
  const ArrayView idx = view_array(idx_obj, ArgName{"indices"}, false, &i32);
  require_same_device(dy, ArgName{"dy"}, idx, ArgName{"indices"});
  const bool nhwc = nhwc_layout(layout, dy.device);
  const std::vector<int64_t> in = as_nchw(input_shape, "input_shape", nhwc);
  const Pool2dShape s = pool_shape(in, "input_shape", kernel, stride, padding);
  const std::vector<int64_t> yshape = out_shape(in, s, nhwc);
  if (dy.shape != yshape)
    raise_value("dy: expected the output shape " + shape_str(yshape) + " of this pooling, got " + shape_str(dy.shape));
  if (idx.shape != yshape)
    raise_value("indices: expected the output shape " + shape_str(yshape) + " of this pooling, got " +
                shape_str(idx.shape));
  py::object dx = new_array(input_shape, dy.dtype, dy.device, stream, "dx", "input_shape");
  const auto* ip = static_cast<const int32_t*>(idx.data);
  void* dxp = view_array(dx, ArgName{"out"}, true, &dy.dtype).data;
  if (dy.device == kCPU) {
    py::gil_scoped_release nogil;
    by_floating_dtype(dy, [&](auto tag) {
      using T = decltype(tag);
      if (nhwc) cpu::max_pool2d_backward_nhwc(s, in[1], data_as<T>(dy), ip, static_cast<T*>(dxp));
      else cpu::max_pool2d_backward(s, data_as<T>(dy), ip, static_cast<T*>(dxp));
    });
  } else {
    on_gpu(dy.device, [&](auto) {
      py::gil_scoped_release nogil;
      by_floating_dtype(dy, [&](auto tag) {
        using T = decltype(tag);
        cuda::max_pool2d_backward(s, data_as<T>(dy), ip, static_cast<T*>(dxp), reinterpret_cast<void*>(stream));
      });
    });
  }
  return dx;
}

int64_t plane_size(const std::vector<int64_t>& shape, const char* name) {
  require_4d(shape, name);
  if (shape[2] < 1 || shape[3] < 1)
    raise_value(std::string(name) + ": H and W must be >= 1, got shape " + shape_str(shape));
  return shape[2] * shape[3];
}

py::object global_avg_pool_forward(py::handle x_obj, uintptr_t stream) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const int64_t hw = plane_size(x.shape, "x");
  const int64_t planes = x.shape[0] * x.shape[1];
  py::object y = new_array({x.shape[0], x.shape[1]}, x.dtype, x.device, stream, "y", "x");
  void* yp = view_array(y, ArgName{"out"}, true, &x.dtype).data;
  if (x.device == kCPU) {
    py::gil_scoped_release nogil;
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      cpu::global_avg_pool_forward(data_as<T>(x), static_cast<T*>(yp), planes, hw);
    });
  } else {
    on_gpu(x.device, [&](auto) {
      py::gil_scoped_release nogil;
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        cuda::global_avg_pool_forward(data_as<T>(x), static_cast<T*>(yp), planes, hw, reinterpret_cast<void*>(stream));
      });
    });
  }
  return y;
}

py::object global_avg_pool_backward(py::handle dy_obj, std::vector<int64_t> input_shape, uintptr_t stream) {
  const ArrayView dy = view_floating(dy_obj, ArgName{"dy"}, false);
  const int64_t hw = plane_size(input_shape, "input_shape");
  const std::vector<int64_t> yshape{input_shape[0], input_shape[1]};
  if (dy.shape != yshape)
    raise_value("dy: expected the output shape " + shape_str(yshape) + ", got " + shape_str(dy.shape));
  const int64_t planes = input_shape[0] * input_shape[1];
  py::object dx = new_array(input_shape, dy.dtype, dy.device, stream, "dx", "input_shape");
  void* dxp = view_array(dx, ArgName{"out"}, true, &dy.dtype).data;
  if (dy.device == kCPU) {
    py::gil_scoped_release nogil;
    by_floating_dtype(dy, [&](auto tag) {
      using T = decltype(tag);
      cpu::global_avg_pool_backward(data_as<T>(dy), static_cast<T*>(dxp), planes, hw);
    });
  } else {
    on_gpu(dy.device, [&](auto) {
      py::gil_scoped_release nogil;
      by_floating_dtype(dy, [&](auto tag) {
        using T = decltype(tag);
        cuda::global_avg_pool_backward(data_as<T>(dy), static_cast<T*>(dxp), planes, hw,
                                       reinterpret_cast<void*>(stream));
      });
    });
  }
  return dx;
}

py::object avg_pool2d_forward(py::handle x_obj, Pair kernel, Pair stride, Pair padding, bool include_pad,
                              uintptr_t stream) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const Pool2dShape s = pool_shape(x.shape, "x", kernel, stride, padding);
  py::object y = new_array({x.shape[0], x.shape[1], s.P, s.Q}, x.dtype, x.device, stream, "y", "x");
  void* yp = view_array(y, ArgName{"y"}, true, &x.dtype).data;
  py::gil_scoped_release nogil;
  if (x.device == kCPU) {
    by_floating_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      cpu::avg_pool2d_forward(s, data_as<T>(x), static_cast<T*>(yp), include_pad);
    });
  } else {
    on_gpu(x.device, [&](auto) {
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        cuda::avg_pool2d_forward(s, data_as<T>(x), static_cast<T*>(yp), include_pad, reinterpret_cast<void*>(stream));
      });
    });
  }
  return y;
}

py::object avg_pool2d_backward(py::handle dy_obj, std::vector<int64_t> input_shape, Pair kernel, Pair stride,
                               Pair padding, bool include_pad, uintptr_t stream) {
  const ArrayView dy = view_floating(dy_obj, ArgName{"dy"}, false);
  const Pool2dShape s = pool_shape(input_shape, "input_shape", kernel, stride, padding);
  const std::vector<int64_t> yshape{input_shape[0], input_shape[1], s.P, s.Q};
  if (dy.shape != yshape)
    raise_value("dy: expected the output shape " + shape_str(yshape) + " of this pooling, got " + shape_str(dy.shape));
  py::object dx = new_array(input_shape, dy.dtype, dy.device, stream, "dx", "input_shape");
  void* dxp = view_array(dx, ArgName{"dx"}, true, &dy.dtype).data;
  py::gil_scoped_release nogil;
  if (dy.device == kCPU) {
    by_floating_dtype(dy, [&](auto tag) {
      using T = decltype(tag);
      cpu::avg_pool2d_backward(s, data_as<T>(dy), static_cast<T*>(dxp), include_pad);
    });
  } else {
    on_gpu(dy.device, [&](auto) {
      by_floating_dtype(dy, [&](auto tag) {
        using T = decltype(tag);
        cuda::avg_pool2d_backward(s, data_as<T>(dy), static_cast<T*>(dxp), include_pad,
                                  reinterpret_cast<void*>(stream));
      });
    });
  }
  return dx;
}

}  // namespace

void bind_pooling(py::module_& m) {
  m.def("max_pool2d_forward", &max_pool2d_forward, py::arg("x"), py::arg("kernel_size"), py::arg("stride"),
        py::arg("padding"), py::arg("stream") = 0, py::arg("layout") = "nchw",
        "(y, indices) of max_pool2d over x (N, C, H, W); kernel_size, stride, padding are (h, w) pairs; "
        "indices are int32 flat positions h*W + w within the input plane. layout='nhwc' (CPU only): x is "
        "(N, H, W, C) and y, indices are (N, P, Q, C), with the same values.");
  m.def("max_pool2d_backward", &max_pool2d_backward, py::arg("dy"), py::arg("indices"), py::arg("input_shape"),
        py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("stream") = 0,
        py::arg("layout") = "nchw",
        "dx (input_shape) of max_pool2d: each dy routed to its index; deterministic, no atomics. "
        "layout='nhwc' (CPU only): input_shape is (N, H, W, C), dy and indices (N, P, Q, C).");
  m.def("global_avg_pool_forward", &global_avg_pool_forward, py::arg("x"), py::arg("stream") = 0,
        "y (N, C) = mean of x (N, C, H, W) over H and W.");
  m.def("global_avg_pool_backward", &global_avg_pool_backward, py::arg("dy"), py::arg("input_shape"),
        py::arg("stream") = 0, "dx (input_shape) = dy / (H*W) broadcast over H and W.");
  m.def("avg_pool2d_forward", &avg_pool2d_forward, py::arg("x"), py::arg("kernel_size"), py::arg("stride"),
        py::arg("padding"), py::arg("count_include_pad"), py::arg("stream") = 0,
        "y of average pooling over x (N, C, H, W); kernel_size, stride, padding are (h, w) pairs.");
  m.def("avg_pool2d_backward", &avg_pool2d_backward, py::arg("dy"), py::arg("input_shape"), py::arg("kernel_size"),
        py::arg("stride"), py::arg("padding"), py::arg("count_include_pad"), py::arg("stream") = 0,
        "dx (input_shape) of average pooling: a deterministic gather, no atomics.");
}

}  // namespace fastopt

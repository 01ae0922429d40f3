// Python entry points of the activation family: ReLU and LeakyReLU, forward and backward. Every
// argument is validated here with a message naming it; the GIL is released around the kernels.
#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "fastopt/activation.h"
#include "fastopt/backend.h"

namespace fastopt {
namespace {

enum class Act { relu, relu_grad, leaky, leaky_grad };

// Forward: dy_obj is null. Backward: dy must match x in shape and device. The output is a new
// array like x.
py::object activation(Act act, py::handle dy_obj, py::handle x_obj, double negative_slope, uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  const float* xp = static_cast<const float*>(x.data);
  const float* dyp = nullptr;
  if (dy_obj) {
    const ArrayView dy = view_f32(dy_obj, ArgName{"dy"}, false);
    require_same_device(x, ArgName{"x"}, dy, ArgName{"dy"});
    if (dy.shape != x.shape) raise_value("dy: expected the shape " + shape_str(x.shape) + " of x, got " + shape_str(dy.shape));
    dyp = static_cast<const float*>(dy.data);
  }
  const float slope = static_cast<float>(negative_slope);  // torch multiplies by the float32 value
  const int64_t n = x.numel;
  py::object out = new_array(x.shape, DType::f32, x.device, stream, dy_obj ? "dx" : "y", "x");
  float* yp = static_cast<float*>(view_f32(out, ArgName{"out"}, true).data);
  if (x.device == kCPU) {
    py::gil_scoped_release nogil;
    switch (act) {
      case Act::relu: cpu::relu_forward(xp, yp, n); break;
      case Act::relu_grad: cpu::relu_backward(dyp, xp, yp, n); break;
      case Act::leaky: cpu::leaky_relu_forward(xp, yp, n, slope); break;
      case Act::leaky_grad: cpu::leaky_relu_backward(dyp, xp, yp, n, slope); break;
    }
    return out;
  }
#ifdef FASTOPT_WITH_CUDA
  {
    py::gil_scoped_release nogil;
    void* s = reinterpret_cast<void*>(stream);
    cuda::set_device(x.device);
    switch (act) {
      case Act::relu: cuda::relu_forward(xp, yp, n, s); break;
      case Act::relu_grad: cuda::relu_backward(dyp, xp, yp, n, s); break;
      case Act::leaky: cuda::leaky_relu_forward(xp, yp, n, slope, s); break;
      case Act::leaky_grad: cuda::leaky_relu_backward(dyp, xp, yp, n, slope, s); break;
    }
  }
  return out;
#else
  throw std::runtime_error("unreachable: a CUDA array in a build without CUDA");
#endif
}

}  // namespace

void bind_activation(py::module_& m) {
  m.def(
      "relu_forward", [](py::handle x, uintptr_t stream) { return activation(Act::relu, {}, x, 0.0, stream); },
      py::arg("x"), py::arg("stream") = 0, "y = max(x, 0) (NaN propagates), a new float32 array on x's device.");
  m.def(
      "relu_backward",
      [](py::handle dy, py::handle x, uintptr_t stream) { return activation(Act::relu_grad, dy, x, 0.0, stream); },
      py::arg("dy"), py::arg("x"), py::arg("stream") = 0, "dx = x <= 0 ? 0 : dy (torch's threshold_backward: a NaN x passes dy).");
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
}

}  // namespace fastopt

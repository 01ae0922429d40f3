// Python entry points of the augment family: seeded batch augmentation and mixup. Every argument
// is validated here with a message naming it (labels too, on the CPU); the GIL is released around
// the kernels. Defaults and docs: fastopt/functional/augment.py.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "fastopt/augment.h"
#include "fastopt/backend.h"

namespace fastopt {
namespace {

constexpr int64_t kMaxParam = int64_t{1} << 30;

int64_t count_arg(int64_t v, const char* name) {
  if (v < 0 || v > kMaxParam)
    raise_value(std::string(name) + ": must be an integer in [0, 2^30], got " + std::to_string(v));
  return v;
}

float brightness_arg(double v) {
  if (!(v >= 0.0 && v <= std::numeric_limits<float>::max()))
    raise_value("brightness: must be a finite float32 >= 0, got " + std::to_string(v));
  return static_cast<float>(v);
}

float contrast_arg(double v) {
  if (!(v >= 0.0 && v <= 1.0)) raise_value("contrast: must lie in [0, 1], got " + std::to_string(v));
  return static_cast<float>(v);
}

float* out_ptr(const py::object& obj) { return static_cast<float*>(view_f32(obj, ArgName{"out"}, true).data); }

py::object augment_batch(py::handle x_obj, uint64_t seed, uint64_t step, int64_t max_shift, bool flip, int64_t cutout,
                         double brightness, double contrast, double fill, uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  if (x.shape.size() != 4) raise_value("x: expected shape (N, C, H, W), got " + shape_str(x.shape));
  if (x.shape[0] > int64_t{1} << 32) raise_value("x: at most 2^32 samples (the Philox counter holds n in 32 bits)");
  if (x.shape[2] > kMaxParam || x.shape[3] > kMaxParam) raise_value("x: H and W must be at most 2^30");
  AugmentSpec s;
  s.N = x.shape[0];
  s.C = x.shape[1];
  s.H = x.shape[2];
  s.W = x.shape[3];
  s.max_shift = count_arg(max_shift, "max_shift");
  s.cutout = count_arg(cutout, "cutout");
  s.flip = flip;
  s.brightness = brightness_arg(brightness);
  s.contrast = contrast_arg(contrast);
  if (!std::isfinite(fill) || std::fabs(fill) > 3.4e38) raise_value("fill: must be a finite float32, got " + std::to_string(fill));
  s.fill = static_cast<float>(fill);
  s.seed = seed;
  s.step = step;
  py::object y = new_array(x.shape, DType::f32, x.device, stream, "y", "x");
  float* yp = out_ptr(y);
  const float* xp = static_cast<const float*>(x.data);
  if (x.device == kCPU) {
    py::gil_scoped_release nogil;
    cpu::augment_batch(xp, yp, s);
  } else {
#ifdef FASTOPT_WITH_CUDA
    py::gil_scoped_release nogil;
    cuda::set_device(x.device);
    cuda::augment_batch(xp, yp, s, reinterpret_cast<void*>(stream));
#else
    throw std::runtime_error("unreachable: a CUDA array in a build without CUDA");
#endif
  }
  return y;
}

template <class Index>
void check_labels(const Index* t, int64_t n, int64_t K) {
  for (int64_t i = 0; i < n; ++i)
    if (t[i] < 0 || static_cast<int64_t>(t[i]) >= K)
      raise_value("labels: class index " + std::to_string(t[i]) + " at row " + std::to_string(i) + " is outside [0, " +
                  std::to_string(K) + ")");
}

py::tuple mixup(py::handle x_obj, py::handle labels_obj, double lam, int64_t num_classes, uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  if (x.shape.empty()) raise_value("x: expected shape (N, ...), got a 0-d array");
  const int64_t N = x.shape[0];
  const ArrayView l = view_array(labels_obj, ArgName{"labels"}, false, nullptr);
  require_same_device(x, ArgName{"x"}, l, ArgName{"labels"});
  if (l.dtype != DType::i32 && l.dtype != DType::i64)
    raise_type(std::string("labels: expected an int32 or int64 array, got ") + dtype_name(l.dtype));
  if (l.shape != std::vector<int64_t>{N})
    raise_value("labels: expected shape " + shape_str({N}) + " (one per sample of x), got " + shape_str(l.shape));
  if (!(lam >= 0.0 && lam <= 1.0)) raise_value("lam: must lie in [0, 1], got " + std::to_string(lam));
  if (num_classes < 1) raise_value("num_classes: must be >= 1, got " + std::to_string(num_classes));
  const int index_bytes = l.dtype == DType::i32 ? 4 : 8;
  if (x.device == kCPU) {
    if (index_bytes == 4) check_labels(static_cast<const int32_t*>(l.data), N, num_classes);
    else check_labels(static_cast<const int64_t*>(l.data), N, num_classes);
  }
  MixupParams p;
  p.N = N;
  p.F = N > 0 ? x.numel / N : 0;
  p.K = num_classes;
  p.lam = static_cast<float>(lam);
  p.rest = static_cast<float>(1.0 - lam);
  py::object y = new_array(x.shape, DType::f32, x.device, stream, "y", "x");
  py::object targets = new_array({N, num_classes}, DType::f32, x.device, stream, "targets", "num_classes");
  float* yp = out_ptr(y);
  float* tp = out_ptr(targets);
  const float* xp = static_cast<const float*>(x.data);
  if (x.device == kCPU) {
    py::gil_scoped_release nogil;
    cpu::mixup(xp, l.data, index_bytes, yp, tp, p);
  } else {
#ifdef FASTOPT_WITH_CUDA
    py::gil_scoped_release nogil;
    cuda::set_device(x.device);
    cuda::mixup(xp, l.data, index_bytes, yp, tp, p, reinterpret_cast<void*>(stream));
#else
    throw std::runtime_error("unreachable: a CUDA array in a build without CUDA");
#endif
  }
  return py::make_tuple(y, targets);
}

}  // namespace

void bind_augment(py::module_& m) {
  m.def("augment_batch", &augment_batch, py::arg("x"), py::arg("seed"), py::arg("step"), py::arg("max_shift") = 0,
        py::arg("flip") = false, py::arg("cutout") = 0, py::arg("brightness") = 0.0, py::arg("contrast") = 0.0,
        py::arg("fill") = 0.0, py::arg("stream") = 0,
        "y: x (N, C, H, W) shifted, mirrored, jittered and cut out per sample, draws keyed by (seed, step, n).");
  m.def("mixup", &mixup, py::arg("x"), py::arg("labels"), py::arg("lam"), py::arg("num_classes"),
        py::arg("stream") = 0, "(x_mixed, soft_targets): each sample mixed with the flipped batch's.");
}

}  // namespace fastopt

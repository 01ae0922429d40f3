// Python entry points of the augment family: seeded batch augmentation, mixup, cutmix, the
// per-plane ops (random-resized crop, rotation, PCA jitter, alternating flip) and the test-time
// views. Every argument is validated here with a message naming it (labels too, on the CPU); the
// GIL is released around the kernels. Defaults and docs: fastopt/functional/augment.py.
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "dispatch.h"
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

float fill_arg(double v) {
  if (!std::isfinite(v) || std::fabs(v) > 3.4e38)
    raise_value("fill: must be a finite float32, got " + std::to_string(v));
  return static_cast<float>(v);
}

// Pixel indices and coordinates are exact in float32 up to 2^24.
constexpr int64_t kMaxSide = int64_t{1} << 24;

// x as (N, C, H, W) with OH = H, OW = W; N fits the 32-bit counter word.
PlaneShape planes_of(const ArrayView& x) {
  if (x.shape.size() != 4) raise_value("x: expected shape (N, C, H, W), got " + shape_str(x.shape));
  if (x.shape[0] > int64_t{1} << 32) raise_value("x: at most 2^32 samples (the Philox counter holds n in 32 bits)");
  if (x.shape[2] > kMaxSide || x.shape[3] > kMaxSide) raise_value("x: H and W must be at most 2^24");
  return PlaneShape{x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[2], x.shape[3]};
}

int64_t side_arg(int64_t v, const char* name) {
  if (v < 1 || v > kMaxSide)
    raise_value(std::string(name) + ": must be an integer in [1, 2^24], got " + std::to_string(v));
  return v;
}

void range_arg(double lo, double hi, double low, double high, const char* name) {
  if (!(lo > low && lo <= hi && hi <= high && std::isfinite(hi)))
    raise_value(std::string(name) + ": expected finite bounds with " + std::to_string(low) + " < " + name +
                "[0] <= " + name + "[1] <= " + std::to_string(high) + ", got (" + std::to_string(lo) + ", " +
                std::to_string(hi) + ")");
}

py::object random_resized_crop(py::handle x_obj, uint64_t seed, uint64_t step, int64_t out_h, int64_t out_w,
                               double scale_lo, double scale_hi, double ratio_lo, double ratio_hi, uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  CropSpec c;
  c.s = planes_of(x);
  c.s.OH = side_arg(out_h, "size");
  c.s.OW = side_arg(out_w, "size");
  if (c.s.N * c.s.C > 0 && (c.s.H == 0 || c.s.W == 0)) raise_value("x: cannot crop an empty image (H or W is 0)");
  range_arg(scale_lo, scale_hi, 0.0, 1e300, "scale");
  range_arg(ratio_lo, ratio_hi, 0.0, 1e300, "ratio");
  c.scale_lo = scale_lo;
  c.scale_hi = scale_hi;
  c.ratio_lo = ratio_lo;
  c.ratio_hi = ratio_hi;
  c.log_lo = log_d(ratio_lo);
  c.log_hi = log_d(ratio_hi);
  if (!(std::fabs(c.log_lo) < 700.0 && std::fabs(c.log_hi) < 700.0))
    raise_value("ratio: must lie within [1e-300, 1e300]");
  c.seed = seed;
  c.step = step;
  py::object y = new_array({c.s.N, c.s.C, c.s.OH, c.s.OW}, DType::f32, x.device, stream, "y", "size");
  float* yp = out_ptr(y);
  const float* xp = static_cast<const float*>(x.data);
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) cpu::random_resized_crop(xp, yp, c);
    else on_gpu(x.device, [&](auto) { cuda::random_resized_crop(xp, yp, c, reinterpret_cast<void*>(stream)); });
  }
  return y;
}

py::object random_rotation(py::handle x_obj, uint64_t seed, uint64_t step, double lo, double hi, double fill,
                           uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  RotateSpec r;
  r.s = planes_of(x);
  if (!(lo >= -360.0 && lo <= hi && hi <= 360.0))
    raise_value("degrees: expected -360 <= low <= high <= 360, got (" + std::to_string(lo) + ", " + std::to_string(hi) +
                ")");
  r.lo = lo;
  r.hi = hi;
  r.fill = fill_arg(fill);
  r.seed = seed;
  r.step = step;
  py::object y = new_array(x.shape, DType::f32, x.device, stream, "y", "x");
  float* yp = out_ptr(y);
  const float* xp = static_cast<const float*>(x.data);
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) cpu::random_rotation(xp, yp, r);
    else on_gpu(x.device, [&](auto) { cuda::random_rotation(xp, yp, r, reinterpret_cast<void*>(stream)); });
  }
  return y;
}

py::object pca_jitter(py::handle x_obj, uint64_t seed, uint64_t step, const std::vector<double>& eigvals,
                      const std::vector<double>& eigvecs, double sigma, uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  PcaSpec q{};
  q.s = planes_of(x);
  const int64_t C = q.s.C;
  if (C < 1 || C > kPcaMaxChannels)
    raise_value("x: pca_jitter takes 1 to 4 channels (one eigenvector per channel), got C = " + std::to_string(C));
  if (static_cast<int64_t>(eigvals.size()) != C)
    raise_value("eigvals: expected " + std::to_string(C) + " values (one per channel of x), got " +
                std::to_string(eigvals.size()));
  if (static_cast<int64_t>(eigvecs.size()) != C * C)
    raise_value("eigvecs: expected a (" + std::to_string(C) + ", " + std::to_string(C) + ") matrix, got " +
                std::to_string(eigvecs.size()) + " values");
  for (int64_t k = 0; k < C; ++k) {
    if (!(eigvals[k] >= 0.0 && eigvals[k] < 1e300))
      raise_value("eigvals: must be finite and >= 0, got " + std::to_string(eigvals[k]) + " at " + std::to_string(k));
    q.val[k] = eigvals[k];
    for (int64_t c = 0; c < C; ++c) {
      if (!std::isfinite(eigvecs[c * C + k])) raise_value("eigvecs: must be finite");
      q.vec[c][k] = eigvecs[c * C + k];
    }
  }
  if (!(sigma >= 0.0 && sigma < 1e300)) raise_value("sigma: must be finite and >= 0, got " + std::to_string(sigma));
  q.sigma = sigma;
  q.seed = seed;
  q.step = step;
  py::object y = new_array(x.shape, DType::f32, x.device, stream, "y", "x");
  float* yp = out_ptr(y);
  const float* xp = static_cast<const float*>(x.data);
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) cpu::pca_jitter(xp, yp, q);
    else on_gpu(x.device, [&](auto) { cuda::pca_jitter(xp, yp, q, reinterpret_cast<void*>(stream)); });
  }
  return y;
}

// An int32 / int64 array of one entry per sample of x, on x's device; returns its index bytes.
int index_array(const ArrayView& x, const ArrayView& l, const char* name) {
  require_same_device(x, ArgName{"x"}, l, ArgName{name});
  if (l.dtype != DType::i32 && l.dtype != DType::i64)
    raise_type(std::string(name) + ": expected an int32 or int64 array, got " + dtype_name(l.dtype));
  if (l.shape != std::vector<int64_t>{x.shape[0]})
    raise_value(std::string(name) + ": expected shape " + shape_str({x.shape[0]}) + " (one per sample of x), got " +
                shape_str(l.shape));
  return l.dtype == DType::i32 ? 4 : 8;
}

py::object alternating_flip(py::handle x_obj, py::handle indices_obj, uint64_t seed, uint64_t epoch, uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  const PlaneShape s = planes_of(x);
  const ArrayView l = view_array(indices_obj, ArgName{"indices"}, false, nullptr);
  const int index_bytes = index_array(x, l, "indices");
  py::object y = new_array(x.shape, DType::f32, x.device, stream, "y", "x");
  float* yp = out_ptr(y);
  const float* xp = static_cast<const float*>(x.data);
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) cpu::alternating_flip(xp, l.data, index_bytes, yp, s, seed, epoch);
    else
      on_gpu(x.device, [&](auto) {
        cuda::alternating_flip(xp, l.data, index_bytes, yp, s, seed, epoch, reinterpret_cast<void*>(stream));
      });
  }
  return y;
}

py::object tta_views(py::handle x_obj, const std::vector<int64_t>& tops, const std::vector<int64_t>& lefts,
                     const std::vector<bool>& mirrors, int64_t out_h, int64_t out_w, double fill, uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  ViewSpec v{};
  v.s = planes_of(x);
  v.s.OH = side_arg(out_h, "size");
  v.s.OW = side_arg(out_w, "size");
  if (tops.empty() || tops.size() > kMaxViews || lefts.size() != tops.size() || mirrors.size() != tops.size())
    raise_value("views: expected 1 to 10 (top, left, mirror) windows");
  v.views = static_cast<int>(tops.size());
  for (int i = 0; i < v.views; ++i) {
    if (std::llabs(tops[i]) > kMaxSide || std::llabs(lefts[i]) > kMaxSide) raise_value("pad: must be at most 2^24");
    v.top[i] = tops[i];
    v.left[i] = lefts[i];
    v.mirror[i] = mirrors[i];
  }
  v.fill = fill_arg(fill);
  py::object y = new_array({v.views * v.s.N, v.s.C, v.s.OH, v.s.OW}, DType::f32, x.device, stream, "y", "size");
  float* yp = out_ptr(y);
  const float* xp = static_cast<const float*>(x.data);
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) cpu::tta_views(xp, yp, v);
    else on_gpu(x.device, [&](auto) { cuda::tta_views(xp, yp, v, reinterpret_cast<void*>(stream)); });
  }
  return y;
}

py::object tta_mean(py::handle y_obj, int64_t views, uintptr_t stream) {
  const ArrayView y = view_f32(y_obj, ArgName{"y"}, false);
  if (y.shape.empty()) raise_value("y: expected shape (views * N, ...), got a 0-d array");
  if (views < 1 || views > kMaxViews) raise_value("views: must be an integer in [1, 10], got " + std::to_string(views));
  if (y.shape[0] % views != 0)
    raise_value("views: " + std::to_string(views) + " does not divide y's first dimension " +
                std::to_string(y.shape[0]) + " (y stacks views * N outputs)");
  std::vector<int64_t> shape = y.shape;
  shape[0] /= views;
  const int64_t M = y.numel / views;
  py::object out = new_array(shape, DType::f32, y.device, stream, "out", "y");
  float* op = out_ptr(out);
  const float* yp = static_cast<const float*>(y.data);
  {
    py::gil_scoped_release nogil;
    if (y.device == kCPU) cpu::tta_mean(yp, op, views, M);
    else on_gpu(y.device, [&](auto) { cuda::tta_mean(yp, op, views, M, reinterpret_cast<void*>(stream)); });
  }
  return out;
}

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
  s.fill = fill_arg(fill);
  s.seed = seed;
  s.step = step;
  py::object y = new_array(x.shape, DType::f32, x.device, stream, "y", "x");
  float* yp = out_ptr(y);
  const float* xp = static_cast<const float*>(x.data);
  if (x.device == kCPU) {
    py::gil_scoped_release nogil;
    cpu::augment_batch(xp, yp, s);
  } else {
    on_gpu(x.device, [&](auto) {
      py::gil_scoped_release nogil;
      cuda::augment_batch(xp, yp, s, reinterpret_cast<void*>(stream));
    });
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

// Checks mixup's and cutmix's labels, lam and num_classes; returns the labels' index bytes.
int labels_arg(const ArrayView& x, const ArrayView& l, double lam, int64_t num_classes) {
  const int index_bytes = index_array(x, l, "labels");
  if (!(lam >= 0.0 && lam <= 1.0)) raise_value("lam: must lie in [0, 1], got " + std::to_string(lam));
  if (num_classes < 1) raise_value("num_classes: must be >= 1, got " + std::to_string(num_classes));
  if (x.device == kCPU) {
    if (index_bytes == 4) check_labels(static_cast<const int32_t*>(l.data), x.shape[0], num_classes);
    else check_labels(static_cast<const int64_t*>(l.data), x.shape[0], num_classes);
  }
  return index_bytes;
}

py::tuple mixup(py::handle x_obj, py::handle labels_obj, double lam, int64_t num_classes, uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  if (x.shape.empty()) raise_value("x: expected shape (N, ...), got a 0-d array");
  const int64_t N = x.shape[0];
  const ArrayView l = view_array(labels_obj, ArgName{"labels"}, false, nullptr);
  const int index_bytes = labels_arg(x, l, lam, num_classes);
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
    on_gpu(x.device, [&](auto) {
      py::gil_scoped_release nogil;
      cuda::mixup(xp, l.data, index_bytes, yp, tp, p, reinterpret_cast<void*>(stream));
    });
  }
  return py::make_tuple(y, targets);
}

py::tuple cutmix(py::handle x_obj, py::handle labels_obj, double lam, int64_t num_classes, uint64_t seed, uint64_t step,
                 uintptr_t stream) {
  const ArrayView x = view_f32(x_obj, ArgName{"x"}, false);
  const PlaneShape ps = planes_of(x);
  const ArrayView l = view_array(labels_obj, ArgName{"labels"}, false, nullptr);
  const int index_bytes = labels_arg(x, l, lam, num_classes);
  CutmixSpec s;
  s.N = ps.N;
  s.C = ps.C;
  s.H = ps.H;
  s.W = ps.W;
  s.p.N = ps.N;
  s.p.F = ps.C * ps.H * ps.W;
  s.p.K = num_classes;
  if (s.H > 0 && s.W > 0) {
    cutmix_box(s, lam, seed, step);
  } else {  // no pixels: no box, the labels unmixed
    s.y0 = s.y1 = s.x0 = s.x1 = 0;
    s.p.lam = 1.0f;
    s.p.rest = 0.0f;
  }
  py::object y = new_array(x.shape, DType::f32, x.device, stream, "y", "x");
  py::object targets = new_array({ps.N, num_classes}, DType::f32, x.device, stream, "targets", "num_classes");
  float* yp = out_ptr(y);
  float* tp = out_ptr(targets);
  const float* xp = static_cast<const float*>(x.data);
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) cpu::cutmix(xp, l.data, index_bytes, yp, tp, s);
    else
      on_gpu(x.device,
             [&](auto) { cuda::cutmix(xp, l.data, index_bytes, yp, tp, s, reinterpret_cast<void*>(stream)); });
  }
  return py::make_tuple(y, targets);
}

}  // namespace

void bind_augment(py::module_& m) {
  m.def("augment_batch", &augment_batch, py::arg("x"), py::arg("seed"), py::arg("step"), py::arg("max_shift") = 0,
        py::arg("flip") = false, py::arg("cutout") = 0, py::arg("brightness") = 0.0, py::arg("contrast") = 0.0,
        py::arg("fill") = 0.0, py::arg("stream") = 0,
        "y: x (N, C, H, W) shifted, mirrored, jittered and cut out per sample, draws keyed by (seed, step, n).");
  m.def("mixup", &mixup, py::arg("x"), py::arg("labels"), py::arg("lam"), py::arg("num_classes"), py::arg("stream") = 0,
        "(x_mixed, soft_targets): each sample mixed with the flipped batch's.");
  m.def("cutmix", &cutmix, py::arg("x"), py::arg("labels"), py::arg("lam"), py::arg("num_classes"), py::arg("seed"),
        py::arg("step"), py::arg("stream") = 0,
        "(x_mixed, soft_targets): a box of the flipped batch pasted in, labels mixed by its area.");
  m.def("random_resized_crop", &random_resized_crop, py::arg("x"), py::arg("seed"), py::arg("step"), py::arg("out_h"),
        py::arg("out_w"), py::arg("scale_lo"), py::arg("scale_hi"), py::arg("ratio_lo"), py::arg("ratio_hi"),
        py::arg("stream") = 0, "y (N, C, out_h, out_w): a random box per sample, resized bilinearly.");
  m.def("random_rotation", &random_rotation, py::arg("x"), py::arg("seed"), py::arg("step"), py::arg("lo"),
        py::arg("hi"), py::arg("fill") = 0.0, py::arg("stream") = 0,
        "y: each sample rotated about its center by a uniform angle in [lo, hi) degrees, bilinear.");
  m.def("pca_jitter", &pca_jitter, py::arg("x"), py::arg("seed"), py::arg("step"), py::arg("eigvals"),
        py::arg("eigvecs"), py::arg("sigma"), py::arg("stream") = 0,
        "y: AlexNet's PCA colour jitter, eigvecs row-major (C, C), eigenvector k in column k.");
  m.def("alternating_flip", &alternating_flip, py::arg("x"), py::arg("indices"), py::arg("seed"), py::arg("epoch"),
        py::arg("stream") = 0, "y: sample mirrored iff epoch + its index's hash bit is odd.");
  m.def("tta_views", &tta_views, py::arg("x"), py::arg("tops"), py::arg("lefts"), py::arg("mirrors"), py::arg("out_h"),
        py::arg("out_w"), py::arg("fill") = 0.0, py::arg("stream") = 0,
        "y (views * N, C, out_h, out_w): view v of sample n at v * N + n.");
  m.def("tta_mean", &tta_mean, py::arg("y"), py::arg("views"), py::arg("stream") = 0,
        "out (N, ...): the mean of y's views (view-major, (views * N, ...)).");
}

}  // namespace fastopt

// Python entry point of the loss family: softmax cross-entropy, forward and backward in one call.
// Every argument is validated here with a message naming it (class indices too, on the CPU);
// the GIL is released around the kernels. Defaults and docs: fastopt/functional/loss.py.
#include <cmath>
#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "dispatch.h"
#include "fastopt/backend.h"
#include "fastopt/loss.h"

namespace fastopt {
namespace {

ByteRange range_of(const ArrayView& v, int32_t arg) {
  const auto b = reinterpret_cast<uintptr_t>(v.data);
  return {b, b + static_cast<uintptr_t>(v.numel) * itemsize(v.dtype), arg, -1};
}

template <class Index>
void check_classes(const Index* t, int64_t n, int64_t K) {
  for (int64_t i = 0; i < n; ++i)
    if (!class_in_range(t[i], K))
      raise_value("target: class index " + std::to_string(t[i]) + " at row " + std::to_string(i) + " is outside [0, " +
                  std::to_string(K) + ")");
}

py::tuple softmax_cross_entropy(py::handle logits, py::handle target, double label_smoothing, bool need_grad,
                                py::handle stats, int64_t topk, uintptr_t stream) {
  const ArrayView z = view_floating(logits, ArgName{"logits"}, false);
  if (z.shape.size() != 2) raise_value("logits: expected shape (N, K), got " + shape_str(z.shape));
  const int64_t N = z.shape[0], K = z.shape[1];
  if (K < 1) raise_value("logits: needs at least one class (K >= 1), got shape " + shape_str(z.shape));
  const ArrayView t = view_array(target, ArgName{"target"}, false, nullptr);
  require_same_device(z, ArgName{"logits"}, t, ArgName{"target"});
  TargetKind kind;
  if (t.dtype == DType::i32 || t.dtype == DType::i64) {
    kind = t.dtype == DType::i32 ? TargetKind::i32 : TargetKind::i64;
    if (t.shape != std::vector<int64_t>{N})
      raise_value("target: class indices must have shape " + shape_str({N}) + ", got " + shape_str(t.shape));
  } else if (t.dtype == DType::f32 || t.dtype == DType::bf16) {
    require_same_dtype(z, ArgName{"logits"}, t, ArgName{"target"});  // soft targets in the logits' dtype
    kind = TargetKind::soft;
    if (t.shape != z.shape)
      raise_value("target: soft targets must have the logits' shape " + shape_str(z.shape) + ", got " +
                  shape_str(t.shape));
  } else {
    raise_type(std::string("target: expected int32/int64 class indices or soft targets of the logits' dtype, got ") +
               dtype_name(t.dtype));
  }
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
    raise_value("label_smoothing: must lie in [0, 1], got " + std::to_string(label_smoothing));
  if (topk < 1) raise_value("topk: must be >= 1, got " + std::to_string(topk));
  float* sp = nullptr;
  if (!stats.is_none()) {
    const ArrayView s = view_f32(stats, ArgName{"stats"}, true);
    require_same_device(z, ArgName{"logits"}, s, ArgName{"stats"});
    if (s.shape != std::vector<int64_t>{3}) raise_value("stats: expected shape (3,), got " + shape_str(s.shape));
    require_disjoint({range_of(z, 0), range_of(t, 1), range_of(s, 2)}, {"logits", "target", "stats"});
    sp = static_cast<float*>(s.data);
  }
  if (z.device == kCPU) {
    if (kind == TargetKind::i32) check_classes(static_cast<const int32_t*>(t.data), N, K);
    if (kind == TargetKind::i64) check_classes(static_cast<const int64_t*>(t.data), N, K);
  }

  LossParams p;
  p.N = N;
  p.K = K;
  p.on = static_cast<float>(1.0 - label_smoothing);
  p.off = static_cast<float>(label_smoothing / static_cast<double>(K));
  p.topk = topk < K ? topk : K;
  py::object loss = new_array({}, DType::f32, z.device, stream, "loss", "logits");
  py::object dlogits = need_grad ? new_array(z.shape, z.dtype, z.device, stream, "dlogits", "logits") : py::none();
  float* lp = static_cast<float*>(view_f32(loss, ArgName{"loss"}, true).data);
  void* dp = need_grad ? view_array(dlogits, ArgName{"dlogits"}, true, &z.dtype).data : nullptr;
  if (z.device == kCPU) {
    py::gil_scoped_release nogil;
    by_floating_dtype(z, [&](auto tag) {
      using T = decltype(tag);
      cpu::softmax_cross_entropy(data_as<T>(z), t.data, kind, p, lp, static_cast<T*>(dp), sp);
    });
  } else {
    on_gpu(z.device, [&](auto) {
      py::gil_scoped_release nogil;
      by_floating_dtype(z, [&](auto tag) {
        using T = decltype(tag);
        cuda::softmax_cross_entropy(data_as<T>(z), t.data, kind, p, lp, static_cast<T*>(dp), sp,
                                    reinterpret_cast<void*>(stream));
      });
    });
  }
  return py::make_tuple(loss, dlogits);
}

}  // namespace

void bind_loss(py::module_& m) {
  m.def("softmax_cross_entropy", &softmax_cross_entropy, py::arg("logits"), py::arg("target"),
        py::arg("label_smoothing") = 0.0, py::arg("need_grad") = true, py::arg("stats") = py::none(),
        py::arg("topk") = 5, py::arg("stream") = 0,
        "(loss, dlogits): mean softmax cross-entropy as a 0-d float32 array and its gradient (None "
        "unless need_grad); stats (3,) += [sum of row losses, top-1 hits, top-k hits].");
}

}  // namespace fastopt

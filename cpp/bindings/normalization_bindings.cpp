// Python entry points of the normalization family (batch, layer, group norm). Each validates
// every argument (naming it), allocates outputs on the inputs' device, releases the GIL and
// dispatches to the CPU or CUDA backend. Defaults and docs live in fastopt/functional/normalization.py.
// The affine gradients go to fresh arrays or into the caller's out arrays (grad_out.h).
#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "dispatch.h"
#include "grad_out.h"
#include "fastopt/backend.h"
#include "fastopt/normalization.h"

namespace fastopt {
namespace {

// An optional float32 input: nullptr for None, else checked for shape and device.
const float* optional_input(py::handle obj, const char* name, const std::vector<int64_t>& shape, const ArrayView& x,
                            std::vector<ByteRange>* ranges, int32_t arg) {
  if (obj.is_none()) return nullptr;
  const ArrayView v = view_f32(obj, ArgName{name}, false);
  require_same_device(x, ArgName{"x"}, v, ArgName{name});
  if (v.shape != shape)
    raise_value(std::string(name) + ": expected shape " + shape_str(shape) + ", got " + shape_str(v.shape));
  if (ranges != nullptr) {
    const auto b = reinterpret_cast<uintptr_t>(v.data);
    ranges->push_back({b, b + static_cast<uintptr_t>(v.numel) * 4, arg, -1});
  }
  return static_cast<const float*>(v.data);
}

const float* required_input(py::handle obj, const char* name, const std::vector<int64_t>& shape, const ArrayView& x) {
  if (obj.is_none()) raise_type(std::string(name) + ": expected an array, got None");
  return optional_input(obj, name, shape, x, nullptr, 0);
}

double eps_arg(double eps) {
  if (!(eps >= 0.0) || std::isinf(eps)) raise_value("eps: must be a finite number >= 0, got " + std::to_string(eps));
  return eps;
}

// A float32 output of the given shape on x's device, and its pointer.
struct Out {
  py::object obj;
  float* ptr;
};
Out new_output(const std::vector<int64_t>& shape, const ArrayView& x, uintptr_t stream, const char* name) {
  Out o{new_array(shape, DType::f32, x.device, stream, name, "x"), nullptr};
  o.ptr = static_cast<float*>(view_f32(o.obj, ArgName{"output"}, true).data);
  return o;
}

// The affine gradients (names: the gradients and their out arguments), each computed when wanted.
struct AffineGrads {
  GradOut dw, db;
};
AffineGrads affine_grads(const char* const names[4], bool need_dw, bool need_db, py::handle dw_out, py::handle db_out,
                         bool accumulate, const std::vector<int64_t>& shape, const ArrayView& x, const ArrayView& dy,
                         uintptr_t stream) {
  const std::vector<NamedRange> inputs{{"dy", &dy}, {"x", &x}};
  AffineGrads g{grad_output(need_dw, names[0], dw_out, names[1], shape, x, accumulate, stream, "x", inputs),
                grad_output(need_db, names[2], db_out, names[3], shape, x, accumulate, stream, "x", inputs)};
  require_distinct_outputs(g.dw, names[1], g.db, names[3]);
  return g;
}

// x as (N, C, S): N = shape[0], C = shape[1], S = the product of the rest.
NormShape channel_shape(const ArrayView& x, const char* what) {
  if (x.shape.size() < 2)
    raise_value(std::string("x: ") + what + " expects (N, C, ...) with at least 2 dims, got shape " +
                shape_str(x.shape));
  NormShape s{x.shape[0], x.shape[1], 1, 1};
  for (size_t i = 2; i < x.shape.size(); ++i) s.S *= x.shape[i];
  return s;
}

void require_same_shape(const ArrayView& x, const ArrayView& v, const char* name) {
  if (v.shape != x.shape)
    raise_value(std::string(name) + ": shape " + shape_str(v.shape) + " does not match x shape " + shape_str(x.shape));
}

// x (and y, dy, dx): float32 or bfloat16; every per-channel array is float32.
py::tuple batch_norm_forward(py::handle x_obj, py::handle gamma, py::handle beta, py::handle running_mean,
                             py::handle running_var, bool training, double factor, double eps, uintptr_t stream) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const NormShape s = channel_shape(x, "batch norm");
  eps_arg(eps);
  if (!(factor >= 0.0 && factor <= 1.0))
    raise_value("momentum: the running-average factor must lie in [0, 1], got " + std::to_string(factor));
  const std::vector<int64_t> cshape{s.C};
  std::vector<ByteRange> ranges;
  const auto xb = reinterpret_cast<uintptr_t>(x.data);
  ranges.push_back({xb, xb + static_cast<uintptr_t>(x.numel) * itemsize(x.dtype), 0, -1});
  const float* w = optional_input(gamma, "gamma", cshape, x, &ranges, 1);
  const float* b = optional_input(beta, "beta", cshape, x, &ranges, 2);
  if (running_mean.is_none() != running_var.is_none()) raise_value("running_mean, running_var: pass both or neither");
  float* rm = nullptr;
  float* rv = nullptr;
  if (!running_mean.is_none()) {
    const ArgName rmn{"running_mean"}, rvn{"running_var"};
    const ArrayView m = view_f32(running_mean, rmn, training), v = view_f32(running_var, rvn, training);
    require_same_device(x, ArgName{"x"}, m, rmn);
    require_same_device(x, ArgName{"x"}, v, rvn);
    if (m.shape != cshape)
      raise_value("running_mean: expected shape " + shape_str(cshape) + ", got " + shape_str(m.shape));
    if (v.shape != cshape)
      raise_value("running_var: expected shape " + shape_str(cshape) + ", got " + shape_str(v.shape));
    rm = static_cast<float*>(m.data);
    rv = static_cast<float*>(v.data);
    if (training) {
      // Updated in place: neither may share memory with anything else of the call.
      for (auto [p, arg] : {std::pair<float*, int32_t>{rm, 3}, {rv, 4}}) {
        const auto a = reinterpret_cast<uintptr_t>(p);
        std::vector<ByteRange> all = ranges;
        all.push_back({a, a + static_cast<uintptr_t>(s.C) * 4, arg, -1});
        require_disjoint(std::move(all), {"x", "gamma", "beta", "running_mean", "running_var"});
      }
      const auto a = reinterpret_cast<uintptr_t>(rm), c = reinterpret_cast<uintptr_t>(rv);
      require_disjoint({{a, a + static_cast<uintptr_t>(s.C) * 4, 0, -1},
                        {c, c + static_cast<uintptr_t>(s.C) * 4, 1, -1}},
                       {"running_mean", "running_var"});
    }
  } else if (!training) {
    raise_value("running_mean, running_var: required when training=False (eval mode normalizes with them)");
  }
  if (training && s.N * s.S < 2)
    raise_value("x: expected more than 1 value per channel when training, got input size " + shape_str(x.shape));

  py::object y = new_array(x.shape, x.dtype, x.device, stream, "y", "x");
  void* yp = view_array(y, ArgName{"output"}, true, &x.dtype).data;
  Out mean = new_output(cshape, x, stream, "mean"), rstd = new_output(cshape, x, stream, "rstd");
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) {
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        const T* xp = data_as<T>(x);
        T* out = static_cast<T*>(yp);
        if (training) cpu::batch_norm_forward_train(s, xp, w, b, out, mean.ptr, rstd.ptr, rm, rv, factor, eps);
        else cpu::batch_norm_forward_eval(s, xp, w, b, out, mean.ptr, rstd.ptr, rm, rv, eps);
      });
    } else {
      on_gpu(x.device, [&](auto) {
        void* st = reinterpret_cast<void*>(stream);
        by_floating_dtype(x, [&](auto tag) {
          using T = decltype(tag);
          const T* xp = data_as<T>(x);
          T* out = static_cast<T*>(yp);
          if (training) cuda::batch_norm_forward_train(s, xp, w, b, out, mean.ptr, rstd.ptr, rm, rv, factor, eps, st);
          else cuda::batch_norm_forward_eval(s, xp, w, b, out, mean.ptr, rstd.ptr, rm, rv, eps, st);
        });
      });
    }
  }
  return py::make_tuple(y, mean.obj, rstd.obj);
}

py::tuple batch_norm_backward(py::handle dy_obj, py::handle x_obj, py::handle gamma, py::handle save_mean,
                              py::handle save_invstd, bool training, bool need_dgamma, bool need_dbeta,
                              uintptr_t stream, py::handle dgamma_out, py::handle dbeta_out, bool accumulate) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const ArrayView dy = view_floating(dy_obj, ArgName{"dy"}, false);
  require_same_device(x, ArgName{"x"}, dy, ArgName{"dy"});
  require_same_dtype(x, ArgName{"x"}, dy, ArgName{"dy"});
  require_same_shape(x, dy, "dy");
  const NormShape s = channel_shape(x, "batch norm");
  const std::vector<int64_t> cshape{s.C};
  const float* w = optional_input(gamma, "gamma", cshape, x, nullptr, 0);
  const float* mp = required_input(save_mean, "save_mean", cshape, x);
  const float* rp = required_input(save_invstd, "save_invstd", cshape, x);
  if (training && s.N * s.S < 2)
    raise_value("x: expected more than 1 value per channel when training, got input size " + shape_str(x.shape));
  py::object dx = new_array(x.shape, x.dtype, x.device, stream, "dx", "x");
  void* dxp = view_array(dx, ArgName{"output"}, true, &x.dtype).data;
  static const char* const names[4] = {"dgamma", "dgamma_out", "dbeta", "dbeta_out"};
  const AffineGrads g = affine_grads(names, need_dgamma, need_dbeta, dgamma_out, dbeta_out, accumulate, cshape, x, dy,
                                     stream);
  const GradOut &dw = g.dw, &db = g.db;
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) {
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        cpu::batch_norm_backward(s, data_as<T>(dy), data_as<T>(x), w, mp, rp, training, static_cast<T*>(dxp), dw.ptr,
                                 db.ptr, accumulate);
      });
    } else {
      on_gpu(x.device, [&](auto) {
        by_floating_dtype(x, [&](auto tag) {
          using T = decltype(tag);
          cuda::batch_norm_backward(s, data_as<T>(dy), data_as<T>(x), w, mp, rp, training, static_cast<T*>(dxp), dw.ptr,
                                    db.ptr, accumulate, reinterpret_cast<void*>(stream));
        });
      });
    }
  }
  return py::make_tuple(dx, dw.obj, db.obj);
}

// Layer norm as the row family: rows = the leading dims, one group of D = prod(normalized_shape).
NormShape layer_shape(const ArrayView& x, const std::vector<int64_t>& normalized_shape) {
  const size_t k = normalized_shape.size();
  if (k == 0) raise_value("normalized_shape: must name at least one trailing dim");
  bool ok = x.shape.size() >= k;
  for (size_t i = 0; ok && i < k; ++i) ok = x.shape[x.shape.size() - k + i] == normalized_shape[i];
  if (!ok)
    raise_value("normalized_shape: " + shape_str(normalized_shape) + " is not the trailing shape of x " +
                shape_str(x.shape));
  NormShape s{1, 1, 1, 1};
  for (size_t i = 0; i < x.shape.size(); ++i) (i + k < x.shape.size() ? s.N : s.C) *= x.shape[i];
  if (s.C == 0) raise_value("normalized_shape: normalizes over 0 elements");
  return s;
}

NormShape group_shape(const ArrayView& x, int64_t num_groups) {
  NormShape s = channel_shape(x, "group norm");
  if (num_groups < 1) raise_value("num_groups: must be >= 1, got " + std::to_string(num_groups));
  if (s.C % num_groups != 0)
    raise_value("num_groups: " + std::to_string(num_groups) + " does not divide the " + std::to_string(s.C) +
                " channels of x");
  s.G = num_groups;
  if (s.N > 0 && s.C / s.G * s.S == 0)
    raise_value("x: group norm over 0 elements per group, shape " + shape_str(x.shape));
  return s;
}

py::tuple row_forward(const ArrayView& x, const NormShape& s, const std::vector<int64_t>& wshape,
                      const std::vector<int64_t>& stat_shape, py::handle weight, py::handle bias, double eps,
                      uintptr_t stream) {
  eps_arg(eps);
  const float* w = optional_input(weight, "weight", wshape, x, nullptr, 0);
  const float* b = optional_input(bias, "bias", wshape, x, nullptr, 0);
  py::object y = new_array(x.shape, x.dtype, x.device, stream, "y", "x");
  void* yp = view_array(y, ArgName{"output"}, true, &x.dtype).data;
  Out mean = new_output(stat_shape, x, stream, "mean"), rstd = new_output(stat_shape, x, stream, "rstd");
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) {
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        cpu::row_norm_forward(s, data_as<T>(x), w, b, static_cast<T*>(yp), mean.ptr, rstd.ptr, eps);
      });
    } else {
      on_gpu(x.device, [&](auto) {
        by_floating_dtype(x, [&](auto tag) {
          using T = decltype(tag);
          cuda::row_norm_forward(s, data_as<T>(x), w, b, static_cast<T*>(yp), mean.ptr, rstd.ptr, eps,
                                 reinterpret_cast<void*>(stream));
        });
      });
    }
  }
  return py::make_tuple(y, mean.obj, rstd.obj);
}

py::tuple row_backward(const ArrayView& dy, const ArrayView& x, const NormShape& s, const std::vector<int64_t>& wshape,
                       const std::vector<int64_t>& stat_shape, py::handle mean, py::handle rstd, py::handle weight,
                       bool need_dweight, bool need_dbias, uintptr_t stream, py::handle dweight_out,
                       py::handle dbias_out, bool accumulate) {
  require_same_device(x, ArgName{"x"}, dy, ArgName{"dy"});
  require_same_dtype(x, ArgName{"x"}, dy, ArgName{"dy"});
  require_same_shape(x, dy, "dy");
  const float* w = optional_input(weight, "weight", wshape, x, nullptr, 0);
  const float* mp = required_input(mean, "mean", stat_shape, x);
  const float* rp = required_input(rstd, "rstd", stat_shape, x);
  py::object dx = new_array(x.shape, x.dtype, x.device, stream, "dx", "x");
  void* dxp = view_array(dx, ArgName{"output"}, true, &x.dtype).data;
  static const char* const names[4] = {"dweight", "dweight_out", "dbias", "dbias_out"};
  const AffineGrads g = affine_grads(names, need_dweight, need_dbias, dweight_out, dbias_out, accumulate, wshape, x, dy,
                                     stream);
  const GradOut &dw = g.dw, &db = g.db;
  {
    py::gil_scoped_release nogil;
    if (x.device == kCPU) {
      by_floating_dtype(x, [&](auto tag) {
        using T = decltype(tag);
        cpu::row_norm_backward(s, data_as<T>(dy), data_as<T>(x), w, mp, rp, static_cast<T*>(dxp), dw.ptr, db.ptr,
                               accumulate);
      });
    } else {
      on_gpu(x.device, [&](auto) {
        by_floating_dtype(x, [&](auto tag) {
          using T = decltype(tag);
          cuda::row_norm_backward(s, data_as<T>(dy), data_as<T>(x), w, mp, rp, static_cast<T*>(dxp), dw.ptr, db.ptr,
                                  accumulate, reinterpret_cast<void*>(stream));
        });
      });
    }
  }
  return py::make_tuple(dx, dw.obj, db.obj);
}

std::vector<int64_t> leading_shape(const ArrayView& x, size_t k) {
  return std::vector<int64_t>(x.shape.begin(), x.shape.end() - static_cast<std::ptrdiff_t>(k));
}

py::tuple layer_norm_forward(py::handle x_obj, std::vector<int64_t> normalized_shape, py::handle weight,
                             py::handle bias, double eps, uintptr_t stream) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const NormShape s = layer_shape(x, normalized_shape);
  return row_forward(x, s, normalized_shape, leading_shape(x, normalized_shape.size()), weight, bias, eps, stream);
}

py::tuple layer_norm_backward(py::handle dy_obj, py::handle x_obj, std::vector<int64_t> normalized_shape,
                              py::handle mean, py::handle rstd, py::handle weight, bool need_dweight, bool need_dbias,
                              uintptr_t stream, py::handle dweight_out, py::handle dbias_out, bool accumulate) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const ArrayView dy = view_floating(dy_obj, ArgName{"dy"}, false);
  const NormShape s = layer_shape(x, normalized_shape);
  return row_backward(dy, x, s, normalized_shape, leading_shape(x, normalized_shape.size()), mean, rstd, weight,
                      need_dweight, need_dbias, stream, dweight_out, dbias_out, accumulate);
}

py::tuple group_norm_forward(py::handle x_obj, int64_t num_groups, py::handle weight, py::handle bias, double eps,
                             uintptr_t stream) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const NormShape s = group_shape(x, num_groups);
  return row_forward(x, s, {s.C}, {s.N, s.G}, weight, bias, eps, stream);
}

py::tuple group_norm_backward(py::handle dy_obj, py::handle x_obj, int64_t num_groups, py::handle mean, py::handle rstd,
                              py::handle weight, bool need_dweight, bool need_dbias, uintptr_t stream,
                              py::handle dweight_out, py::handle dbias_out, bool accumulate) {
  const ArrayView x = view_floating(x_obj, ArgName{"x"}, false);
  const ArrayView dy = view_floating(dy_obj, ArgName{"dy"}, false);
  const NormShape s = group_shape(x, num_groups);
  return row_backward(dy, x, s, {s.C}, {s.N, s.G}, mean, rstd, weight, need_dweight, need_dbias, stream, dweight_out,
                      dbias_out, accumulate);
}

}  // namespace

void bind_normalization(py::module_& m) {
  m.def("batch_norm_forward", &batch_norm_forward, py::arg("x"), py::arg("gamma"), py::arg("beta"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("training"), py::arg("factor"), py::arg("eps"),
        py::arg("stream") = 0, "(y, save_mean, save_invstd); factor is the running-average weight of this batch.");
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("dy"), py::arg("x"), py::arg("gamma"),
        py::arg("save_mean"), py::arg("save_invstd"), py::arg("training"), py::arg("need_dgamma"),
        py::arg("need_dbeta"), py::arg("stream") = 0, py::arg("dgamma_out") = py::none(),
        py::arg("dbeta_out") = py::none(), py::arg("accumulate") = false,
        "(dx, dgamma, dbeta); a gradient not asked for is None; dgamma_out / dbeta_out receive them "
        "(accumulate: added into them).");
  m.def("layer_norm_forward", &layer_norm_forward, py::arg("x"), py::arg("normalized_shape"), py::arg("weight"),
        py::arg("bias"), py::arg("eps"), py::arg("stream") = 0);
  m.def("layer_norm_backward", &layer_norm_backward, py::arg("dy"), py::arg("x"), py::arg("normalized_shape"),
        py::arg("mean"), py::arg("rstd"), py::arg("weight"), py::arg("need_dweight"), py::arg("need_dbias"),
        py::arg("stream") = 0, py::arg("dweight_out") = py::none(), py::arg("dbias_out") = py::none(),
        py::arg("accumulate") = false);
  m.def("group_norm_forward", &group_norm_forward, py::arg("x"), py::arg("num_groups"), py::arg("weight"),
        py::arg("bias"), py::arg("eps"), py::arg("stream") = 0);
  m.def("group_norm_backward", &group_norm_backward, py::arg("dy"), py::arg("x"), py::arg("num_groups"),
        py::arg("mean"), py::arg("rstd"), py::arg("weight"), py::arg("need_dweight"), py::arg("need_dbias"),
        py::arg("stream") = 0, py::arg("dweight_out") = py::none(), py::arg("dbias_out") = py::none(),
        py::arg("accumulate") = false);
}

}  // namespace fastopt

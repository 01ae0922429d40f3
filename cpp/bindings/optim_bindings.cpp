// Python entry points for the fused optimizer step and the gradient-norm family. Each one
// validates everything it is handed, releases the GIL, and dispatches on the arrays' device.
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include "arrays.h"
#include "device_array.h"
#include "dispatch.h"
#include "fastopt/backend.h"

namespace fastopt {
namespace {

// Checking that no two of thousands of arrays overlap costs a sort; an optimizer passes the
// same arrays step after step, so remember the last few sets that passed.
class DisjointCache {
 public:
  bool seen(uint64_t key) const {
    for (uint64_t k : keys_)
      if (k == key) return true;
    return false;
  }
  void add(uint64_t key) { keys_[next_++ % keys_.size()] = key; }

 private:
  std::array<uint64_t, 16> keys_{};
  size_t next_ = 0;
};

uint64_t mix(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001b3ULL + (h >> 29); }

void check_disjoint(std::vector<ByteRange>&& ranges, const std::vector<const char*>& names) {
  static DisjointCache cache;  // guarded by the GIL
  uint64_t key = 0xcbf29ce484222325ULL;
  for (const ByteRange& r : ranges) key = mix(mix(key, r.begin), r.end);
  if (cache.seen(key)) return;
  require_disjoint(std::move(ranges), names);
  cache.add(key);
}

ByteRange range_of(const ArrayView& v, int32_t arg, int64_t index) {
  const auto b = reinterpret_cast<uintptr_t>(v.data);
  return {b, b + static_cast<uintptr_t>(v.numel) * itemsize(v.dtype), arg, index};
}

void require_same_shape(const ArrayView& a, const ArgName& an, const ArrayView& b, const ArgName& bn) {
  if (a.shape != b.shape) {
    raise_value(bn.str() + ": shape " + shape_str(b.shape) + " does not match " + an.str() + " shape " +
                shape_str(a.shape));
  }
}

std::vector<Span> grad_spans(py::sequence grads, bool writable, int* device) {
  const int64_t n = static_cast<int64_t>(py::len(grads));
  std::vector<Span> spans(n);
  ArrayView first;
  for (int64_t i = 0; i < n; ++i) {
    const ArgName name{"grads", i};
    ArrayView v = view_f32(grads[i], name, writable);
    if (i == 0) first = v;
    else require_same_device(first, ArgName{"grads", 0}, v, name);
    spans[i] = Span{static_cast<float*>(v.data), v.numel};
  }
  if (writable) {
    std::vector<ByteRange> ranges;
    for (int64_t i = 0; i < n; ++i) {
      const auto b = reinterpret_cast<uintptr_t>(spans[i].data);
      ranges.push_back({b, b + static_cast<uintptr_t>(spans[i].numel) * 4, 0, i});
    }
    check_disjoint(std::move(ranges), {"grads"});
  }
  *device = n ? first.device : kCPU;
  return spans;
}

// The two 0-d device results of a GPU norm pass share one 8-byte allocation.
std::pair<DeviceArray, DeviceArray> device_scalars(int device, uintptr_t stream) {
  DeviceArray norm;
  norm.dtype = DType::f32;
  norm.alloc = std::make_shared<Allocation>(8, device, stream);
  DeviceArray flag = norm;
  flag.dtype = DType::i32;
  flag.offset = 4;
  return {norm, flag};
}

// A parameter (or its gradient): fp32, bf16 or f16; the GPU takes fp32 and bf16.
ArrayView view_param(py::handle obj, const ArgName& name, bool writable) {
  ArrayView v = view_array(obj, name, writable, nullptr);
  if (v.dtype != DType::f32 && !is_low_precision(v.dtype))
    raise_type(name.str() + ": expected a float32, bfloat16 or float16 array, got " + dtype_name(v.dtype));
  if (v.device != kCPU && v.dtype == DType::f16)
    raise_type(name.str() + ": float16 on the GPU: not yet (issue 21); fastopt's CUDA optimizers take float32 and "
                            "bfloat16 parameters");
  return v;
}

py::tuple optim_step(py::sequence params, py::sequence grads, py::sequence states, py::handle steps,
                     py::sequence groups, py::sequence group_of, py::object max_norm, bool skip_nonfinite,
                     uintptr_t stream, py::object masters, double inv_scale, py::object grad_scale,
                     py::object found_inf) {
  const int64_t n = static_cast<int64_t>(py::len(params));
  if (static_cast<int64_t>(py::len(grads)) != n)
    raise_value("grads: got " + std::to_string(py::len(grads)) + " gradients for " + std::to_string(n) + " parameters");
  if (static_cast<int64_t>(py::len(states)) != n) raise_value("states: needs one tuple of buffers per parameter");
  if (static_cast<int64_t>(py::len(group_of)) != n) raise_value("group_of: needs one group index per parameter");
  if (!masters.is_none() && static_cast<int64_t>(py::len(masters)) != n)
    raise_value("masters: needs one entry (an array or None) per parameter");

  std::vector<Hyper> hypers;
  for (py::handle g : groups) {
    hypers.push_back(g.cast<Hyper>());
    const int k = static_cast<int>(hypers.back().kind);
    if (k < 0 || k >= kNumOptKinds) raise_value("groups: unknown optimizer kind " + std::to_string(k));
  }

  std::vector<TensorRef> refs(n);
  std::vector<ByteRange> ranges;
  ranges.reserve(n * 6 + 1);
  ArrayView first;
  for (int64_t i = 0; i < n; ++i) {
    const ArgName pn{"params", i}, gn{"grads", i}, sn{"states", i}, mn{"masters", i};
    const ArrayView p = view_param(params[i], pn, true);
    const ArrayView g = view_array(grads[i], gn, false, nullptr);
    if (i == 0) first = p;
    else require_same_device(first, ArgName{"params", 0}, p, pn);
    require_same_dtype(p, pn, g, gn);
    require_same_device(p, pn, g, gn);
    require_same_shape(p, pn, g, gn);
    const int64_t gi = group_of[i].cast<int64_t>();
    if (gi < 0 || gi >= static_cast<int64_t>(hypers.size()))
      raise_value("group_of[" + std::to_string(i) + "]: no group " + std::to_string(gi));
    TensorRef& r = refs[i];
    r.param = p.data;
    r.grad = g.data;
    r.numel = p.numel;
    r.group = static_cast<int32_t>(gi);
    r.type = storage_of(p.dtype);
    r.master = nullptr;
    r.rounding = Rounding::nearest;
    r.state[0] = r.state[1] = r.state[2] = nullptr;
    r.state_type = Storage::f32;
    ranges.push_back(range_of(p, 0, i));
    ranges.push_back(range_of(g, 1, i));
    const py::object m = masters.is_none() ? py::object(py::none())
                                           : py::object(py::reinterpret_borrow<py::sequence>(masters)[i]);
    if (!m.is_none()) {
      if (!is_low_precision(p.dtype))
        raise_value(mn.str() + ": params[" + std::to_string(i) + "] is float32 and is its own master");
      const ArrayView mv = view_f32(m, mn, true);
      require_same_device(p, pn, mv, mn);
      require_same_shape(p, pn, mv, mn);
      r.master = static_cast<float*>(mv.data);
      r.rounding = Rounding::master;
      ranges.push_back(range_of(mv, 4, i));
    } else if (hypers[gi].stochastic_rounding && p.dtype != DType::f32) {
      if (p.dtype != DType::bf16)
        raise_type(pn.str() + ": stochastic rounding stores bfloat16; a " + std::string(dtype_name(p.dtype)) +
                   " parameter needs master weights");
      r.rounding = Rounding::stochastic;
    }
    const py::sequence bufs = py::reinterpret_borrow<py::sequence>(states[i]);
    const int ns = num_states(hypers[gi].kind);
    if (static_cast<int>(py::len(bufs)) != ns)
      raise_value(sn.str() + ": this rule keeps " + std::to_string(ns) + " state buffers per parameter, got " +
                  std::to_string(py::len(bufs)));
    for (int k = 0; k < ns; ++k) {
      // float32, or bfloat16 on the CPU (state_dtype), the same for all of a parameter's buffers.
      const ArrayView s = view_array(bufs[k], sn, true, nullptr);
      if (s.dtype != DType::f32 && s.dtype != DType::bf16)
        raise_type(sn.str() + ": optimizer state is float32 or bfloat16, got " + dtype_name(s.dtype));
      if (s.dtype == DType::bf16 && s.device != kCPU)
        raise_type(sn.str() + ": bfloat16 optimizer state on the GPU: not yet; fastopt's CUDA optimizers keep "
                              "float32 state (state_dtype='float32')");
      if (k > 0 && storage_of(s.dtype) != r.state_type)
        raise_type(sn.str() + ": a parameter's state buffers share one dtype (all float32 or all bfloat16)");
      require_same_device(p, pn, s, sn);
      require_same_shape(p, pn, s, sn);
      r.state[k] = s.data;
      r.state_type = storage_of(s.dtype);
      ranges.push_back(range_of(s, 2, i));
    }
  }
  const DType i64 = DType::i64;
  const ArrayView st = view_array(steps, ArgName{"steps"}, true, &i64);
  if (st.numel != n) raise_value("steps: needs one counter per parameter");
  if (n) require_same_device(first, ArgName{"params", 0}, st, ArgName{"steps"});
  ranges.push_back(range_of(st, 3, -1));
  check_disjoint(std::move(ranges), {"params", "grads", "states", "steps", "masters"});

  StepRequest req{};
  req.groups = hypers.data();
  req.num_groups = static_cast<int32_t>(hypers.size());
  req.tensors = refs.data();
  req.num_tensors = n;
  req.steps = static_cast<int64_t*>(st.data);
  req.clip = !max_norm.is_none();
  req.max_norm = req.clip ? max_norm.cast<double>() : 0.0;
  if (req.clip && !(req.max_norm >= 0.0))
    raise_value("max_grad_norm: must be >= 0, got " + std::to_string(req.max_norm));
  req.check_finite = req.clip || skip_nonfinite;
  if (!(inv_scale > 0.0) || std::isinf(inv_scale))
    raise_value("inv_scale: must be a finite number > 0, got " + std::to_string(inv_scale));
  req.inv_scale = static_cast<float>(inv_scale);

  const int device = n ? first.device : kCPU;
  if (device != kCPU && inv_scale != 1.0)
    raise_value("inv_scale: the host-side unscale is for CPU parameters; on the GPU pass grad_scale (a device "
                "scalar, read without a sync)");
  // GradScaler's scalars stay on the GPU: the step reads them there, so nothing waits for the host.
  const DType f32 = DType::f32;
  for (auto [obj, name, out] :
       {std::tuple{&grad_scale, "grad_scale", &req.grad_scale}, std::tuple{&found_inf, "found_inf", &req.found_inf}}) {
    if (obj->is_none()) continue;
    const ArrayView v = view_array(*obj, ArgName{name}, false, &f32);
    if (v.numel != 1) raise_value(std::string(name) + ": must hold one value, got " + std::to_string(v.numel));
    if (device == kCPU)
      raise_value(std::string(name) + ": a device scalar is for GPU parameters; on the CPU pass inv_scale "
                                      "(and skip the call when an Inf was found)");
    require_same_device(first, ArgName{"params", 0}, v, ArgName{name});
    *out = static_cast<const float*>(v.data);
  }
  if (device == kCPU) {
    cpu::StepOutcome out;
    {
      py::gil_scoped_release nogil;
      out = cpu::optim_step(req);
    }
    return py::make_tuple(out.has_norm ? py::object(py::float_(out.norm)) : py::object(py::none()), out.skipped);
  }
  py::tuple result;
  on_gpu(device, [&](auto) {
    if (!req.check_finite) {  // (a found_inf skip is not reported: reading it back would wait for the GPU)
      {
        py::gil_scoped_release nogil;
        cuda::optim_step(req, nullptr, nullptr, reinterpret_cast<void*>(stream));
      }
      result = py::make_tuple(py::none(), false);  // with the GIL again
      return;
    }
    auto [norm, flag] = device_scalars(device, stream);
    {
      py::gil_scoped_release nogil;
      cuda::optim_step(req, static_cast<float*>(norm.data()), static_cast<int32_t*>(flag.data()),
                       reinterpret_cast<void*>(stream));
    }
    result = py::make_tuple(py::cast(norm), py::cast(flag));
  });
  return result;
}

double norm_type_arg(double p) {
  if (!(p > 0.0)) raise_value("norm_type: must be > 0 or inf, got " + std::to_string(p));
  return p;
}

py::object grad_norm(py::sequence grads, double p, uintptr_t stream) {
  norm_type_arg(p);
  int device;
  const std::vector<Span> spans = grad_spans(grads, false, &device);
  if (device == kCPU) {
    py::gil_scoped_release nogil;
    const double r = cpu::grad_norm(spans.data(), static_cast<int64_t>(spans.size()), p);
    py::gil_scoped_acquire gil;
    return py::float_(r);
  }
  py::object result;
  on_gpu(device, [&](auto) {
    DeviceArray out = device_empty({}, DType::f32, device, stream);
    {
      py::gil_scoped_release nogil;
      cuda::grad_norm(spans.data(), static_cast<int64_t>(spans.size()), p, static_cast<float*>(out.data()),
                      reinterpret_cast<void*>(stream));
    }
    result = py::cast(out);
  });
  return result;
}

void clip_by_norm_(py::sequence grads, py::handle norm, double max_norm, uintptr_t stream) {
  if (!(max_norm >= 0.0)) raise_value("max_norm: must be >= 0, got " + std::to_string(max_norm));
  int device;
  const std::vector<Span> spans = grad_spans(grads, true, &device);
  const int64_t n = static_cast<int64_t>(spans.size());
  if (device == kCPU) {
    const double total = norm.cast<double>();
    py::gil_scoped_release nogil;
    cpu::clip_scale(spans.data(), n, total, max_norm);
    return;
  }
  const DType f32 = DType::f32;
  const ArrayView nv = view_array(norm, ArgName{"norm"}, false, &f32);
  if (nv.numel != 1) raise_value("norm: must hold one value");
  require_same_device(ArrayView{nullptr, {}, 0, DType::f32, device}, ArgName{"grads", 0}, nv, ArgName{"norm"});
  py::gil_scoped_release nogil;
  on_gpu(device, [&](auto) {
    cuda::clip_scale(spans.data(), n, static_cast<const float*>(nv.data), max_norm, reinterpret_cast<void*>(stream));
  });
}

void clamp_(py::sequence grads, double lo, double hi, uintptr_t stream) {
  if (!(lo <= hi))
    raise_value("clip_value: the range [" + std::to_string(lo) + ", " + std::to_string(hi) + "] is empty");
  int device;
  const std::vector<Span> spans = grad_spans(grads, true, &device);
  const int64_t n = static_cast<int64_t>(spans.size());
  py::gil_scoped_release nogil;
  if (device == kCPU) {
    cpu::clamp(spans.data(), n, static_cast<float>(lo), static_cast<float>(hi));
    return;
  }
  on_gpu(device, [&](auto) {
    cuda::clamp(spans.data(), n, static_cast<float>(lo), static_cast<float>(hi), reinterpret_cast<void*>(stream));
  });
}

}  // namespace

void bind_optim(py::module_& m) {
  py::class_<Hyper>(m, "Hyper", "One parameter group's hyper-parameters for a step (see fastopt.optim).")
      .def(py::init<>())
      .def_readwrite("kind", &Hyper::kind)
      .def_readwrite("lr", &Hyper::lr)
      .def_readwrite("weight_decay", &Hyper::weight_decay)
      .def_readwrite("momentum", &Hyper::momentum)
      .def_readwrite("dampening", &Hyper::dampening)
      .def_readwrite("beta1", &Hyper::beta1)
      .def_readwrite("beta2", &Hyper::beta2)
      .def_readwrite("eps", &Hyper::eps)
      .def_readwrite("alpha", &Hyper::alpha)
      .def_readwrite("lr_decay", &Hyper::lr_decay)
      .def_readwrite("l1", &Hyper::l1)
      .def_readwrite("decoupled_weight_decay", &Hyper::decoupled_weight_decay)
      .def_readwrite("maximize", &Hyper::maximize)
      .def_readwrite("stochastic_rounding", &Hyper::stochastic_rounding)
      .def_readwrite("seed", &Hyper::seed);

  py::enum_<OptKind>(m, "OptKind")
      .value("SGD", OptKind::SGD)
      .value("SGD_MOMENTUM", OptKind::SGD_MOMENTUM)
      .value("SGD_NESTEROV", OptKind::SGD_NESTEROV)
      .value("ADAGRAD", OptKind::ADAGRAD)
      .value("RMSPROP", OptKind::RMSPROP)
      .value("RMSPROP_MOMENTUM", OptKind::RMSPROP_MOMENTUM)
      .value("RMSPROP_CENTERED", OptKind::RMSPROP_CENTERED)
      .value("RMSPROP_CENTERED_MOMENTUM", OptKind::RMSPROP_CENTERED_MOMENTUM)
      .value("ADAM", OptKind::ADAM)
      .value("ADAM_AMSGRAD", OptKind::ADAM_AMSGRAD);

  m.def("optim_step", &optim_step, py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("steps"),
        py::arg("groups"), py::arg("group_of"), py::arg("max_norm") = py::none(), py::arg("skip_nonfinite") = false,
        py::arg("stream") = 0, py::arg("masters") = py::none(), py::arg("inv_scale") = 1.0,
        py::arg("grad_scale") = py::none(), py::arg("found_inf") = py::none(),
        "One fused step over all tensors. Returns (norm, skipped): Python scalars on the CPU, "
        "0-d DeviceArrays on the GPU (None, False when no norm pass ran). params/grads: float32, or "
        "bfloat16/float16 on the CPU (one dtype per pair); masters: per parameter None or the float32 "
        "master copy of a bfloat16/float16 parameter. inv_scale (CPU) or grad_scale and found_inf (0-d "
        "float32 arrays on the parameters' GPU): GradScaler's unscale and Inf skip, fused.");
  m.def("grad_norm", &grad_norm, py::arg("grads"), py::arg("norm_type") = 2.0, py::arg("stream") = 0);
  m.def("clip_by_norm_", &clip_by_norm_, py::arg("grads"), py::arg("norm"), py::arg("max_norm"), py::arg("stream") = 0);
  m.def("clamp_", &clamp_, py::arg("grads"), py::arg("lo"), py::arg("hi"), py::arg("stream") = 0);
}

}  // namespace fastopt

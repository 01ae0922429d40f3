// Python entry points of the dropout family: forward, backward (the same map applied to dy), the
// mask for inspection, and the raw Philox4x32-10 block for known-answer tests. Every argument is
// validated here with a message naming it; the GIL is released around the kernels.
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "arrays.h"
#include "device_array.h"
#include "dispatch.h"
#include "fastopt/backend.h"
#include "fastopt/dropout.h"
#include "fastopt/philox.h"

namespace fastopt {
namespace {

// An integer in [0, 2^bits) (Python int or NumPy integer; bool and float are refused).
uint64_t unsigned_arg(py::handle v, const std::string& name, int bits) {
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    raise_type(name + ": expected an integer, got " + std::string(py::str(py::type::of(v).attr("__name__"))));
  const py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr()));
  if (!i) throw py::error_already_set();
  const unsigned long long u = PyLong_AsUnsignedLongLong(i.ptr());
  const bool overflow = u == static_cast<unsigned long long>(-1) && PyErr_Occurred();
  if (overflow) PyErr_Clear();
  if (overflow || (bits < 64 && (u >> bits) != 0))
    raise_value(name + ": must be an integer in [0, 2^" + std::to_string(bits) + "), got " + std::string(py::str(v)));
  return static_cast<uint64_t>(u);
}

double probability_arg(double p) {
  if (!(p >= 0.0 && p <= 1.0))
    raise_value("p: dropout probability has to be between 0 and 1, but got " + std::string(py::str(py::float_(p))));
  return p;
}

// offset + numel <= 2^64, so no stream position wraps around and reuses a word.
uint64_t offset_arg(py::handle offset, int64_t numel) {
  const uint64_t o = unsigned_arg(offset, "offset", 64);
  if (o > std::numeric_limits<uint64_t>::max() - static_cast<uint64_t>(numel) + 1 && numel > 0)
    raise_value("offset: offset + numel must not exceed 2^64 (the stream would wrap around)");
  return o;
}

py::tuple philox_words(py::sequence counter, py::sequence key) {
  if (py::len(counter) != 4) raise_value("counter: expected 4 words, got " + std::to_string(py::len(counter)));
  if (py::len(key) != 2) raise_value("key: expected 2 words, got " + std::to_string(py::len(key)));
  uint32_t c[4], k[2];
  for (int i = 0; i < 4; ++i)
    c[i] = static_cast<uint32_t>(unsigned_arg(counter[i], "counter[" + std::to_string(i) + "]", 32));
  for (int i = 0; i < 2; ++i) k[i] = static_cast<uint32_t>(unsigned_arg(key[i], "key[" + std::to_string(i) + "]", 32));
  const Philox4 r = fastopt::philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1]);
  return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
}

// y = x * m for forward (name "x") and backward (name "dy") alike; float32 or bfloat16, the
// output of x's dtype. training = false: validated all the same, then x itself comes back, as
// torch returns its input.
py::object dropout_apply(py::handle x, const char* name, double p, py::handle seed, py::handle offset, bool training,
                         uintptr_t stream) {
  const ArrayView xv = view_floating(x, ArgName{name}, false);
  const DropoutParams d = dropout_params(probability_arg(p), unsigned_arg(seed, "seed", 64),
                                         offset_arg(offset, xv.numel));
  if (!training) return py::reinterpret_borrow<py::object>(x);
  py::object out = new_array(xv.shape, xv.dtype, xv.device, stream, "the output", name);
  void* yp = view_array(out, ArgName{"out"}, true, &xv.dtype).data;
  if (xv.device == kCPU) {
    py::gil_scoped_release nogil;
    by_floating_dtype(xv, [&](auto tag) {
      using T = decltype(tag);
      cpu::dropout_apply(data_as<T>(xv), static_cast<T*>(yp), xv.numel, d);
    });
    return out;
  }
  on_gpu(xv.device, [&](auto) {
    py::gil_scoped_release nogil;
    by_floating_dtype(xv, [&](auto tag) {
      using T = decltype(tag);
      cuda::dropout_apply(data_as<T>(xv), static_cast<T*>(yp), xv.numel, d, reinterpret_cast<void*>(stream));
    });
  });
  return out;
}

py::object dropout_forward(py::handle x, double p, py::handle seed, py::handle offset, bool training,
                           uintptr_t stream) {
  return dropout_apply(x, "x", p, seed, offset, training, stream);
}

py::object dropout_backward(py::handle dy, double p, py::handle seed, py::handle offset, uintptr_t stream) {
  return dropout_apply(dy, "dy", p, seed, offset, true, stream);
}

py::object dropout_mask(py::sequence shape, double p, py::handle seed, py::handle offset, int device,
                        uintptr_t stream) {
  std::vector<int64_t> dims;
  int64_t numel = 1;
  for (size_t i = 0; i < py::len(shape); ++i) {
    const uint64_t s = unsigned_arg(shape[i], "shape[" + std::to_string(i) + "]", 62);
    dims.push_back(static_cast<int64_t>(s));
    if (s != 0 && numel > (int64_t{1} << 62) / static_cast<int64_t>(s)) raise_value("shape: too many elements");
    numel *= static_cast<int64_t>(s);
  }
  if (device < kCPU) raise_value("device: expected -1 (CPU) or a GPU index, got " + std::to_string(device));
  const DropoutParams d = dropout_params(probability_arg(p), unsigned_arg(seed, "seed", 64), offset_arg(offset, numel));
  py::object out = new_array(dims, DType::b1, device, stream, "the mask", "shape");
  const DType b1 = DType::b1;
  uint8_t* mp = static_cast<uint8_t*>(view_array(out, ArgName{"out"}, true, &b1).data);
  if (device == kCPU) {
    py::gil_scoped_release nogil;
    cpu::dropout_mask(mp, numel, d);
    return out;
  }
  on_gpu(device, [&](auto) {
    py::gil_scoped_release nogil;
    cuda::dropout_mask(mp, numel, d, reinterpret_cast<void*>(stream));
  });
  return out;
}

}  // namespace

void bind_dropout(py::module_& m) {
  m.def("philox4x32_10", &philox_words, py::arg("counter"), py::arg("key"),
        "Philox4x32-10 (Random123) of one 128-bit counter (4 words) under a 64-bit key (2 words): 4 words.");
  m.def("dropout_forward", &dropout_forward, py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset") = 0,
        py::arg("training") = true, py::arg("stream") = 0,
        "y = x * mask / (1 - p), a new array of x's dtype (float32 or bfloat16) on its device; x itself when not "
        "training.");
  m.def("dropout_backward", &dropout_backward, py::arg("dy"), py::arg("p"), py::arg("seed"), py::arg("offset") = 0,
        py::arg("stream") = 0, "dx = dy * mask / (1 - p), the mask regenerated from (seed, offset).");
  m.def("dropout_mask", &dropout_mask, py::arg("shape"), py::arg("p"), py::arg("seed"), py::arg("offset") = 0,
        py::arg("device") = kCPU, py::arg("stream") = 0,
        "The keep mask as a bool array (NumPy for device -1, else a DeviceArray on that GPU).");
}

}  // namespace fastopt

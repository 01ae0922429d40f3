// fastopt._C: the one extension module. Arrays are parsed in arrays.cpp, ops are bound per
// family; this file holds the module, build facts and device queries.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "arrays.h"
#include "device_array.h"
#include "host_cache.h"
#include "fastopt/backend.h"
#include "fastopt/device.h"
#include "fastopt/switches.h"

namespace py = pybind11;

namespace fastopt {
void bind_optim(py::module_& m);
void bind_normalization(py::module_& m);
void bind_dropout(py::module_& m);
void bind_conv2d(py::module_& m);
void bind_activation(py::module_& m);
void bind_pooling(py::module_& m);
void bind_loss(py::module_& m);
void bind_augment(py::module_& m);
void bind_linear(py::module_& m);
}

PYBIND11_MODULE(_C, m) {
  using namespace fastopt;
  m.doc() = "fastopt native kernels (CPU, and CUDA when built with it)";

  m.def("build_info", [] {
    py::dict d;
    d["version"] = FASTOPT_VERSION;
    d["cuda"] = cuda_compiled();
    d["cuda_emulated"] = cuda_emulated();
#ifdef FASTOPT_WITH_CUDA
    d["cuda_version"] = FASTOPT_CUDA_VERSION;
    d["cuda_architectures"] = FASTOPT_CUDA_ARCHS;
#else
    d["cuda_version"] = py::none();
    d["cuda_architectures"] = py::none();
#endif
#ifdef FASTOPT_OPENMP
    d["openmp"] = true;
#else
    d["openmp"] = false;
#endif
    d["cpu_threads"] = cpu::num_threads();
    d["simd_compiled"] = FASTOPT_ISA_LIST;
    d["simd"] = cpu::isa();
    d["amx"] = cpu::amx();
    d["compiler"] = FASTOPT_CXX_COMPILER;
    return d;
  });

  m.def(
      "switches",
      [] {
        const auto str_or_none = [](const char* s) -> py::object { return s ? py::str(s) : py::object(py::none()); };
        py::list out;
        for (const Switch* s : switches::all()) {
          py::dict d;
          d["name"] = s->name;
          d["alias"] = str_or_none(s->alias);
          d["backend"] = s->backend;
          d["default"] = s->default_value;
          d["read"] = s->read;
          d["meaning"] = s->meaning;
          d["value"] = str_or_none(switch_value(*s));
          out.append(d);
        }
        return out;
      },
      "The environment switches (fastopt/switches.h): name, alias, backend, default, read, meaning, and value "
      "(the environment's now, None when unset; a switch read once keeps the value it had at first use).");

  py::module_ c = m.def_submodule("cuda", "CUDA device queries");
  c.def("is_compiled", &cuda_compiled);
  c.def("is_emulated", &cuda_emulated, "Built with FASTOPT_CUDA=EMULATE: the CUDA kernels run on the host.");
  c.def("device_count", &cuda_device_count, "GPUs usable here; 0 without a GPU or driver (never an error).");
  c.def(
      "device_name",
      [](int device) -> std::string {
        require_cuda("fastopt.cuda.device_name");
        if (device < 0 || device >= cuda_device_count()) raise_value("device: no GPU " + std::to_string(device));
#ifdef FASTOPT_WITH_CUDA
        return cuda::device_name(device);
#else
        return "";
#endif
      },
      py::arg("device") = 0);
  c.def("runtime_version", [] {
#ifdef FASTOPT_WITH_CUDA
    return cuda::runtime_version();
#else
    return 0;
#endif
  });
  c.def("driver_version", [] {
#ifdef FASTOPT_WITH_CUDA
    return cuda::driver_version();
#else
    return 0;
#endif
  });
  c.def(
      "synchronize",
      [](uintptr_t stream) {
        require_cuda("fastopt.cuda.synchronize");
#ifdef FASTOPT_WITH_CUDA
        py::gil_scoped_release nogil;
        cuda::synchronize(reinterpret_cast<void*>(stream));
#endif
      },
      py::arg("stream") = 0);

  bind_device_array(m);
  bind_host_cache(m);
  bind_optim(m);
  bind_normalization(m);
  bind_dropout(m);
  bind_conv2d(m);
  bind_activation(m);
  bind_pooling(m);
  bind_loss(m);
  bind_augment(m);
  bind_linear(m);
}

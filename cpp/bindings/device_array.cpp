#include "device_array.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>

#include "fastopt/backend.h"
#include "fastopt/device.h"
#include "host_cache.h"

namespace fastopt {

bool cuda_compiled() {
#ifdef FASTOPT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool cuda_emulated() {
#ifdef FASTOPT_CUDA_EMULATION
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef FASTOPT_WITH_CUDA
  static const int n = cuda::device_count();
  return n;
#else
  return 0;
#endif
}

void require_cuda(const char* what) {
  if (!cuda_compiled())
    throw std::runtime_error(std::string(what) +
                             " needs CUDA, but this fastopt was built without it (no nvcc at build time)");
  if (cuda_device_count() == 0)
    throw std::runtime_error(std::string(what) + " needs a CUDA GPU, and none is usable here (no device or no driver)");
}

int cuda_device_of(const void* ptr) {
  require_cuda("a CUDA array argument");
#ifdef FASTOPT_WITH_CUDA
  // One GPU: every device pointer is on it; skip the driver query on the hot path.
  if (cuda_device_count() == 1) return 0;
  const int d = cuda::pointer_device(ptr);
  return d < 0 ? 0 : d;
#else
  (void)ptr;
  return 0;
#endif
}

// The allocator in use (null: the pool); leaked, so that arrays freed at interpreter shutdown
// never meet a destroyed global.
std::shared_ptr<ExternalAllocator>& external_allocator() {
  static auto* current = new std::shared_ptr<ExternalAllocator>();
  return *current;
}

// Called with the GIL held (arrays are made by bindings before they release it).
Allocation::Allocation(size_t n, int dev, uintptr_t s) : nbytes(n), device(dev), stream(s) {
  require_cuda("fastopt.DeviceArray");
#ifdef FASTOPT_WITH_CUDA
  if (dev < 0 || dev >= cuda_device_count())
    throw py::value_error("device: cuda:" + std::to_string(dev) + " does not exist (" +
                          std::to_string(cuda_device_count()) + " GPUs)");
  cuda::set_device(dev);
  if (const std::shared_ptr<ExternalAllocator> ext = external_allocator()) {
    const py::object got = ext->alloc(n, dev, s);
    if (!py::isinstance<py::int_>(got) || py::isinstance<py::bool_>(got))
      throw py::type_error("set_allocator: alloc returned " + std::string(py::str(py::type::of(got).attr("__name__"))) +
                           ", expected an int address");
    ptr = reinterpret_cast<void*>(got.cast<uintptr_t>());
    if (ptr == nullptr && n > 0)
      throw py::value_error("set_allocator: alloc returned address 0 for " + std::to_string(n) + " bytes");
    external = ext;
    return;
  }
  ptr = cuda::malloc_async(n, reinterpret_cast<void*>(s));
#endif
}

Allocation::~Allocation() {
#ifdef FASTOPT_WITH_CUDA
  if (external) {
    // An array may die where the GIL is not held; the free is a Python call.
    if (!Py_IsInitialized()) {  // too late for Python: leak rather than touch its objects
      (void)new std::shared_ptr<ExternalAllocator>(std::move(external));
      return;
    }
    py::gil_scoped_acquire gil;
    try {
      external->free(reinterpret_cast<uintptr_t>(ptr), nbytes, device, stream);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("fastopt: the allocator's free");  // a destructor must not throw
    }
    external.reset();
    return;
  }
  try {
    if (ptr) cuda::free_async(ptr, reinterpret_cast<void*>(stream));
  } catch (...) {
    // Freeing during interpreter shutdown may find the CUDA context gone; nothing to do then.
  }
#endif
}

int64_t DeviceArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// "17.6 TiB": the size an allocation asked for, in the error that refuses it.
std::string bytes_str(double bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  for (; bytes >= 1024.0 && u < 6; ++u) bytes /= 1024.0;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.3g %s", bytes, units[u]);
  return buf;
}

// The bytes of an array of this shape, checked before anything is allocated: a negative
// dimension or a size past what an array can address (int64 bytes, NumPy's and CUDA's limit)
// raises ValueError naming `source`, the argument the shape came from.
size_t checked_nbytes(const std::vector<int64_t>& shape, DType dtype, const char* output, const char* source) {
  int64_t bytes = static_cast<int64_t>(itemsize(dtype));
  bool overflow = false;
  for (int64_t d : shape) {
    if (d < 0)
      raise_value(std::string(source) + ": " + output + " would have shape " + shape_str(shape) +
                  ", with a negative dimension");
    overflow = overflow || __builtin_mul_overflow(bytes, d, &bytes);
  }
  const bool empty = std::find(shape.begin(), shape.end(), int64_t{0}) != shape.end();
  if (overflow && !empty)
    raise_value(std::string(source) + ": " + output + " would have shape " + shape_str(shape) +
                ", 2^63 or more bytes of " + dtype_name(dtype) + ": larger than any array can be");
  return empty ? 0 : static_cast<size_t>(bytes);
}

// Runs the allocation `alloc`; a refusal (host or device) becomes a MemoryError that names the
// output, its shape and size, and the argument it came from, instead of a bare std::bad_alloc.
template <class Alloc>
auto allocate(Alloc alloc, const std::vector<int64_t>& shape, DType dtype, int device, size_t nbytes,
              const char* output, const char* source) {
  std::string why;
  try {
    return alloc();
  } catch (const std::bad_alloc&) {  // the host cache, or the CUDA pool (cuda/runtime.cu)
  } catch (py::error_already_set& e) {
    // NumPy's own refusal, or that of an allocator given to fastopt.cuda.set_allocator (whose
    // message is kept), reworded the same way.
    if (!e.matches(PyExc_MemoryError)) throw;
    const std::string msg = py::str(e.value());
    if (device != kCPU && external_allocator() && !msg.empty()) why = " (" + msg + ")";
  }
  raise_memory(std::string(source) + ": " + output + " would have shape " + shape_str(shape) + ", " +
               bytes_str(static_cast<double>(nbytes)) + " of " + dtype_name(dtype) + ", which cannot be allocated on " +
               device_str(device) + why);
}

DeviceArray device_alloc(std::vector<int64_t> shape, DType dtype, int device, uintptr_t stream) {
  DeviceArray a;
  a.shape = std::move(shape);
  a.dtype = dtype;
  a.alloc = std::make_shared<Allocation>(a.nbytes(), device, stream);
  return a;
}

}  // namespace

DeviceArray device_empty(std::vector<int64_t> shape, DType dtype, int device, uintptr_t stream) {
  const size_t nbytes = checked_nbytes(shape, dtype, "the array", "shape");
  return allocate([&] { return device_alloc(shape, dtype, device, stream); }, shape, dtype, device, nbytes, "the array",
                  "shape");
}

py::object new_array(const std::vector<int64_t>& shape, DType dtype, int device, uintptr_t stream, const char* output,
                     const char* source) {
  const size_t nbytes = checked_nbytes(shape, dtype, output, source);
  return allocate(
      [&]() -> py::object {
        if (device == kCPU) return host_empty(shape, dtype);
        return py::cast(device_alloc(shape, dtype, device, stream));
      },
      shape, dtype, device, nbytes, output, source);
}

// ------------------------------------------------------------------------------------ DLPack
// The DLPack v0.8 ABI (dlpack.h), declared here to avoid a vendored header.
namespace dl {
struct Device {
  int32_t device_type;  // 1 = CPU, 2 = CUDA
  int32_t device_id;
};
struct DataType {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat, 6 bool
  uint8_t bits;
  uint16_t lanes;
};
struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};
}  // namespace dl

namespace {

struct DLContext {
  py::object owner;  // keeps the memory alive while the consumer holds the tensor
  std::vector<int64_t> shape;
  dl::ManagedTensor managed;
};

dl::DataType dl_dtype(DType t) {
  switch (t) {
    case DType::f32: return {2, 32, 1};
    case DType::f64: return {2, 64, 1};
    case DType::i32: return {0, 32, 1};
    case DType::i64: return {0, 64, 1};
    case DType::u8: return {1, 8, 1};
    case DType::bf16: return {4, 16, 1};  // kDLBfloat
    case DType::f16: return {2, 16, 1};
    default: return {6, 8, 1};
  }
}

void dl_delete(dl::ManagedTensor* self) {
  py::gil_scoped_acquire gil;
  delete static_cast<DLContext*>(self->manager_ctx);
}

void capsule_destructor(PyObject* cap) {
  // A consumer that took the tensor renamed the capsule to "used_dltensor" and owns it now.
  if (PyCapsule_IsValid(cap, "dltensor")) {
    auto* m = static_cast<dl::ManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
    if (m && m->deleter) m->deleter(m);
  }
}

}  // namespace

py::capsule make_dlpack(py::object owner, void* data, const std::vector<int64_t>& shape, DType dtype,
                        int32_t device_type, int32_t device_id) {
  auto* ctx = new DLContext{std::move(owner), shape, {}};
  ctx->managed.dl_tensor = dl::Tensor{data,
                                      {device_type, device_id},
                                      static_cast<int32_t>(shape.size()),
                                      dl_dtype(dtype),
                                      ctx->shape.data(),
                                      nullptr,  // C-contiguous
                                      0};
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = dl_delete;
  PyObject* cap = PyCapsule_New(&ctx->managed, "dltensor", capsule_destructor);
  if (!cap) {
    delete ctx;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

// ------------------------------------------------------------------------------- bindings

static std::vector<int64_t> shape_arg(py::handle shape) {
  if (py::isinstance<py::int_>(shape)) return {shape.cast<int64_t>()};
  return shape.cast<std::vector<int64_t>>();
}

static py::tuple shape_tuple(const std::vector<int64_t>& s) {
  py::tuple t(s.size());
  for (size_t i = 0; i < s.size(); ++i) t[i] = s[i];
  return t;
}

static py::object device_item(py::object self) {
  const DeviceArray& a = self.cast<const DeviceArray&>();
  if (a.numel() != 1)
    throw py::value_error("only a one-element DeviceArray converts to a Python scalar, this one has " +
                          std::to_string(a.numel()));
  return self.attr("numpy")().attr("item")();
}

// Views share the allocation, so a layer's parameters can be slices of one flat buffer and a
// batch a slice of a data set already on the GPU.
static DeviceArray device_reshape(const DeviceArray& a, py::args args) {
  py::handle spec = args;
  if (args.size() == 1 && !PyIndex_Check(args[0].ptr())) spec = args[0];
  std::vector<int64_t> shape;
  int64_t known = 1, infer = -1;
  for (py::handle d : spec) {
    const int64_t v = d.cast<int64_t>();
    if (v == -1 && infer < 0) {
      infer = static_cast<int64_t>(shape.size());
    } else if (v < 0) {
      raise_value("shape: invalid dimension " + std::to_string(v));
    } else {
      known *= v;
    }
    shape.push_back(v);
  }
  if (infer >= 0) {
    if (known == 0 || a.numel() % known != 0)
      raise_value("shape: cannot infer -1 for " + std::to_string(a.numel()) + " elements");
    shape[infer] = a.numel() / known;
    known *= shape[infer];
  }
  if (known != a.numel())
    raise_value("shape: " + std::to_string(known) + " elements requested, the array has " + std::to_string(a.numel()));
  DeviceArray v = a;
  v.shape = std::move(shape);
  return v;
}

static DeviceArray device_rows(const DeviceArray& a, const py::slice& s) {
  if (a.shape.empty()) throw py::index_error("a 0-d DeviceArray has no rows");
  py::ssize_t start, stop, step, len;
  if (!s.compute(a.shape[0], &start, &stop, &step, &len)) throw py::error_already_set();
  if (step != 1) raise_value("index: only slices with step 1 are supported (views stay contiguous)");
  DeviceArray v = a;
  v.shape[0] = len;
  v.offset += static_cast<size_t>(start) * static_cast<size_t>(a.numel() / std::max<int64_t>(a.shape[0], 1)) *
              itemsize(a.dtype);
  return v;
}

void bind_device_array(py::module_& m) {
  py::class_<DeviceArray>(m, "DeviceArray", R"doc(
A contiguous array in GPU memory owned by fastopt.

Made by fastopt.to_device / empty / zeros. CuPy and PyTorch view it without a copy through
__cuda_array_interface__ (v3) or DLPack (torch.from_dlpack, cupy.from_dlpack); .numpy() copies
it to the host.)doc")
      .def_property_readonly("shape", [](const DeviceArray& a) { return shape_tuple(a.shape); })
      .def_property_readonly("dtype", [](const DeviceArray& a) { return numpy_dtype(a.dtype); })
      .def_property_readonly("ndim", [](const DeviceArray& a) { return a.shape.size(); })
      .def_property_readonly("size", &DeviceArray::numel)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("device", [](const DeviceArray& a) { return "cuda:" + std::to_string(a.device()); })
      .def_property_readonly("ptr", [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.data()); })
      .def("__len__",
           [](const DeviceArray& a) {
             if (a.shape.empty()) throw py::type_error("len() of a 0-d DeviceArray");
             return a.shape[0];
           })
      .def(
          "reshape", [](const DeviceArray& a, py::args shape) { return device_reshape(a, shape); },
          "A view of the same memory with another shape (one dimension may be -1).")
      .def(
          "__getitem__", [](const DeviceArray& a, py::slice s) { return device_rows(a, s); },
          "A view of rows start:stop along the first axis (step 1), sharing this array's memory.")
      .def_property_readonly("__cuda_array_interface__",
                             [](const DeviceArray& a) {
                               py::dict d;
                               d["shape"] = shape_tuple(a.shape);
                               d["typestr"] = numpy_dtype(a.dtype).attr("str");
                               d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(a.data()), false);
                               d["strides"] = py::none();
                               d["version"] = 3;
                               // Work on it was queued on this stream; consumers order after it.
                               if (a.alloc->stream != 0) d["stream"] = a.alloc->stream;
                               return d;
                             })
      .def(
          "__dlpack__",
          [](py::object self, py::object stream, py::object, py::object, py::object) {
            const DeviceArray& a = self.cast<const DeviceArray&>();
#ifdef FASTOPT_WITH_CUDA
            // DLPack streams: None/-1 = no ordering wanted, 1 = legacy default stream. For any
            // other consumer stream, finish our queued work first.
            if (!stream.is_none()) {
              const int64_t s = stream.cast<int64_t>();
              if (s != -1 && !(s == 1 && a.alloc->stream == 0))
                cuda::synchronize(reinterpret_cast<void*>(a.alloc->stream));
            }
#endif
            return make_dlpack(self, a.data(), a.shape, a.dtype, 2, a.device());
          },
          py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
          py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(2, a.device()); })
      .def(
          "numpy",
          [](const DeviceArray& a) {
            py::array out(numpy_dtype(a.dtype), a.shape);
#ifdef FASTOPT_WITH_CUDA
            if (a.nbytes()) {
              py::gil_scoped_release nogil;
              cuda::memcpy_d2h(out.mutable_data(), a.data(), a.nbytes(), reinterpret_cast<void*>(a.alloc->stream));
            }
#endif
            return out;
          },
          "Copy to a new NumPy array (waits for the work queued on this array's stream).")
      .def(
          "item", [](py::object self) { return device_item(self); },
          "The single value of a one-element array, as a Python scalar (waits for the GPU).")
      .def("__float__", [](py::object self) { return py::float_(device_item(self)); })
      .def("__int__", [](py::object self) { return py::int_(device_item(self)); })
      .def("__bool__", [](py::object self) { return py::bool_(device_item(self)); })
      .def("__repr__", [](const DeviceArray& a) {
        std::string s = "DeviceArray(shape=(";
        for (size_t i = 0; i < a.shape.size(); ++i)
          s += std::to_string(a.shape[i]) + (a.shape.size() == 1 ? "," : (i + 1 < a.shape.size() ? ", " : ""));
        return s + "), dtype=" + dtype_name(a.dtype) + ", device='cuda:" + std::to_string(a.device()) + "')";
      });

  m.def(
      "empty",
      [](py::handle shape, py::object dtype, int device, uintptr_t stream) {
        return device_empty(shape_arg(shape), dtype_from_numpy(py::dtype::from_args(dtype)), device, stream);
      },
      py::arg("shape"), py::arg("dtype"), py::arg("device") = 0, py::arg("stream") = 0);
  m.def(
      "zeros",
      [](py::handle shape, py::object dtype, int device, uintptr_t stream) {
        DeviceArray a = device_empty(shape_arg(shape), dtype_from_numpy(py::dtype::from_args(dtype)), device, stream);
#ifdef FASTOPT_WITH_CUDA
        cuda::memset_async(a.data(), 0, a.nbytes(), reinterpret_cast<void*>(stream));
#endif
        return a;
      },
      py::arg("shape"), py::arg("dtype"), py::arg("device") = 0, py::arg("stream") = 0);
  m.def(
      "to_device",
      [](py::array arr, int device, uintptr_t stream, bool non_blocking) {
        const ArrayView v = view_array(arr, ArgName{"array"}, false, nullptr);
        DeviceArray a = device_empty(v.shape, v.dtype, device, stream);
#ifdef FASTOPT_WITH_CUDA
        if (a.nbytes()) {
          py::gil_scoped_release nogil;
          // As torch's non_blocking: asynchronous only from pinned memory (pageable memory would
          // be staged through a bounce buffer and waited for anyway), synchronous otherwise.
          if (non_blocking && cuda::is_pinned(v.data))
            cuda::memcpy_h2d_async(a.data(), v.data, a.nbytes(), reinterpret_cast<void*>(stream));
          else cuda::memcpy_h2d(a.data(), v.data, a.nbytes(), reinterpret_cast<void*>(stream));
        }
#else
        (void)non_blocking;
#endif
        return a;
      },
      py::arg("array"), py::arg("device") = 0, py::arg("stream") = 0, py::arg("non_blocking") = false);
  m.def(
      "pinned_empty",
      [](py::handle shape, py::object dtype) -> py::array {
        const std::vector<int64_t> dims = shape_arg(shape);
        const py::dtype dt = py::dtype::from_args(dtype);
        int64_t n = 1;
        for (int64_t d : dims) {
          if (d < 0) raise_value("shape: dimensions must be >= 0, got " + shape_str(dims));
          n *= d;
        }
#ifdef FASTOPT_WITH_CUDA
        if (cuda::device_count() == 0)
          throw std::runtime_error("pinned_empty: page-locked host memory needs a usable GPU (this machine has none)");
        void* p = cuda::host_alloc_pinned(static_cast<size_t>(n) * static_cast<size_t>(dt.itemsize()));
        py::capsule owner(p, [](void* q) { cuda::host_free_pinned(q); });
        return py::array(dt, dims, p, owner);
#else
        (void)n;
        throw std::runtime_error("pinned_empty: page-locked host memory needs a CUDA build of fastopt");
#endif
      },
      py::arg("shape"), py::arg("dtype"),
      "A C-contiguous NumPy array in page-locked (pinned) host memory, freed with the array: the source "
      "to_device(..., non_blocking=True) copies from without the host waiting.");
  m.def(
      "copy_",
      [](py::handle dst, py::handle src, uintptr_t stream) {
        // Device-to-device or host<->device copy between equal-sized arrays of one dtype.
        const ArrayView d = view_array(dst, ArgName{"dst"}, true, nullptr);
        const ArrayView s = view_array(src, ArgName{"src"}, false, &d.dtype);
        if (s.numel != d.numel)
          raise_value("src: has " + std::to_string(s.numel) + " elements, dst has " + std::to_string(d.numel));
        const size_t nb = static_cast<size_t>(d.numel) * itemsize(d.dtype);
        if (nb == 0) return;
        if (d.device == kCPU && s.device == kCPU) {
          // Parallel, so that it also measures the machine's copy bandwidth for the benchmarks;
          // one chunk stays on this thread (waking the team cost ~0.5 ms for a 4 KB copy).
          py::gil_scoped_release nogil;
          const int64_t chunk = 1 << 20;
          const int64_t nchunks = static_cast<int64_t>((nb + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (nchunks > 1)
          for (int64_t c = 0; c < nchunks; ++c) {
            const size_t off = static_cast<size_t>(c) * chunk;
            std::memcpy(static_cast<char*>(d.data) + off, static_cast<const char*>(s.data) + off,
                        std::min<size_t>(chunk, nb - off));
          }
          return;
        }
#ifdef FASTOPT_WITH_CUDA
        py::gil_scoped_release nogil;
        void* st = reinterpret_cast<void*>(stream);
        if (d.device == kCPU) cuda::memcpy_d2h(d.data, s.data, nb, st);
        else if (s.device == kCPU) cuda::memcpy_h2d(d.data, s.data, nb, st);
        else cuda::memcpy_d2d(d.data, s.data, nb, st);
#endif
      },
      py::arg("dst"), py::arg("src"), py::arg("stream") = 0);
  m.def(
      "set_allocator",
      [](py::object alloc, py::object free) {
        if (alloc.is_none() != free.is_none()) raise_value("set_allocator: give both alloc and free, or neither");
        for (auto [f, name] : {std::pair{&alloc, "alloc"}, std::pair{&free, "free"}})
          if (!f->is_none() && !PyCallable_Check(f->ptr()))
            throw py::type_error(std::string(name) + ": expected a callable, got " +
                                 std::string(py::str(py::type::of(*f).attr("__name__"))));
        // Arrays keep the allocator that made them, so switching never frees into the wrong one.
        external_allocator() = alloc.is_none() ? nullptr
                                               : std::make_shared<ExternalAllocator>(ExternalAllocator{alloc, free});
      },
      py::arg("alloc"), py::arg("free"));
  m.def(
      "_host_dlpack",
      [](py::array arr) {
        // DLPack export of a NumPy array: lets the tests check this file's DLPack layout
        // with numpy.from_dlpack on machines without a GPU.
        const ArrayView v = view_array(arr, ArgName{"array"}, false, nullptr);
        return make_dlpack(arr, v.data, v.shape, v.dtype, 1, 0);
      },
      py::arg("array"));
}

}  // namespace fastopt

#include "arrays.h"

#include <algorithm>
#include <new>
#include <utility>

#include "device_array.h"

namespace fastopt {

void raise_value(const std::string& msg) { throw py::value_error(msg); }
void raise_type(const std::string& msg) { throw py::type_error(msg); }

bool nhwc_layout(const std::string& layout, int device) {
  if (layout != "nchw" && layout != "nhwc") raise_value("layout: expected 'nchw' or 'nhwc', got '" + layout + "'");
  if (layout == "nhwc" && device != kCPU)
    raise_value("layout: 'nhwc' runs on the CPU only; the arrays are on cuda:" + std::to_string(device));
  return layout == "nhwc";
}

namespace {
// pybind11 turns a std::bad_alloc into MemoryError with its what() as the message.
struct OutOfMemory : std::bad_alloc {
  std::string msg;
  explicit OutOfMemory(std::string m) : msg(std::move(m)) {}
  const char* what() const noexcept override { return msg.c_str(); }
};
}  // namespace

void raise_memory(const std::string& msg) { throw OutOfMemory(msg); }

std::string ArgName::str() const {
  return index < 0 ? std::string(name) : std::string(name) + "[" + std::to_string(index) + "]";
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string o = "(";
  for (size_t i = 0; i < shape.size(); ++i) o += (i ? ", " : "") + std::to_string(shape[i]);
  return o + (shape.size() == 1 ? ",)" : ")");
}

std::string device_str(int device) { return device == kCPU ? "cpu" : "cuda:" + std::to_string(device); }

size_t itemsize(DType t) {
  switch (t) {
    case DType::f64:
    case DType::i64: return 8;
    case DType::f32:
    case DType::i32: return 4;
    case DType::bf16:
    case DType::f16: return 2;
    default: return 1;
  }
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    default: return "bool";
  }
}

bool is_low_precision(DType t) { return t == DType::bf16 || t == DType::f16; }

Storage storage_of(DType t) { return t == DType::bf16 ? Storage::bf16 : t == DType::f16 ? Storage::f16 : Storage::f32; }

// ml_dtypes' bfloat16 dtype, imported on first use (a required dependency of fastopt). Kept for
// the interpreter's lifetime, guarded by the GIL.
static const py::dtype& bfloat16_dtype() {
  static py::dtype* dt = nullptr;
  if (!dt) {
    py::object bf16;
    try {
      bf16 = py::module_::import("ml_dtypes").attr("bfloat16");
    } catch (py::error_already_set&) {
      raise_type("bfloat16 needs the ml_dtypes package (pip install ml_dtypes)");
    }
    dt = new py::dtype(py::dtype::from_args(bf16));
  }
  return *dt;
}

py::dtype numpy_dtype(DType t) { return t == DType::bf16 ? bfloat16_dtype() : py::dtype(dtype_name(t)); }

static bool dtype_from_code(char kind, size_t size, DType* out) {
  if (kind == 'f' && size == 4) *out = DType::f32;
  else if (kind == 'f' && size == 2) *out = DType::f16;
  else if (kind == 'f' && size == 8) *out = DType::f64;
  else if (kind == 'i' && size == 4) *out = DType::i32;
  else if (kind == 'i' && size == 8) *out = DType::i64;
  else if (kind == 'u' && size == 1) *out = DType::u8;
  else if (kind == 'b' && size == 1) *out = DType::b1;
  else return false;
  return true;
}

// A NumPy dtype fastopt handles; bfloat16 is a user-defined dtype (kind 'V'), known by its
// registered type number.
static bool numpy_dtype_code(const py::dtype& dt, DType* out) {
  if (dt.kind() == 'V' && dt.itemsize() == 2 && dt.num() == bfloat16_dtype().num()) {
    *out = DType::bf16;
    return true;
  }
  return dtype_from_code(dt.kind(), dt.itemsize(), out) && dt.byteorder() != '>';
}

DType dtype_from_numpy(const py::dtype& dt) {
  DType t;
  if (!numpy_dtype_code(dt, &t)) raise_type("unsupported dtype " + py::str(dt).cast<std::string>());
  return t;
}

static void check_dtype(DType got, const DType* want, const ArgName& name) {
  if (!want || got == *want) return;
  if (*want == DType::f32 && is_low_precision(got))
    raise_type(name.str() + ": unsupported dtype " + dtype_name(got) + ": this op takes float32 only (its " +
               dtype_name(got) + " path: not yet); fastopt never converts, so pass a float32 array");
  raise_type(name.str() + ": expected a " + dtype_name(*want) + " array, got " + dtype_name(got) +
             " (fastopt never converts, so in-place results cannot land in a copy)");
}

static ArrayView view_numpy(const py::array& arr, const ArgName& name, bool writable, const DType* want) {
  ArrayView v;
  DType t;
  const py::dtype dt = arr.dtype();
  if (!numpy_dtype_code(dt, &t)) raise_type(name.str() + ": unsupported dtype " + py::str(dt).cast<std::string>());
  check_dtype(t, want, name);
  if (!(arr.flags() & py::array::c_style))
    raise_value(name.str() + ": array must be C-contiguous (use numpy.ascontiguousarray)");
  if (writable && !arr.writeable()) raise_value(name.str() + ": array is read-only but is written in place");
  v.data = const_cast<void*>(arr.data());
  v.shape.assign(arr.shape(), arr.shape() + arr.ndim());
  v.numel = arr.size();
  v.dtype = t;
  v.writable = arr.writeable();
  return v;
}

static ArrayView view_cuda_interface(py::handle obj, const ArgName& name, bool writable, const DType* want) {
  py::dict cai;
  try {
    cai = obj.attr("__cuda_array_interface__").cast<py::dict>();
  } catch (py::error_already_set&) {
    raise_type(name.str() + ": __cuda_array_interface__ is not a dict");
  }
  ArrayView v;
  const py::tuple data = cai["data"].cast<py::tuple>();
  v.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  v.writable = !data[1].cast<bool>();
  const std::string typestr = cai["typestr"].cast<std::string>();
  DType t;
  if (typestr.size() < 3 || typestr[0] == '>' || !dtype_from_code(typestr[1], std::stoul(typestr.substr(2)), &t))
    raise_type(name.str() + ": unsupported typestr '" + typestr + "'");
  check_dtype(t, want, name);
  v.dtype = t;
  v.numel = 1;
  for (auto d : cai["shape"].cast<py::tuple>()) {
    v.shape.push_back(d.cast<int64_t>());
    v.numel *= v.shape.back();
  }
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const py::tuple strides = cai["strides"].cast<py::tuple>();
    int64_t expect = static_cast<int64_t>(itemsize(t));
    for (int64_t i = static_cast<int64_t>(v.shape.size()) - 1; i >= 0; --i) {
      if (v.shape[i] != 1 && strides[i].cast<int64_t>() != expect && v.numel > 0)
        raise_value(name.str() + ": CUDA array must be C-contiguous");
      expect *= v.shape[i];
    }
  }
  if (writable && !v.writable) raise_value(name.str() + ": CUDA array is read-only but is written in place");
  v.device = cuda_device_of(v.data);
  return v;
}

// PyTorch tensors, CPU or CUDA, read through their C-level methods: torch's
// __cuda_array_interface__ is Python code costing ~10 us a call, too slow for thousands of
// tensors a step. Only consulted once torch has been imported by the user.
struct TorchTypes {
  py::object tensor;
  std::pair<py::object, DType> dtypes[8];
};

static const TorchTypes* torch_types() {
  static TorchTypes* types = nullptr;  // guarded by the GIL; leaked on purpose (interpreter lifetime)
  if (types) return types;
  py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("torch")) return nullptr;
  py::object torch = modules["torch"];
  if (!py::hasattr(torch, "Tensor") || !py::hasattr(torch, "float32")) return nullptr;  // half-imported
  types = new TorchTypes{torch.attr("Tensor"),
                         {{torch.attr("float32"), DType::f32},
                          {torch.attr("float64"), DType::f64},
                          {torch.attr("int32"), DType::i32},
                          {torch.attr("int64"), DType::i64},
                          {torch.attr("uint8"), DType::u8},
                          {torch.attr("bool"), DType::b1},
                          {torch.attr("bfloat16"), DType::bf16},
                          {torch.attr("float16"), DType::f16}}};
  return types;
}

static ArrayView view_torch(const TorchTypes& tt, py::handle obj, const ArgName& name, const DType* want) {
  ArrayView v;
  const py::object dt = obj.attr("dtype");
  bool known = false;
  for (const auto& [tdt, ours] : tt.dtypes)
    if (dt.is(tdt)) {
      v.dtype = ours;
      known = true;
    }
  if (!known) raise_type(name.str() + ": unsupported dtype " + py::str(dt).cast<std::string>());
  check_dtype(v.dtype, want, name);
  if (!obj.attr("is_contiguous")().cast<bool>())
    raise_value(name.str() + ": tensor must be contiguous (use .contiguous())");
  v.data = reinterpret_cast<void*>(obj.attr("data_ptr")().cast<uintptr_t>());
  for (auto d : obj.attr("shape")) v.shape.push_back(d.cast<int64_t>());
  v.numel = obj.attr("numel")().cast<int64_t>();
  if (obj.attr("is_cuda").cast<bool>()) {
    require_cuda("a CUDA tensor argument");
    v.device = obj.attr("get_device")().cast<int>();
  } else {
    const std::string type = py::str(obj.attr("device").attr("type"));
    if (type != "cpu") raise_value(name.str() + ": tensors on '" + type + "' are not supported (cpu or cuda only)");
  }
  return v;
}

ArrayView view_array(py::handle obj, const ArgName& name, bool writable, const DType* want) {
  if (py::isinstance<py::array>(obj)) return view_numpy(py::reinterpret_borrow<py::array>(obj), name, writable, want);
  if (py::isinstance<DeviceArray>(obj)) {
    const DeviceArray& d = obj.cast<const DeviceArray&>();
    check_dtype(d.dtype, want, name);
    ArrayView v;
    v.data = d.data();
    v.shape = d.shape;
    v.numel = d.numel();
    v.dtype = d.dtype;
    v.device = d.device();
    return v;
  }
  if (const TorchTypes* tt = torch_types(); tt && py::isinstance(obj, tt->tensor))
    return view_torch(*tt, obj, name, want);
  if (py::hasattr(obj, "__cuda_array_interface__")) return view_cuda_interface(obj, name, writable, want);
  raise_type(name.str() +
             ": expected a numpy.ndarray, a torch.Tensor or a CUDA array (fastopt.DeviceArray, CuPy), got " +
             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
}

ArrayView view_floating(py::handle obj, const ArgName& name, bool writable) {
  ArrayView v = view_array(obj, name, writable, nullptr);
  if (v.dtype == DType::f16)
    raise_type(name.str() + ": unsupported dtype float16: this op takes float32 or bfloat16 (its float16 path: not "
                            "yet); fastopt never converts");
  if (v.dtype != DType::f32 && v.dtype != DType::bf16)
    raise_type(name.str() + ": expected a float32 array, got " + dtype_name(v.dtype) +
               " (bfloat16 too; fastopt never converts)");
  return v;
}

void require_same_dtype(const ArrayView& a, const ArgName& an, const ArrayView& b, const ArgName& bn) {
  if (a.dtype != b.dtype)
    raise_type(bn.str() + ": expected a " + dtype_name(a.dtype) + " array, got " + dtype_name(b.dtype) + " (" +
               an.str() + " is " + dtype_name(a.dtype) + "; one op, one dtype: fastopt never converts)");
}

void require_same_device(const ArrayView& a, const ArgName& an, const ArrayView& b, const ArgName& bn) {
  if (a.device != b.device)
    raise_value(bn.str() + " is on " + device_str(b.device) + " but " + an.str() + " is on " + device_str(a.device) +
                ": all arrays of one call must be on the same device");
}

void require_disjoint(std::vector<ByteRange> ranges, const std::vector<const char*>& names) {
  ranges.erase(std::remove_if(ranges.begin(), ranges.end(), [](const ByteRange& r) { return r.begin == r.end; }),
               ranges.end());
  std::sort(ranges.begin(), ranges.end(), [](const ByteRange& a, const ByteRange& b) { return a.begin < b.begin; });
  size_t reach = 0;  // the range that extends furthest so far
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[reach].end)
      raise_value(ArgName{names[ranges[i].arg], ranges[i].index}.str() + " and " +
                  ArgName{names[ranges[reach].arg], ranges[reach].index}.str() +
                  " share memory; they must be distinct arrays");
    if (ranges[i].end > ranges[reach].end) reach = i;
  }
}

}  // namespace fastopt

#include "host_cache.h"

#include <pybind11/numpy.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "fastopt/switches.h"

namespace fastopt {
namespace {

constexpr size_t kMinBytes = size_t{4} << 20;  // below, NumPy's allocator (glibc's heap) reuses memory itself
constexpr size_t kGranule = size_t{2} << 20;   // a huge page

size_t cap_from_env() {
  const char* v = switch_value(switches::host_cache_mb);
  if (v == nullptr || v[0] == '\0') return size_t{1024} << 20;
  try {
    const long long mb = std::stoll(v);
    return mb > 0 ? static_cast<size_t>(mb) << 20 : 0;
  } catch (const std::exception&) {
    return size_t{1024} << 20;  // not a number: the default, as for an unset variable
  }
}

class HostCache {
 public:
  // Never destroyed: arrays freed while the interpreter shuts down still hand their blocks back.
  static HostCache& get() {
    static HostCache* cache = new HostCache();
    return *cache;
  }

  size_t cap() const { return cap_; }

  void* take(size_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        ++hits_;
        return p;
      }
      ++misses_;
    }
    void* p = std::aligned_alloc(kGranule, bytes);
    if (p == nullptr) {  // the blocks held for other sizes may be what is missing
      clear();
      p = std::aligned_alloc(kGranule, bytes);
    }
    if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: its failure changes nothing
#endif
    return p;
  }

  void give(void* p, size_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= cap_) {
        free_[bytes].push_back(p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  void clear() {
    std::unordered_map<size_t, std::vector<void*>> blocks;
    {
      const std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (auto& [bytes, ptrs] : blocks)
      for (void* p : ptrs) std::free(p);
  }

  py::dict info() {
    const std::lock_guard<std::mutex> lock(mu_);
    py::dict d;
    d["cached_bytes"] = cached_;
    d["cap_bytes"] = cap_;
    d["min_bytes"] = kMinBytes;
    d["hits"] = hits_;
    d["misses"] = misses_;
    return d;
  }

 private:
  HostCache() : cap_(cap_from_env()) {}

  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // by block size
  size_t cached_ = 0;
  const size_t cap_;
  uint64_t hits_ = 0, misses_ = 0;
};

struct Block {
  void* ptr;
  size_t bytes;
};

}  // namespace

py::object host_empty(const std::vector<int64_t>& shape, DType dtype) {
  size_t n = itemsize(dtype);
  for (int64_t e : shape) n *= static_cast<size_t>(e);
  HostCache& cache = HostCache::get();
  if (n < kMinBytes || cache.cap() == 0) return py::array(numpy_dtype(dtype), shape);
  const size_t bytes = (n + kGranule - 1) / kGranule * kGranule;
  auto block = std::make_unique<Block>(Block{cache.take(bytes), bytes});
  void* data = block->ptr;
  py::capsule owner(block.get(), [](void* v) {
    std::unique_ptr<Block> b(static_cast<Block*>(v));
    HostCache::get().give(b->ptr, b->bytes);
  });
  block.release();  // the capsule owns it now
  return py::array(numpy_dtype(dtype), shape, data, owner);
}

void bind_host_cache(py::module_& m) {
  m.def(
      "host_cache_info", [] { return HostCache::get().info(); },
      "The CPU output cache: cached_bytes (freed blocks held), cap_bytes, min_bytes (smaller outputs "
      "bypass it), hits and misses.");
  m.def("empty_host_cache", [] { HostCache::get().clear(); }, "Free every block the CPU output cache holds.");
}

}  // namespace fastopt

// Large CPU outputs come from a cache of freed blocks, as the GPU's come from CUDA's pool.
//
// Why: a NumPy array past glibc's mmap threshold (32 MiB at most) is fresh memory on every call,
// and the kernel pays its first touch: the pages' faults and zeroing. A 51 MB batch-norm output
// cost 4.9 ms to fill fresh against 1.9 ms in memory already touched; the 102 MB output of a 1x1
// conv, 8 ms of its 24. A training loop allocates the same shapes every step, so blocks freed in
// one step serve the next.
//
// Outputs of at least kMinBytes take a block of their size rounded up to 2 MiB (2 MiB aligned,
// with MADV_HUGEPAGE as NumPy does for its large arrays); the NumPy array keeps it through a
// capsule, and when the array dies the block goes back to the cache, unless that would hold
// more than the cap (FASTOPT_HOST_CACHE_MB, default 1024; 0 turns the cache off), in which case
// it is freed. Contents are uninitialized, as np.empty's: every op writes all of its output.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "arrays.h"

namespace fastopt {

// An uninitialized C-contiguous NumPy array.
py::object host_empty(const std::vector<int64_t>& shape, DType dtype);

void bind_host_cache(py::module_& m);

}  // namespace fastopt

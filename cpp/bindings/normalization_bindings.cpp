// Python entry points of the normalization family (being written).
#include <pybind11/pybind11.h>

namespace fastopt {
void bind_normalization(pybind11::module_& m) { (void)m; }
}  // namespace fastopt

// Python entry points of the dropout family (being written).
#include <pybind11/pybind11.h>

namespace fastopt {
void bind_dropout(pybind11::module_& m) { (void)m; }
}  // namespace fastopt

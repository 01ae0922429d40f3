// linear bindings: placeholder, filled in by its branch.
#include <pybind11/pybind11.h>

#include "fastopt/linear.h"

namespace fastopt {
void bind_linear(pybind11::module_& m) { (void)m; }
}  // namespace fastopt

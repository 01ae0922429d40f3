// activation bindings: placeholder, filled in by its branch.
#include <pybind11/pybind11.h>

#include "fastopt/activation.h"

namespace fastopt {
void bind_activation(pybind11::module_& m) { (void)m; }
}  // namespace fastopt

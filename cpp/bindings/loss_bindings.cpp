// loss bindings: placeholder, filled in by its branch.
#include <pybind11/pybind11.h>

#include "fastopt/loss.h"

namespace fastopt {
void bind_loss(pybind11::module_& m) { (void)m; }
}  // namespace fastopt

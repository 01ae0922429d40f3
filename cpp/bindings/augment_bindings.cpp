// augment bindings: placeholder, filled in by its branch.
#include <pybind11/pybind11.h>

#include "fastopt/augment.h"

namespace fastopt {
void bind_augment(pybind11::module_& m) { (void)m; }
}  // namespace fastopt

// pooling bindings: placeholder, filled in by its branch.
#include <pybind11/pybind11.h>

#include "fastopt/pooling.h"

namespace fastopt {
void bind_pooling(pybind11::module_& m) { (void)m; }
}  // namespace fastopt

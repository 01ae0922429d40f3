// linear: placeholder, filled in by its branch.
#include "fastopt/linear.h"

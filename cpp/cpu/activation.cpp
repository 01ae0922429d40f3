// activation: placeholder, filled in by its branch.
#include "fastopt/activation.h"

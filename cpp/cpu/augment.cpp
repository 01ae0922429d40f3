// augment: placeholder, filled in by its branch.
#include "fastopt/augment.h"

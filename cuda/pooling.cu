// pooling: placeholder, filled in by its branch.
#include "fastopt/pooling.h"

// loss: placeholder, filled in by its branch.
#include "fastopt/loss.h"

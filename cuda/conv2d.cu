// The conv2d family on CUDA (being written).
#include "fastopt/backend.h"

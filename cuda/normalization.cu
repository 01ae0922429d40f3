// The normalization family on CUDA (being written).
#include "fastopt/backend.h"

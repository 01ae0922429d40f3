// The conv2d family on the CPU (being written).
#include "isa.h"

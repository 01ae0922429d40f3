// The dropout family on the CPU (being written).
#include "isa.h"

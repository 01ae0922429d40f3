// The final store of a weight-gradient kernel (conv2d dw/db, linear dweight/dbias, the norms'
// dgamma/dbeta), shared by both backends. Gradient accumulation (model.backward(dy,
// accumulate=True)) adds the fresh float32 result into the slot at this store, one float32
// addition and no pass of its own; without it the slot is overwritten and never read (a fresh
// buffer may hold anything, NaN included).
#pragma once
#include "fastopt/common.h"

namespace fastopt {

FASTOPT_HD void store_grad(float* slot, float fresh, bool accumulate) {
  *slot = accumulate ? *slot + fresh : fresh;
}

}  // namespace fastopt

// The channel-wise passes of the CPU conv2d (C / groups = 1; conv2d_channelwise.cpp), called by
// conv2d.cpp from the same ISA copy.
#pragma once
#include "fastopt/conv2d.h"
#include "isa.h"

namespace fastopt::cpu::FASTOPT_ISA {

void channelwise_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
void channelwise_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void channelwise_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate);

}  // namespace fastopt::cpu::FASTOPT_ISA

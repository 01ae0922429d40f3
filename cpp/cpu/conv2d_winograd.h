// The Winograd F(2x2, 3x3) passes of the CPU conv2d (conv2d_winograd.cpp), called by conv2d.cpp
// from the same ISA copy.
#pragma once
#include "fastopt/conv2d.h"
#include "isa.h"

namespace fastopt::cpu::FASTOPT_ISA {

// 3x3, unit stride and dilation, padding <= 2, enough channels per group for the transforms to
// pay (timed against the direct GEMMs: bench/results/cpu-conv2d-2026-11-22/NOTES.md): 8 for the
// forward and data-grad, 128 for the weight-grad, whose transforms gather across channel planes.
// The AVX2 copy has its own bars (32, and no weight-grad: see the .cpp). FASTOPT_CPU_CONV2D_WINOGRAD=0 turns it off (to compare with the direct GEMMs).
bool winograd_applies(const Conv2dShape& s, bool weight_grad = false);
void winograd_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
void winograd_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void winograd_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate);

}  // namespace fastopt::cpu::FASTOPT_ISA

// The channel-wise passes of the CPU conv2d (C / groups = 1; conv2d_channelwise.cpp), called by
// conv2d.cpp from the same ISA copy.
#pragma once
#include "fastopt/bf16.h"
#include "fastopt/conv2d.h"
#include "isa.h"

namespace fastopt::cpu::FASTOPT_ISA {

void channelwise_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
void channelwise_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void channelwise_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate);

#if defined(__AVX512F__)
// Whether the AVX-512 per-plane kernels take this shape (unit stride and dilation, square 3x3,
// 5x5 or 7x7): then the bf16 overloads below run them on each plane widened in cache, with the
// outputs rounded once; other bf16 shapes widen whole tensors (conv2d.cpp).
bool channelwise_planes(const Conv2dShape& s);
void channelwise_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y);
void channelwise_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx);
void channelwise_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate);
#endif

}  // namespace fastopt::cpu::FASTOPT_ISA

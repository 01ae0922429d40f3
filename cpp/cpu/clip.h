// The clip family's per-ISA kernels (clip.cpp), declared once: for clip.cpp's dispatchers and for
// the fused optimizer step (optim.cpp), whose clipping norm is the same sum of squares.
#pragma once
#include <cstdint>

#include "fastopt/backend.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(double grad_norm(const Span* grads, int64_t n, double p);
                     double sum_squares(const TypedSpan* grads, int64_t n);
                     void scale(const Span* grads, int64_t n, float coef);
                     void clamp(const Span* grads, int64_t n, float lo, float hi);)

}  // namespace fastopt::cpu

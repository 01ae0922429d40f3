// The CUDA Winograd F(2x2, 3x3) conv2d passes (cuda/opt_in/conv2d_winograd.cu), which conv2d.cu
// dispatches to when winograd_applies says so.
#pragma once

#include "fastopt/conv2d.h"

namespace fastopt::cuda {

// 3x3, unit stride and dilation, padding <= 2, >= 32 channels and filters per group, fp32 (the
// TF32 path stays on the implicit GEMM's tensor cores), extents within int32. Opt-in on the GPU
// until it is measured against the implicit GEMM there: FASTOPT_CUDA_CONV2D_WINOGRAD=1 (read per call).
bool winograd_applies(const Conv2dShape& s, bool allow_tf32);

void winograd_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, void* stream);
void winograd_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx, void* stream);
void winograd_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate,
                              void* stream);

}  // namespace fastopt::cuda

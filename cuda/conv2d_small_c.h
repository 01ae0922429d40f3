// The few-channel conv2d data-grad (cuda/conv2d_small_c.cu), which conv2d.cu dispatches to when
// backward_data_path says Path::SmallC.
#pragma once

#include <cuda_runtime.h>

namespace fastopt::cuda {

namespace conv {
struct Dims;  // conv2d_shapes.cuh, which this header leaves to its includers (the emulated build rewrites it)
}

// The strips kernel when FASTOPT_CUDA_CONV2D_STRIPS=1 (read per call) and strips_fit, else the pixels kernel.
void conv2d_backward_data_small_c(const conv::Dims& d, const float* dy, const float* w, float* dx, cudaStream_t st);

}  // namespace fastopt::cuda

// Winograd F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
// 2015): a 2x2 output tile of a 3x3 correlation from a 4x4 input tile with 16 multiplies where
// the direct form needs 36,
//
//   Y = A^T [ (G w G^T) .* (B^T d B) ] A
//
//   B^T = | 1  0 -1  0 |     G = | 1    0    0  |     A^T = | 1  1  1  0 |
//         | 0  1  1  0 |         | 1/2  1/2  1/2|           | 0  1 -1 -1 |
//         | 0 -1  1  0 |         | 1/2 -1/2  1/2|
//         | 0  1  0 -1 |         | 0    0    1  |
//
// and the gradients by the adjoints: dM = A dY A^T, dU = sum over tiles of dM .* V, dw = G^T dU G.
// Every transform is separable (one 1-D map along the rows, then along the columns): these 1-D
// maps are host/device templates so each backend applies them in its own loop order (the CPU's
// conv2d_winograd.cpp uses them today, on floats and AVX-512 vectors alike). Each output is a sum of
// at most four terms with coefficients 1 or 1/2 (exact in binary), so a transform adds no more
// rounding than the sums themselves.
#pragma once
#include "fastopt/common.h"

namespace fastopt::winograd {

// o = B^T d: input tile row or column (4) -> transformed (4)
template <class T>
FASTOPT_HD void input_1d(T d0, T d1, T d2, T d3, T* o) {
  o[0] = d0 - d2;
  o[1] = d1 + d2;
  o[2] = d2 - d1;
  o[3] = d1 - d3;
}

// o = G g: filter row or column (3) -> transformed (4)
// (T may be a vector type: the halving is by a float scalar, which vector extensions broadcast.)
template <class T>
FASTOPT_HD void weight_1d(T g0, T g1, T g2, T* o) {
  o[0] = g0;
  o[1] = (g0 + g1 + g2) * 0.5f;
  o[2] = (g0 - g1 + g2) * 0.5f;
  o[3] = g2;
}

// o = A^T m: product row or column (4) -> output (2)
template <class T>
FASTOPT_HD void output_1d(T m0, T m1, T m2, T m3, T* o) {
  o[0] = m0 + m1 + m2;
  o[1] = m1 - m2 - m3;
}

// o = A y: output-gradient row or column (2) -> product gradient (4); the adjoint of output_1d
template <class T>
FASTOPT_HD void output_grad_1d(T y0, T y1, T* o) {
  o[0] = y0;
  o[1] = y0 + y1;
  o[2] = y0 - y1;
  o[3] = -y1;
}

// o = G^T u: transformed-filter gradient row or column (4) -> filter gradient (3); the adjoint
// of weight_1d
template <class T>
FASTOPT_HD void weight_grad_1d(T u0, T u1, T u2, T u3, T* o) {
  o[0] = u0 + (u1 + u2) * 0.5f;
  o[1] = (u1 - u2) * 0.5f;
  o[2] = (u1 + u2) * 0.5f + u3;
}

}  // namespace fastopt::winograd

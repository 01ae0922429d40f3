// Max pooling (with int32 argmax indices) and global average pooling on the CPU, forward and
// backward (window rules and the backward gather: fastopt/pooling.h).
//
// Traffic: max pool forward reads x once (overlapping windows re-read it from cache) and writes
// 8 B per output (value + index); backward reads dy and indices (8 B per output, re-read from
// cache for overlapping windows) and writes dx, 4 B per input. Global average pool: forward
// 4 B/element read, backward 4 B/element written.
//
// Shape: OpenMP over output rows (forward: plane x p) or input rows (backward: plane x h), so
// that a few large planes are split as well as many small ones. The backward gathers per input
// element over the outputs whose windows cover it, in (p, q) order: deterministic, no atomics,
// and bitwise the same as the CUDA kernel. The column ranges of that gather are computed once
// per call. Global average pool sums a plane in 8 double lanes folded in a fixed order, so every
// ISA (and thread count) gives the same bits.
#include <vector>

#include "fastopt/pooling.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* indices);
                     void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* indices,
                                              float* dx);
                     void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw);
                     void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw);)

namespace FASTOPT_ISA {

void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* indices) {
  const int64_t rows = s.planes * s.P;
  const int64_t in_plane = static_cast<int64_t>(s.H) * s.W;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / s.P;
    const int p = static_cast<int>(r - plane * s.P);
    const float* xp = x + plane * in_plane;
    for (int q = 0; q < s.Q; ++q) max_pool_window(xp, s, p, q, y + r * s.Q + q, indices + r * s.Q + q);
  }
}

void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* indices, float* dx) {
  std::vector<int> q0(s.W), q1(s.W);
  for (int w = 0; w < s.W; ++w) {
    q0[w] = cover_begin(w, s.sw, s.pw, s.kw);
    q1[w] = cover_end(w, s.sw, s.pw, s.Q);
  }
  const int64_t rows = s.planes * s.H;
  const int64_t out_plane = static_cast<int64_t>(s.P) * s.Q;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / s.H;
    const int h = static_cast<int>(r - plane * s.H);
    const int p0 = cover_begin(h, s.sh, s.ph, s.kh), p1 = cover_end(h, s.sh, s.ph, s.P);
    const float* dyp = dy + plane * out_plane;
    const int32_t* ip = indices + plane * out_plane;
    float* dxr = dx + r * s.W;
    for (int w = 0; w < s.W; ++w) dxr[w] = max_pool_gather(dyp, ip, s.Q, p0, p1, q0[w], q1[w], h * s.W + w);
  }
}

void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw) {
  constexpr int kLanes = 8;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < planes; ++c) {
    const float* __restrict xc = x + c * hw;
    double lane[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= hw; j += kLanes)
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<double>(xc[j + l]);
    for (int l = 0; j < hw; ++j, ++l) lane[l] += static_cast<double>(xc[j]);
    const double sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    y[c] = static_cast<float>(sum / static_cast<double>(hw));
  }
}

void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw) {
  const float count = static_cast<float>(hw);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < planes; ++c) {
    const float g = dy[c] / count;
    float* __restrict dxc = dx + c * hw;
#pragma omp simd
    for (int64_t j = 0; j < hw; ++j) dxc[j] = g;
  }
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* indices) {
  FASTOPT_CPU_DISPATCH(max_pool2d_forward(s, x, y, indices))
}
void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* indices, float* dx) {
  FASTOPT_CPU_DISPATCH(max_pool2d_backward(s, dy, indices, dx))
}
void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw) {
  FASTOPT_CPU_DISPATCH(global_avg_pool_forward(x, y, planes, hw))
}
void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw) {
  FASTOPT_CPU_DISPATCH(global_avg_pool_backward(dy, dx, planes, hw))
}
#endif

}  // namespace fastopt::cpu

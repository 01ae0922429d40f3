// 2-D pooling over NCHW float32 planes (torch.nn.functional semantics), forward and backward.
//
// max_pool2d (ceil_mode False, dilation 1): output (p, q) takes the max over the window rows
// [p*sh - ph, p*sh - ph + kh) x cols [q*sw - pw, q*sw - pw + kw), clipped to the plane (padded
// positions never win), and records its flat index h*W + w within the plane as int32. Scan order
// is row-major and an element is taken iff v > best or v is NaN: the first of tied maxima wins and
// a NaN is always selected (the last NaN if several), exactly torch's rule on CPU and CUDA.
// padding <= kernel/2 (checked by the bindings) makes every clipped window non-empty.
//
// max_pool2d backward: dx[h, w] = sum of dy[p, q] over the outputs whose window covers (h, w)
// and whose index is h*W + w, added in row-major (p, q) order starting from 0. Written as a
// gather, so no float atomics and the same bits on every backend; an index that does not lie in
// its own window (never produced by the forward) contributes nothing, so garbage indices can
// never write out of bounds.
//
// avg_pool2d (ceil_mode False): y[p, q] = (sum of x over the window clipped to the plane, in
// float, row-major) / divisor, divisor = kh*kw with count_include_pad (torch's default: padded
// positions count as zeros; in floor mode no window reaches past the padding, so this is torch's
// divisor), else the clipped window's size. Backward: dx[h, w] = sum over the outputs whose
// windows cover (h, w), in row-major (p, q) order, of dy[p, q] / divisor(p, q): a gather again.
//
// global average pool: y[n, c] = sum(x[n, c]) / (H*W), summed in double then rounded once;
// backward dx[n, c, h, w] = dy[n, c] / float(H*W), one rounding (exact H*W below 2^24).
//
// The bindings guarantee that H*W, P*Q, H + 2*ph, W + 2*pw and the strides fit in int32, so all
// window arithmetic is int (p*stride <= H + 2*ph - kh); only plane offsets (plane * H*W) need 64 bits.
#pragma once
#include <cstdint>

#include "fastopt/bf16.h"
#include "fastopt/common.h"

namespace fastopt {

struct Pool2dShape {
  int64_t planes;  // N * C
  int H, W;        // input plane
  int P, Q;        // output plane
  int kh, kw, sh, sw, ph, pw;
};

// First and one-past-last input row (or column) of output p's window, clipped to [0, size).
FASTOPT_HD int window_begin(int p, int stride, int pad) {
  const int b = p * stride - pad;
  return b < 0 ? 0 : b;
}
FASTOPT_HD int window_end(int p, int stride, int pad, int k, int size) {
  const int e = p * stride - pad + k;
  return e < size ? e : size;
}

// Outputs [cover_begin, cover_end) along one axis whose windows contain input position h:
// p*stride - pad <= h < p*stride - pad + k.
FASTOPT_HD int cover_begin(int h, int stride, int pad, int k) {
  const int a = h + pad - k + 1;  // smallest p*stride allowed
  return a <= 0 ? 0 : (a - 1) / stride + 1;  // ceil(a / stride), no a + stride overflow
}
FASTOPT_HD int cover_end(int h, int stride, int pad, int out) {
  const int e = (h + pad) / stride + 1;
  return e < out ? e : out;
}

FASTOPT_HD bool max_pool_takes(float v, float best) { return v > best || v != v; }

// Max and its flat index over output (p, q)'s window of one plane of T (float or bf16: the max
// is one of the values, so it is exact in T).
template <class T>
FASTOPT_HD void max_pool_window(const T* plane, const Pool2dShape& s, int p, int q, float* best_out,
                                int32_t* index_out) {
  const int h0 = window_begin(p, s.sh, s.ph), h1 = window_end(p, s.sh, s.ph, s.kh, s.H);
  const int w0 = window_begin(q, s.sw, s.pw), w1 = window_end(q, s.sw, s.pw, s.kw, s.W);
  int32_t index = h0 * s.W + w0;
  float best = to_float(plane[index]);
  for (int h = h0; h < h1; ++h)
    for (int w = w0; w < w1; ++w) {
      const float v = to_float(plane[h * s.W + w]);
      if (max_pool_takes(v, best)) {
        best = v;
        index = h * s.W + w;
      }
    }
  *best_out = best;
  *index_out = index;
}

// dx at (h, w) of one plane: the outputs [p0, p1) x [q0, q1) cover it (cover_begin/cover_end).
// Summed in fp32 for T = bf16 too (the caller rounds the sum once).
template <class T>
FASTOPT_HD float max_pool_gather(const T* dy_plane, const int32_t* index_plane, int Q, int p0, int p1, int q0,
                                 int q1, int32_t flat) {
  float acc = 0.0f;
  for (int p = p0; p < p1; ++p)
    for (int q = q0; q < q1; ++q)
      if (index_plane[p * Q + q] == flat) acc += to_float(dy_plane[p * Q + q]);
  return acc;
}

FASTOPT_HD float avg_pool_divisor(const Pool2dShape& s, int p, int q, bool include_pad) {
  if (include_pad) return static_cast<float>(s.kh * s.kw);
  const int rows = window_end(p, s.sh, s.ph, s.kh, s.H) - window_begin(p, s.sh, s.ph);
  const int cols = window_end(q, s.sw, s.pw, s.kw, s.W) - window_begin(q, s.sw, s.pw);
  return static_cast<float>(rows * cols);
}

// T: float or bf16 (fastopt/bf16.h); the sum is fp32 either way, the caller rounds the result.
template <class T>
FASTOPT_HD float avg_pool_window(const T* plane, const Pool2dShape& s, int p, int q, bool include_pad) {
  const int h0 = window_begin(p, s.sh, s.ph), h1 = window_end(p, s.sh, s.ph, s.kh, s.H);
  const int w0 = window_begin(q, s.sw, s.pw), w1 = window_end(q, s.sw, s.pw, s.kw, s.W);
  float sum = 0.0f;
  for (int h = h0; h < h1; ++h)
    for (int w = w0; w < w1; ++w) sum += to_float(plane[h * s.W + w]);
  return sum / avg_pool_divisor(s, p, q, include_pad);
}

// dx at (h, w) of one plane; the outputs [p0, p1) x [q0, q1) cover it (cover_begin/cover_end).
template <class T>
FASTOPT_HD float avg_pool_gather(const T* dy_plane, const Pool2dShape& s, int p0, int p1, int q0, int q1,
                                 bool include_pad) {
  float acc = 0.0f;
  for (int p = p0; p < p1; ++p)
    for (int q = q0; q < q1; ++q) acc += to_float(dy_plane[p * s.Q + q]) / avg_pool_divisor(s, p, q, include_pad);
  return acc;
}

namespace cpu {
// x (planes, H, W) -> y, indices (planes, P, Q).
void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* indices);
// dy, indices (planes, P, Q) -> dx (planes, H, W).
void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* indices, float* dx);
// bf16 in and out: windows compared in fp32 (exact), dx summed in fp32 and rounded once.
void max_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, int32_t* indices);
void max_pool2d_backward(const Pool2dShape& s, const bf16* dy, const int32_t* indices, bf16* dx);
// NHWC (channels last), CPU only: x (N, H, W, C) -> y, indices (N, P, Q, C) with s.planes = N * C
// and channels = C; the same windows, tie and NaN rule, indices (h*W + w) and dx sums as NCHW.
void max_pool2d_forward_nhwc(const Pool2dShape& s, int64_t channels, const float* x, float* y, int32_t* indices);
void max_pool2d_forward_nhwc(const Pool2dShape& s, int64_t channels, const bf16* x, bf16* y, int32_t* indices);
void max_pool2d_backward_nhwc(const Pool2dShape& s, int64_t channels, const float* dy, const int32_t* indices,
                              float* dx);
void max_pool2d_backward_nhwc(const Pool2dShape& s, int64_t channels, const bf16* dy, const int32_t* indices,
                              bf16* dx);
// x (planes, hw) -> y (planes); dy (planes) -> dx (planes, hw). hw >= 1.
void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw);
void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw);
// bf16 in and out: the double sum's mean rounded once to bf16 (via float); dx = bf16(dy / hw).
void global_avg_pool_forward(const bf16* x, bf16* y, int64_t planes, int64_t hw);
void global_avg_pool_backward(const bf16* dy, bf16* dx, int64_t planes, int64_t hw);
// x (planes, H, W) -> y (planes, P, Q); dy (planes, P, Q) -> dx (planes, H, W).
void avg_pool2d_forward(const Pool2dShape& s, const float* x, float* y, bool include_pad);
void avg_pool2d_backward(const Pool2dShape& s, const float* dy, float* dx, bool include_pad);
// bf16 in and out: window sums and gathers in fp32, each result rounded once.
void avg_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, bool include_pad);
void avg_pool2d_backward(const Pool2dShape& s, const bf16* dy, bf16* dx, bool include_pad);
}  // namespace cpu

namespace cuda {
// Same contracts on device pointers, queued on `stream` (a cudaStream_t; 0 = legacy default).
void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* indices, void* stream);
void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* indices, float* dx, void* stream);
void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw, void* stream);
void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw, void* stream);
void avg_pool2d_forward(const Pool2dShape& s, const float* x, float* y, bool include_pad, void* stream);
void avg_pool2d_backward(const Pool2dShape& s, const float* dy, float* dx, bool include_pad, void* stream);
// bf16 in and out, the CPU's bf16 contract (fp32 windows and sums, each output rounded once).
void max_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, int32_t* indices, void* stream);
void max_pool2d_backward(const Pool2dShape& s, const bf16* dy, const int32_t* indices, bf16* dx, void* stream);
void global_avg_pool_forward(const bf16* x, bf16* y, int64_t planes, int64_t hw, void* stream);
void global_avg_pool_backward(const bf16* dy, bf16* dx, int64_t planes, int64_t hw, void* stream);
void avg_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, bool include_pad, void* stream);
void avg_pool2d_backward(const Pool2dShape& s, const bf16* dy, bf16* dx, bool include_pad, void* stream);
}  // namespace cuda

}  // namespace fastopt

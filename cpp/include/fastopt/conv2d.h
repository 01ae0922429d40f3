// Conv2d, NCHW, float32 or bfloat16: the interface between the bindings and both backends.
//
//   y[n,k,p,q] = b[k] + sum_{c in group(k), r, s} x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k, c', r, s]
//   P = (H + 2 ph - dh (R - 1) - 1) / sh + 1, Q likewise; K and C divisible by groups.
// Flops per pass: 2 N K (C/groups) R S P Q (forward, data-grad and weight-grad each).
#pragma once
#include <cstdint>

#include "fastopt/bf16.h"
#include "fastopt/grad_store.h"

namespace fastopt {

struct Conv2dShape {
  int64_t N, C, H, W;   // input x
  int64_t K, R, S;      // weight w: (K, C / groups, R, S)
  int64_t P, Q;         // output y: (N, K, P, Q)
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
};

namespace cpu {
// b may be null (no bias). Outputs are fully overwritten, except dw and db with accumulate set,
// which add the fresh gradient into what they hold at the final store (store_grad).
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate);
// nhwc: dy is (N, P, Q, K) (channels_last, conv2d_nhwc_*'s layout).
void conv2d_backward_bias(const Conv2dShape& s, const float* dy, float* db, bool accumulate, bool nhwc = false);
// bfloat16 (fastopt/bf16.h): x, w, b, dy in bf16, fp32 accumulation; y and dx rounded to bf16
// once (to nearest even), dw and db in fp32.
void conv2d_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y);
void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx);
void conv2d_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate);
void conv2d_backward_bias(const Conv2dShape& s, const bf16* dy, float* db, bool accumulate, bool nhwc = false);
// channels_last (conv2d_nhwc.cpp), groups = 1: x (N, H, W, C), y and dy (N, P, Q, K); w, dw and db
// as above (w (K, C, R, S), torch's weight layout). Same dtypes, rounding and accumulate rules.
void conv2d_nhwc_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
void conv2d_nhwc_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y);
void conv2d_nhwc_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void conv2d_nhwc_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx);
void conv2d_nhwc_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate);
void conv2d_nhwc_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate);
}  // namespace cpu

namespace cuda {
// Same contracts, device pointers, queued on `stream` (a cudaStream_t; 0 = legacy default).
// allow_tf32 opts into tensor-core TF32 math; the default path is exact float32 FMA.
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, bool allow_tf32,
                    void* stream);
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx, bool allow_tf32,
                          void* stream);
void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate,
                            bool allow_tf32, void* stream);
void conv2d_backward_bias(const Conv2dShape& s, const float* dy, float* db, bool accumulate, void* stream);
// bfloat16 as on the CPU: the GEMM passes on bf16 tensor cores (mma.sync, sm_80+) with fp32
// accumulation, the others through fp32; allow_tf32 has no effect.
void conv2d_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y, bool allow_tf32,
                    void* stream);
void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx, bool allow_tf32, void* stream);
void conv2d_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate,
                            bool allow_tf32, void* stream);
void conv2d_backward_bias(const Conv2dShape& s, const bf16* dy, float* db, bool accumulate, void* stream);
}  // namespace cuda

}  // namespace fastopt

// Linear (fully connected) layer, float32 or bfloat16, torch layout: the interface
// between the bindings and both backends.
//
//   forward      y[n, o]  = b[o] + sum_i x[n, i] w[o, i]      x (N, in), w (out, in), y (N, out)
//   data-grad    dx[n, i] = sum_o dy[n, o] w[o, i]
//   weight-grad  dw[o, i] = sum_n dy[n, o] x[n, i]
//   bias-grad    db[o]    = sum_n dy[n, o]
// Flops: 2 N in out per GEMM pass. Every output is fully overwritten (empty sums give 0, or b;
// dw and db with accumulate set add the fresh gradient into what they hold, at the final store),
// so N, in and out may each be 0. All sums run in float32 in an order fixed by the shape alone.
#pragma once
#include <cstdint>

#include "fastopt/bf16.h"
#include "fastopt/grad_store.h"

namespace fastopt {

struct LinearShape {
  int64_t N, in, out;
};

namespace cpu {
// b may be null (no bias).
void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y);
void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx);
void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, bool accumulate);
void linear_backward_bias(const LinearShape& s, const float* dy, float* db, bool accumulate);
// bfloat16 (fastopt/bf16.h): x, w, b, dy in bf16, fp32 accumulation; y and dx rounded to bf16
// once (to nearest even), dw and db in fp32.
void linear_forward(const LinearShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y);
void linear_backward_data(const LinearShape& s, const bf16* dy, const bf16* w, bf16* dx);
void linear_backward_weight(const LinearShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate);
void linear_backward_bias(const LinearShape& s, const bf16* dy, float* db, bool accumulate);
}  // namespace cpu

namespace cuda {
// Same contracts, device pointers, queued on `stream` (a cudaStream_t; 0 = legacy default).
void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y, void* stream);
void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx, void* stream);
void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, bool accumulate,
                            void* stream);
void linear_backward_bias(const LinearShape& s, const float* dy, float* db, bool accumulate, void* stream);
// bfloat16 as on the CPU, on bf16 tensor cores (mma.sync, sm_80+) with fp32 accumulation.
void linear_forward(const LinearShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y, void* stream);
void linear_backward_data(const LinearShape& s, const bf16* dy, const bf16* w, bf16* dx, void* stream);
void linear_backward_weight(const LinearShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate,
                            void* stream);
void linear_backward_bias(const LinearShape& s, const bf16* dy, float* db, bool accumulate, void* stream);
}  // namespace cuda

}  // namespace fastopt

// Batch, layer and group normalization, float32: the element math both backends share and the
// interface between the bindings and the backends.
//
// Every op is described by one NormShape over x viewed as (N, C, S), S = product of the spatial
// dims (1 for a 2-d input):
//   batch norm:  statistics per channel c over (n, s)                        (G unused)
//   group norm:  statistics per row (n, g) over C/G channels x S              (G = num_groups)
//   layer norm:  x viewed as (M, D) -> N = M, C = D, S = 1, G = 1: one row per leading index
// and the affine parameters are always per channel c (for layer norm, per element of the row).
//
//   forward  y  = (x - mean) * (rstd * w) + b               rstd = 1 / sqrt(var_biased + eps)
//   backward dx = dy * k + (x - mean) * c2 + c3,  k = w * rstd, g = dy * w, M = values per statistic,
//            c2 = -rstd^3 sum(g (x - mean)) / M,  c3 = -rstd sum(g) / M  (eval batch norm: c2 = c3 = 0)
//            dw = sum dy (x - mean) rstd,  db = sum dy  (per channel, over everything else)
// x - mean is formed before scaling (never x * scale + shift): with mean 1e5 and std 1e-2 the
// difference is exact in float32 (Sterbenz), while x * scale would round away the signal.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastopt/bf16.h"
#include "fastopt/common.h"
#include "fastopt/grad_store.h"

namespace fastopt {

struct NormShape {
  int64_t N, C, S;
  int64_t G;  // groups for the row family (layer norm: 1); unused by batch norm
};

// ------------------------------------------------------------------ element math (shared)

// The mean arrives as hi + lo: hi is a float near the data (so x - hi is exact) and lo the small
// rest (the float rounding of the mean on the CPU; the mean of x - hi on the GPU, where hi is a
// sample of the data). With mean 1e5 and std 1e-2 a float mean alone would be off by ~0.4 std.
FASTOPT_HD float norm_apply(float x, float hi, float lo, float scale, float shift) {
  return ((x - hi) - lo) * scale + shift;
}

// The x term only where c2 != 0: eval batch norm (c2 = c3 = 0) has dx = dy * k, which must not
// depend on x (a NaN in x would give NaN * 0 = NaN where torch's dx is finite).
FASTOPT_HD float norm_backward_dx(float dy, float xmu, float k, float c2, float c3) {
  return dy * k + (c2 != 0.0f ? xmu * c2 : 0.0f) + c3;
}

// Non-finite input follows torch: a NaN anywhere in a statistic's values makes its mean, its
// variance and so rstd NaN; an Inf makes the mean +-Inf (NaN if both signs) and the variance NaN.
// Nothing below may turn a NaN into a number (as max(var, 0) would: rstd = 1 / sqrt(eps)).

// The shift K of one-pass statistics over x - K: a sample of the data, so that x - K is exact
// near the mean, or 0 when that sample is not finite (Inf - Inf would make an Inf mean NaN).
FASTOPT_HD float norm_shift(float sample) { return is_finite(sample) ? sample : 0.0f; }

// M2 of a one-pass sum (sum d^2 - (sum d)^2 / n) clamped at 0 from below, where rounding can
// take it; NaN kept (NaN < 0 is false), where max(m2, 0) would make it 0.
FASTOPT_HD double clamp_m2(double m2) { return m2 < 0.0 ? 0.0 : m2; }

// rstd = 1 / sqrt(var + eps), in double, for every statistic of both backends. Not clamped: a
// negative running_var in eval mode gives NaN, as in torch (batch variances never go below 0).
FASTOPT_HD double norm_rstd(double var, double eps) { return 1.0 / sqrt(var + eps); }

// Welford/Chan running statistics: count, mean and M2 = sum (x - mean)^2. merge() is Chan et
// al.'s pairwise update; it never forms E[x^2] - E[x]^2, so large means do not cancel. Once the
// mean is not finite, the update mean + (x - mean) / n would make an Inf mean NaN at the next
// finite value (Inf - Inf): the mean then becomes mean + x, which keeps +Inf + finite = +Inf and
// gives NaN for +Inf + -Inf or a NaN, as a plain sum would. M2 turns NaN by itself.
template <class T>
struct Moments {
  T count, mean, m2;
};

template <class T>
FASTOPT_HD Moments<T> moments_push(Moments<T> a, T x) {
  a.count += T(1);
  const T d = x - a.mean;
  a.mean = is_finite(a.mean) ? a.mean + d / a.count : a.mean + x;
  a.m2 += d * (x - a.mean);
  return a;
}

template <class T>
FASTOPT_HD Moments<T> moments_merge(Moments<T> a, Moments<T> b) {
  const T n = a.count + b.count;
  if (n == T(0)) return a;
  const T d = b.mean - a.mean;
  const T wb = b.count / n;
  Moments<T> r;
  r.count = n;
  r.mean = is_finite(a.mean) && is_finite(b.mean) ? a.mean + d * wb : a.mean + b.mean;
  r.m2 = a.m2 + b.m2 + d * d * a.count * wb;
  return r;
}

// torch's running-statistics rule: running = (1 - f) running + f batch, with the unbiased batch
// variance (count / (count - 1)); f = momentum, or 1 / num_batches_tracked for momentum=None.
FASTOPT_HD void update_running(float* running_mean, float* running_var, double mean, double var_biased,
                               double count, double factor) {
  const double unbiased = var_biased * count / (count - 1.0);
  *running_mean = static_cast<float>((1.0 - factor) * static_cast<double>(*running_mean) + factor * mean);
  *running_var = static_cast<float>((1.0 - factor) * static_cast<double>(*running_var) + factor * unbiased);
}

// ------------------------------------------------------------------ backend interface
// Pointers address float32 arrays of the shapes the bindings checked; optional ones may be null
// (w, b: no affine; running_*: not tracked; dw, db: not wanted). Outputs are overwritten, except
// dw and db with accumulate set: the fresh gradient is added into them at the final store.
// mean and rstd have C entries for batch norm, N * G for the row family.

namespace cpu {
// Training batch norm: batch statistics into mean/rstd, running stats updated in place (when
// given) with factor f; needs N * S >= 2.
void batch_norm_forward_train(const NormShape& s, const float* x, const float* w, const float* b, float* y,
                              float* mean, float* rstd, float* running_mean, float* running_var, double factor,
                              double eps);
// Eval batch norm: mean = running_mean, rstd = norm_rstd(running_var, eps), then normalize.
void batch_norm_forward_eval(const NormShape& s, const float* x, const float* w, const float* b, float* y,
                             float* mean, float* rstd, const float* running_mean, const float* running_var,
                             double eps);
void batch_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w, const float* mean,
                         const float* rstd, bool training, float* dx, float* dw, float* db, bool accumulate);
// bf16 activations (x, y, dy, dx); w, b, mean, rstd, running stats, dw, db stay fp32.
void batch_norm_forward_train(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y,
                              float* mean, float* rstd, float* running_mean, float* running_var, double factor,
                              double eps);
void batch_norm_forward_eval(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y,
                             float* mean, float* rstd, const float* running_mean, const float* running_var,
                             double eps);
void batch_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w, const float* mean,
                         const float* rstd, bool training, bf16* dx, float* dw, float* db, bool accumulate);
void row_norm_forward(const NormShape& s, const float* x, const float* w, const float* b, float* y, float* mean,
                      float* rstd, double eps);
void row_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w, const float* mean,
                       const float* rstd, float* dx, float* dw, float* db, bool accumulate);
void row_norm_forward(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y, float* mean,
                      float* rstd, double eps);
void row_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w, const float* mean,
                       const float* rstd, bf16* dx, float* dw, float* db, bool accumulate);
}  // namespace cpu

namespace cuda {
// Same contracts, device pointers, queued on `stream` (a cudaStream_t; 0 = legacy default).
void batch_norm_forward_train(const NormShape& s, const float* x, const float* w, const float* b, float* y,
                              float* mean, float* rstd, float* running_mean, float* running_var, double factor,
                              double eps, void* stream);
void batch_norm_forward_eval(const NormShape& s, const float* x, const float* w, const float* b, float* y,
                             float* mean, float* rstd, const float* running_mean, const float* running_var,
                             double eps, void* stream);
void batch_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w, const float* mean,
                         const float* rstd, bool training, float* dx, float* dw, float* db, bool accumulate,
                         void* stream);
void row_norm_forward(const NormShape& s, const float* x, const float* w, const float* b, float* y, float* mean,
                      float* rstd, double eps, void* stream);
void row_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w, const float* mean,
                       const float* rstd, float* dx, float* dw, float* db, bool accumulate, void* stream);
// bf16 activations (x, y, dy, dx), the CPU's bf16 contract; every per-channel / per-row array fp32.
void batch_norm_forward_train(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y,
                              float* mean, float* rstd, float* running_mean, float* running_var, double factor,
                              double eps, void* stream);
void batch_norm_forward_eval(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y,
                             float* mean, float* rstd, const float* running_mean, const float* running_var,
                             double eps, void* stream);
void batch_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w, const float* mean,
                         const float* rstd, bool training, bf16* dx, float* dw, float* db, bool accumulate,
                         void* stream);
void row_norm_forward(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y, float* mean,
                      float* rstd, double eps, void* stream);
void row_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w, const float* mean,
                       const float* rstd, bf16* dx, float* dw, float* db, bool accumulate, void* stream);
}  // namespace cuda

}  // namespace fastopt

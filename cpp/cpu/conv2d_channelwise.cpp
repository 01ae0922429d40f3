// Channel-wise conv2d on the CPU (C / groups = 1: depthwise, and channel multipliers K / C > 1):
// the GEMMs would have one row or a reduction of R S, with no reuse to pack for, so each output
// plane is computed directly from its one input plane.
//
//   forward      y[n, k, p, q]  = b[k] + sum_(r,s) w[k, r, s] x[n, k / Kg, p sh - ph + r dh, q sw - pw + s dw]
//   data-grad    dx[n, c, h, w] = sum_(k of c, r, s) w[k, r, s] dy[n, k, (h + ph - r dh) / sh, (w + pw - s dw) / sw]
//   weight-grad  dw[k, r, s]    = sum_(n,p,q) dy[n, k, p, q] x[n, k / Kg, p sh - ph + r dh, q sw - pw + s dw]
//
// Work: 2 N K R S P Q flops per pass against 4 (|x| + |y|) bytes: bandwidth-bound in principle
// (9 flops per 8 bytes at 3x3), so every element should be read from memory once and every
// output written once. With unit stride and dilation and S in {3, 5, 7}, the AVX-512 copy does
// exactly that: each output row is 64-wide register accumulators that take all R S taps from
// masked row loads (the masks zero the padding columns) before one store; the data-grad is the
// same correlation of dy with the filter rotated by 180 degrees (padding R - 1 - p); the
// weight-grad reads each dy row once per r for all S taps of that row. Before, R S row AXPYs
// per output row loaded and stored y R S times (dw3x3 64@56, N = 32: forward 6.1 ms, 1.9x torch,
// 15% of the copy-bandwidth floor). Other shapes and ISA copies keep those row AXPYs and dots.
// Launch: OpenMP over output planes (forward, data-grad) or filters (weight-grad); every output
// is one thread's sum in a fixed order, so the bits do not depend on the thread count.
#include "conv2d_channelwise.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gemm.h"

namespace fastopt::cpu::FASTOPT_ISA {
namespace {

constexpr int64_t kMaxFastR = 16;  // rows per output row the AVX-512 paths take (the rows[] array)

// row[w0 + q*step] += a * src[q] for q < nq where that index lies in [0, n).
inline void axpy_to_row(float* __restrict row, int64_t n, float a, const float* __restrict src, int64_t nq,
                        int64_t w0, int64_t step) {
  const int64_t lo = std::min(nq, w0 >= 0 ? int64_t{0} : (-w0 + step - 1) / step);
  const int64_t hi = std::max(lo, std::min(nq, w0 >= n ? int64_t{0} : (n - w0 + step - 1) / step));
  if (step == 1)
    for (int64_t q = lo; q < hi; ++q) row[w0 + q] += a * src[q];
  else
    for (int64_t q = lo; q < hi; ++q) row[w0 + q * step] += a * src[q];
}

// out[q] += a * row[w0 + q*step] for q < nq where that index lies in [0, n).
inline void axpy_from_row(float* __restrict out, int64_t nq, float a, const float* __restrict row, int64_t n,
                          int64_t w0, int64_t step) {
  const int64_t lo = std::min(nq, w0 >= 0 ? int64_t{0} : (-w0 + step - 1) / step);
  const int64_t hi = std::max(lo, std::min(nq, w0 >= n ? int64_t{0} : (n - w0 + step - 1) / step));
  if (step == 1)
    for (int64_t q = lo; q < hi; ++q) out[q] += a * row[w0 + q];
  else
    for (int64_t q = lo; q < hi; ++q) out[q] += a * row[w0 + q * step];
}

// sum_q a[q] * row[w0 + q*step] over the valid q, in 16 fixed float lanes.
inline float dot_row(const float* __restrict a, int64_t nq, const float* __restrict row, int64_t n, int64_t w0,
                     int64_t step) {
  const int64_t lo = std::min(nq, w0 >= 0 ? int64_t{0} : (-w0 + step - 1) / step);
  const int64_t hi = std::max(lo, std::min(nq, w0 >= n ? int64_t{0} : (n - w0 + step - 1) / step));
  float acc[16] = {};
  int64_t q = lo;
  if (step == 1)  // the common case, kept apart so that it vectorizes
    for (; q + 16 <= hi; q += 16)
      for (int j = 0; j < 16; ++j) acc[j] += a[q + j] * row[w0 + q + j];
  else
    for (; q + 16 <= hi; q += 16)
      for (int j = 0; j < 16; ++j) acc[j] += a[q + j] * row[w0 + (q + j) * step];
  for (int j = 0; q < hi; ++q, ++j) acc[j] += a[q] * row[w0 + q * step];
  float sum = 0.0f;
  for (float v : acc) sum += v;
  return sum;
}

// The generic forms (any stride, dilation and kernel size; every ISA copy): R S shifted row
// AXPYs per output row, or row dots per tap.
void generic_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  const int64_t Kg = s.K / s.groups, PQ = s.P * s.Q, HW = s.H * s.W;
#pragma omp parallel for schedule(static)
  for (int64_t nk = 0; nk < s.N * s.K; ++nk) {
    const int64_t n = nk / s.K, k = nk % s.K;
    const float* plane = x + (n * s.C + k / Kg) * HW;
    float* out = y + nk * PQ;
    std::fill(out, out + PQ, b ? b[k] : 0.0f);
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t r = 0; r < s.R; ++r) {
        const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
        if (h < 0 || h >= s.H) continue;
        for (int64_t sc = 0; sc < s.S; ++sc)
          axpy_from_row(out + p * s.Q, s.Q, w[(k * s.R + r) * s.S + sc], plane + h * s.W, s.W,
                        sc * s.dil_w - s.pad_w, s.stride_w);
      }
  }
}

void generic_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  const int64_t Kg = s.K / s.groups, PQ = s.P * s.Q, HW = s.H * s.W;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
    const int64_t n = nc / s.C, c = nc % s.C;
    float* plane = dx + nc * HW;
    std::fill(plane, plane + HW, 0.0f);
    for (int64_t k = c * Kg; k < (c + 1) * Kg; ++k)
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
          if (h < 0 || h >= s.H) continue;
          for (int64_t sc = 0; sc < s.S; ++sc)
            axpy_to_row(plane + h * s.W, s.W, w[(k * s.R + r) * s.S + sc], dy + (n * s.K + k) * PQ + p * s.Q, s.Q,
                        sc * s.dil_w - s.pad_w, s.stride_w);
        }
  }
}

void generic_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw) {
  const int64_t Kg = s.K / s.groups, PQ = s.P * s.Q, HW = s.H * s.W, RS = s.R * s.S;
#pragma omp parallel for schedule(static)
  for (int64_t krs = 0; krs < s.K * RS; ++krs) {
    const int64_t k = krs / RS, r = (krs % RS) / s.S, sc = krs % s.S;
    double acc = 0.0;
    for (int64_t n = 0; n < s.N; ++n) {
      const float* plane = x + (n * s.C + k / Kg) * HW;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
        if (h < 0 || h >= s.H) continue;
        acc += dot_row(dy + (n * s.K + k) * PQ + p * s.Q, s.Q, plane + h * s.W, s.W, sc * s.dil_w - s.pad_w,
                       s.stride_w);
      }
    }
    dw[krs] = static_cast<float>(acc);
  }
}

#if defined(__AVX512F__)
using gemm::first_lanes;

// The plane zero-padded by (ph, pw) on every side, in a per-thread buffer whose border (and 64
// floats of slack past the end, which the last row's vector tails read) stays zero between
// planes of one pass: the taps then load without masks or bounds tests. Row pitch W + 2 pw.
class PaddedPlane {
 public:
  PaddedPlane(int64_t H, int64_t W, int64_t ph, int64_t pw)
      : H_(H), W_(W), ph_(ph), pw_(pw), pitch_(W + 2 * pw), buf_(static_cast<size_t>((H + 2 * ph) * pitch_ + 64), 0.0f) {}
  const float* fill(const float* plane) {
    for (int64_t h = 0; h < H_; ++h) std::copy(plane + h * W_, plane + (h + 1) * W_, buf_.data() + (h + ph_) * pitch_ + pw_);
    return buf_.data();
  }
  int64_t pitch() const { return pitch_; }

 private:
  int64_t H_, W_, ph_, pw_, pitch_;
  std::vector<float> buf_;
};

// out[q] = (accumulate ? out[q] : init) + sum over r < R, s < S of taps[r S + s] rows[r][q + s],
// for q in this chunk's NV vectors [q0, q0 + 16 NV) cut at Q; the sum runs over r, s ascending.
// Lanes past Q read padded-plane memory and are never stored.
template <int S, int NV>
void correlate_chunk(float* out, int64_t q0, int64_t Q, const float* const* rows, int64_t R, const float* taps,
                     float init, bool accumulate) {
  __m512 acc[NV];
  for (int v = 0; v < NV; ++v)
    acc[v] = accumulate ? _mm512_maskz_loadu_ps(first_lanes(Q - q0 - 16 * v), out + q0 + 16 * v) : _mm512_set1_ps(init);
  for (int64_t r = 0; r < R; ++r) {
    const float* src = rows[r] + q0;
    for (int s = 0; s < S; ++s) {
      const __m512 wv = _mm512_set1_ps(taps[r * S + s]);
      for (int v = 0; v < NV; ++v) acc[v] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(src + s + 16 * v), acc[v]);
    }
  }
  for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(out + q0 + 16 * v, first_lanes(Q - q0 - 16 * v), acc[v]);
}

// One output row in chunks of up to 4 vectors (64 outputs), each chunk's accumulators in registers.
template <int S>
void correlate_row(float* out, int64_t Q, const float* const* rows, int64_t R, const float* taps, float init,
                   bool accumulate) {
  for (int64_t q0 = 0; q0 < Q; q0 += 64) {
    switch (std::min<int64_t>(4, (Q - q0 + 15) / 16)) {
      case 1: correlate_chunk<S, 1>(out, q0, Q, rows, R, taps, init, accumulate); break;
      case 2: correlate_chunk<S, 2>(out, q0, Q, rows, R, taps, init, accumulate); break;
      case 3: correlate_chunk<S, 3>(out, q0, Q, rows, R, taps, init, accumulate); break;
      default: correlate_chunk<S, 4>(out, q0, Q, rows, R, taps, init, accumulate); break;
    }
  }
}

template <int S>
void fast_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  const int64_t Kg = s.K / s.groups, HW = s.H * s.W, PQ = s.P * s.Q, R = s.R;
#pragma omp parallel
  {
    PaddedPlane pad(s.H, s.W, s.pad_h, s.pad_w);
    const float* rows[kMaxFastR];
#pragma omp for schedule(static)
    for (int64_t nk = 0; nk < s.N * s.K; ++nk) {
      const int64_t n = nk / s.K, k = nk % s.K;
      const float* plane = pad.fill(x + (n * s.C + k / Kg) * HW);
      for (int64_t p = 0; p < s.P; ++p) {
        for (int64_t r = 0; r < R; ++r) rows[r] = plane + (p + r) * pad.pitch();
        correlate_row<S>(y + nk * PQ + p * s.Q, s.Q, rows, R, w + k * R * S, b ? b[k] : 0.0f, false);
      }
    }
  }
}

// dx = dy correlated with each filter rotated by 180 degrees, padding R - 1 - ph and S - 1 - pw,
// summed over the plane's Kg filters in order.
template <int S>
void fast_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  const int64_t Kg = s.K / s.groups, HW = s.H * s.W, PQ = s.P * s.Q, R = s.R;
#pragma omp parallel
  {
    PaddedPlane pad(s.P, s.Q, R - 1 - s.pad_h, S - 1 - s.pad_w);
    const float* rows[kMaxFastR];
    float rotated[kMaxFastR * S];
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
      const int64_t n = nc / s.C, c = nc % s.C;
      for (int64_t kl = 0; kl < Kg; ++kl) {
        const int64_t k = c * Kg + kl;
        for (int64_t i = 0; i < R * S; ++i) rotated[i] = w[k * R * S + R * S - 1 - i];
        const float* plane = pad.fill(dy + (n * s.K + k) * PQ);
        for (int64_t h = 0; h < s.H; ++h) {
          for (int64_t r = 0; r < R; ++r) rows[r] = plane + (h + r) * pad.pitch();
          correlate_row<S>(dx + nc * HW + h * s.W, s.W, rows, R, rotated, 0.0f, kl > 0);
        }
      }
    }
  }
}

// dw[k, r, s]: for each image and r, one pass over the dy rows feeds all S taps of row r (dy
// lanes past Q are zeros, so the padded plane's neighbouring values they meet add nothing);
// each pass's 16 lanes per tap are reduced, in a fixed order, into a double sum.
template <int S>
void fast_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw) {
  const int64_t Kg = s.K / s.groups, HW = s.H * s.W, PQ = s.P * s.Q, R = s.R;
#pragma omp parallel
  {
    PaddedPlane pad(s.H, s.W, s.pad_h, s.pad_w);
#pragma omp for schedule(static)
    for (int64_t k = 0; k < s.K; ++k) {
      double sum[kMaxFastR * S] = {};
      for (int64_t n = 0; n < s.N; ++n) {
        const float* dyk = dy + (n * s.K + k) * PQ;
        const float* plane = pad.fill(x + (n * s.C + k / Kg) * HW);
        for (int64_t r = 0; r < R; ++r) {
          __m512 acc[S];
          for (int t = 0; t < S; ++t) acc[t] = _mm512_setzero_ps();
          for (int64_t p = 0; p < s.P; ++p) {
            const float* drow = dyk + p * s.Q;
            const float* xrow = plane + (p + r) * pad.pitch();
            for (int64_t q0 = 0; q0 < s.Q; q0 += 16) {
              const __m512 d = _mm512_maskz_loadu_ps(first_lanes(s.Q - q0), drow + q0);
              for (int t = 0; t < S; ++t) acc[t] = _mm512_fmadd_ps(d, _mm512_loadu_ps(xrow + q0 + t), acc[t]);
            }
          }
          for (int t = 0; t < S; ++t) sum[r * S + t] += _mm512_reduce_add_ps(acc[t]);
        }
      }
      for (int64_t i = 0; i < R * S; ++i) dw[k * R * S + i] = static_cast<float>(sum[i]);
    }
  }
}

// Unit stride and dilation, padding < the kernel (so the data-grad's R - 1 - p is >= 0 too).
bool fast(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 && s.dil_w == 1 && s.R <= kMaxFastR &&
         (s.S == 3 || s.S == 5 || s.S == 7) && s.pad_h < s.R && s.pad_w < s.S;
}

// The instance of a pass for the layer's S (fast() admits 3, 5 and 7).
template <class F>
F by_s(const Conv2dShape& s, F s3, F s5, F s7) {
  return s.S == 3 ? s3 : s.S == 5 ? s5 : s7;
}
#endif

}  // namespace

void channelwise_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
#if defined(__AVX512F__)
  if (fast(s)) return by_s(s, fast_forward<3>, fast_forward<5>, fast_forward<7>)(s, x, w, b, y);
#endif
  generic_forward(s, x, w, b, y);
}

void channelwise_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
#if defined(__AVX512F__)
  if (fast(s)) return by_s(s, fast_backward_data<3>, fast_backward_data<5>, fast_backward_data<7>)(s, dy, w, dx);
#endif
  generic_backward_data(s, dy, w, dx);
}

void channelwise_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw) {
#if defined(__AVX512F__)
  if (fast(s)) return by_s(s, fast_backward_weight<3>, fast_backward_weight<5>, fast_backward_weight<7>)(s, dy, x, dw);
#endif
  generic_backward_weight(s, dy, x, dw);
}

}  // namespace fastopt::cpu::FASTOPT_ISA

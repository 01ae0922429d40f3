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
// output written once. With unit stride and dilation and a square 3x3, 5x5 or 7x7 filter, the
// AVX-512 copy does that, and keeps the arithmetic under the memory time:
// - forward: blocks of 4 output rows x 64 columns accumulate in 16 vector registers; each input
//   vector, loaded straight from the plane with its lanes masked to it (no padded copy), feeds
//   every row of the block that uses it: (4 + K - 1) K loads per 4 K^2 FMAs;
// - data-grad: the same correlation of dy with the filter rotated by 180 degrees (padding
//   K - 1 - p);
// - weight-grad: each image's (x, dy) plane pair in memory order, each x vector feeding the taps
//   of up to 4 filter rows; the images' partial sums are added in image order.
// dw3x3 64@56, N = 32, against about 0.95 ms to copy x: forward 1.73 -> 1.20 ms, data-grad
// 1.83 -> 0.96, weight-grad 2.57 -> 1.75, from a row at a time through a zero-padded copy of the
// plane. Other shapes and ISA copies take row AXPYs and dots.
// bf16 (the AVX-512 kernels): planes are read as bf16 and widened in registers, outputs rounded
// once at their store (dx of a channel multiplier > 1 sums in an fp32 plane first), so the bytes
// halve and the sums are the fp32 kernel's: dw3x3 64@56 bf16 forward 1.5 ms, data-grad 1.4,
// weight-grad 1.1 (bench/results/cpu-conv2d-bf16-2026-12-07d).
// Launch: OpenMP over output planes (forward, data-grad) or (image, filter) plane pairs
// (weight-grad); every output is a sum in a fixed order, so the bits do not depend on the thread
// count.
#include "conv2d_channelwise.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "gemm_bf16.h"

namespace fastopt::cpu::FASTOPT_ISA {
namespace {

// row[w0 + q*step] += a * src[q] for q < nq where that index lies in [0, n).
inline void axpy_to_row(float* __restrict row, int64_t n, float a, const float* __restrict src, int64_t nq, int64_t w0,
                        int64_t step) {
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
          axpy_from_row(out + p * s.Q, s.Q, w[(k * s.R + r) * s.S + sc], plane + h * s.W, s.W, sc * s.dil_w - s.pad_w,
                        s.stride_w);
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

void generic_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
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
    store_grad(dw + krs, static_cast<float>(acc), accumulate);
  }
}

#if defined(__AVX512F__)
using gemm::first_lanes;
using gemm::lanes_between;

// Rows [p, p + RB) of a K x K correlation of the H x W plane `in`, padded by (ph, pw) in place,
// lanes [q0, q0 + 16 NV) of each output row cut at Q:
//   out[p'][q] = (accumulate ? out[p'][q] : init) + sum over r, s < K of taps[r K + s] in[p' - ph + r][q - pw + s],
// in r, s ascending (taps outside the plane add nothing). Each input vector is loaded once per
// block and feeds the RB output rows that use it: (RB + K - 1) K loads per RB K^2 FMAs, where a
// row at a time took one load per FMA. Loads are masked to the plane (masks[s][v]), so there is
// no zero-padded copy to build: building one cost a quarter of the forward.
template <int K, int RB, int NV, class TO, class TI>
inline __attribute__((always_inline)) void correlate_block(TO* out, int64_t Q, int64_t p, int64_t q0, const TI* in,
                                                           int64_t H, int64_t W, int64_t ph, int64_t pw,
                                                           const __mmask16 (*masks)[4], const float* taps, float init,
                                                           bool accumulate) {
  __m512 acc[RB][NV];
#pragma GCC unroll 8
  for (int rb = 0; rb < RB; ++rb)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[rb][v] = accumulate ? gemm::load16(first_lanes(Q - q0 - 16 * v), out + (p + rb) * Q + q0 + 16 * v)
                              : _mm512_set1_ps(init);
#pragma GCC unroll 16
  for (int i = 0; i < RB + K - 1; ++i) {
    const int64_t h = p - ph + i;
    if (h < 0 || h >= H) continue;
    const TI* src = in + h * W + q0 - pw;
#pragma GCC unroll 8
    for (int s = 0; s < K; ++s) {
      __m512 xv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) xv[v] = gemm::load16(masks[s][v], src + s + 16 * v);
#pragma GCC unroll 8
      for (int rb = 0; rb < RB; ++rb) {
        const int r = i - rb;
        if (r < 0 || r >= K) continue;
        const __m512 wv = _mm512_set1_ps(taps[r * K + s]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[rb][v] = _mm512_fmadd_ps(wv, xv[v], acc[rb][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int rb = 0; rb < RB; ++rb)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      gemm::store16(first_lanes(Q - q0 - 16 * v), out + (p + rb) * Q + q0 + 16 * v, acc[rb][v]);
}

// One 16 NV-lane column chunk of every output row: blocks of 4 rows (16 of the 32 vector
// registers accumulate at NV = 4), then the rows left one at a time.
template <int K, int NV, class TO, class TI>
void correlate_chunk(TO* out, int64_t P, int64_t Q, int64_t q0, const TI* in, int64_t H, int64_t W, int64_t ph,
                     int64_t pw, const float* taps, float init, bool accumulate) {
  constexpr int64_t kRows = 4;
  __mmask16 masks[K][4];
  for (int s = 0; s < K; ++s)
    for (int v = 0; v < NV; ++v) masks[s][v] = lanes_between(pw - s - q0 - 16 * v, W + pw - s - q0 - 16 * v);
  int64_t p = 0;
  for (; p + kRows <= P; p += kRows)
    correlate_block<K, kRows, NV>(out, Q, p, q0, in, H, W, ph, pw, masks, taps, init, accumulate);
  for (; p < P; ++p) correlate_block<K, 1, NV>(out, Q, p, q0, in, H, W, ph, pw, masks, taps, init, accumulate);
}

// A P x Q output plane in 64-column chunks.
template <int K, class TO, class TI>
void correlate_plane(TO* out, int64_t P, int64_t Q, const TI* in, int64_t H, int64_t W, int64_t ph, int64_t pw,
                     const float* taps, float init, bool accumulate) {
  for (int64_t q0 = 0; q0 < Q; q0 += 64) {
    switch (std::min<int64_t>(4, (Q - q0 + 15) / 16)) {
      case 1: correlate_chunk<K, 1>(out, P, Q, q0, in, H, W, ph, pw, taps, init, accumulate); break;
      case 2: correlate_chunk<K, 2>(out, P, Q, q0, in, H, W, ph, pw, taps, init, accumulate); break;
      case 3: correlate_chunk<K, 3>(out, P, Q, q0, in, H, W, ph, pw, taps, init, accumulate); break;
      default: correlate_chunk<K, 4>(out, P, Q, q0, in, H, W, ph, pw, taps, init, accumulate); break;
    }
  }
}

// The passes below read bf16 planes as they lie (widened in registers) and round each output
// once at its store: with whole tensors widened to fp32 first, bf16 took four times fp32's time
// (a 25 MB fresh copy of x per call, its page faults, and a second pass over y). The sums are
// the fp32 kernel's, in the same order.
template <int K, class T>
void fast_forward(const Conv2dShape& s, const T* x, const T* w, const T* b, T* y) {
  const int64_t Kg = s.K / s.groups, HW = s.H * s.W, PQ = s.P * s.Q;
#pragma omp parallel for schedule(static)
  for (int64_t nk = 0; nk < s.N * s.K; ++nk) {
    const int64_t n = nk / s.K, k = nk % s.K;
    float taps[K * K];
    for (int i = 0; i < K * K; ++i) taps[i] = to_float(w[k * K * K + i]);
    correlate_plane<K>(y + nk * PQ, s.P, s.Q, x + (n * s.C + k / Kg) * HW, s.H, s.W, s.pad_h, s.pad_w, taps,
                       b ? to_float(b[k]) : 0.0f, false);
  }
}

// dx = dy correlated with each filter rotated by 180 degrees, padding K - 1 - ph and K - 1 - pw,
// summed over the plane's Kg filters in order: in place for fp32 and for one filter per channel,
// else in an fp32 plane rounded once.
template <int K, class T>
void fast_backward_data(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  const int64_t Kg = s.K / s.groups, HW = s.H * s.W, PQ = s.P * s.Q;
  const bool in_place = std::is_same_v<T, float> || Kg == 1;
#pragma omp parallel
  {
    std::vector<float> sum(in_place ? 0 : static_cast<size_t>(HW));
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
      const int64_t n = nc / s.C, c = nc % s.C;
      float rotated[K * K];
      for (int64_t kl = 0; kl < Kg; ++kl) {
        const int64_t k = c * Kg + kl;
        for (int i = 0; i < K * K; ++i) rotated[i] = to_float(w[k * K * K + K * K - 1 - i]);
        const T* plane = dy + (n * s.K + k) * PQ;
        const int64_t ph = K - 1 - s.pad_h, pw = K - 1 - s.pad_w;
        if (in_place) correlate_plane<K>(dx + nc * HW, s.H, s.W, plane, s.P, s.Q, ph, pw, rotated, 0.0f, kl > 0);
        else correlate_plane<K>(sum.data(), s.H, s.W, plane, s.P, s.Q, ph, pw, rotated, 0.0f, kl > 0);
      }
      if (!in_place) from_float_n(sum.data(), dx + nc * HW, HW);
    }
  }
}

// sum[(r0 + g) K + t] += sum over p, q of dy[p][q] x[p - ph + r0 + g][q - pw + t] for the G filter
// rows r0 + g < K: each x row h is loaded once per shift t and meets the dy rows p = h + ph - r of
// the group, so K + G loads feed G K FMAs (a filter row at a time took K + 1 loads per K). Both
// operands are masked (x to the plane and, like dy, to the Q columns), so every lane past an edge
// adds an exact zero, even next to an Inf.
template <int K, int G, class T>
void weight_grad_rows(const T* dy, int64_t P, int64_t Q, const T* x, int64_t H, int64_t W, int64_t ph, int64_t pw,
                      int64_t r0, double* sum) {
  __m512 acc[G][K];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
    for (int t = 0; t < K; ++t) acc[g][t] = _mm512_setzero_ps();
  const int64_t h_lo = std::max<int64_t>(0, r0 - ph), h_hi = std::min<int64_t>(H, P - 1 - ph + r0 + G);
  for (int64_t q0 = 0; q0 < Q; q0 += 16) {
    const __mmask16 m = first_lanes(Q - q0);
    __mmask16 mx[K];
#pragma GCC unroll 8
    for (int t = 0; t < K; ++t) mx[t] = m & lanes_between(pw - t - q0, W + pw - t - q0);
    for (int64_t h = h_lo; h < h_hi; ++h) {
      __m512 xv[K];
#pragma GCC unroll 8
      for (int t = 0; t < K; ++t) xv[t] = gemm::load16(mx[t], x + h * W + q0 - pw + t);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        const int64_t p = h + ph - r0 - g;
        if (r0 + g >= K || p < 0 || p >= P) continue;
        const __m512 d = gemm::load16(m, dy + p * Q + q0);
#pragma GCC unroll 8
        for (int t = 0; t < K; ++t) acc[g][t] = _mm512_fmadd_ps(d, xv[t], acc[g][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
    for (int t = 0; t < K; ++t)
      if (r0 + g < K) sum[(r0 + g) * K + t] += _mm512_reduce_add_ps(acc[g][t]);
}

// dw[k, r, s] = the sum over images, in order, of each image's dy plane against its x plane (G
// filter rows at a time: G K accumulators and K x vectors stay in registers). The images' sums go
// to a buffer, and the planes are taken in memory order as in the forward: a filter at a time
// jumped C planes between images and ran at half the speed. The buffer holds a batch of images
// (kPartialSums doubles, L2-sized), and each batch is added to the totals image by image, so the
// bits depend on neither the thread count nor the batch size.
constexpr int64_t kPartialSums = int64_t{1} << 16;

template <int K, class T>
void fast_backward_weight(const Conv2dShape& s, const T* dy, const T* x, float* dw, bool accumulate) {
  constexpr int G = K == 5 ? 4 : 3;  // G K + K + 1 vector registers of 32
  const int64_t Kg = s.K / s.groups, HW = s.H * s.W, PQ = s.P * s.Q, per_image = s.K * K * K;
  const int64_t batch = std::clamp<int64_t>(kPartialSums / per_image, 1, s.N);
  std::vector<double> part(static_cast<size_t>(batch * per_image)), sum(static_cast<size_t>(per_image), 0.0);
  for (int64_t n0 = 0; n0 < s.N; n0 += batch) {
    const int64_t nb = std::min(batch, s.N - n0);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nb * s.K; ++i) {
      const int64_t n = n0 + i / s.K, k = i % s.K;
      double* ps = part.data() + i * K * K;
      std::fill(ps, ps + K * K, 0.0);
      for (int64_t r0 = 0; r0 < K; r0 += G)
        weight_grad_rows<K, G>(dy + (n * s.K + k) * PQ, s.P, s.Q, x + (n * s.C + k / Kg) * HW, s.H, s.W, s.pad_h,
                               s.pad_w, r0, ps);
    }
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < per_image; ++j)
      for (int64_t b = 0; b < nb; ++b) sum[j] += part[b * per_image + j];
  }
  for (int64_t j = 0; j < per_image; ++j) store_grad(dw + j, static_cast<float>(sum[j]), accumulate);
}

// Square 3x3, 5x5 and 7x7 filters, unit stride and dilation, padding < the kernel (so the
// data-grad's K - 1 - p is >= 0 too).
bool fast(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 && s.dil_w == 1 && s.R == s.S &&
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
  if (fast(s)) return by_s(s, fast_forward<3, float>, fast_forward<5, float>, fast_forward<7, float>)(s, x, w, b, y);
#endif
  generic_forward(s, x, w, b, y);
}

void channelwise_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
#if defined(__AVX512F__)
  if (fast(s))
    return by_s(s, fast_backward_data<3, float>, fast_backward_data<5, float>, fast_backward_data<7, float>)(s, dy, w,
                                                                                                             dx);
#endif
  generic_backward_data(s, dy, w, dx);
}

void channelwise_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
#if defined(__AVX512F__)
  if (fast(s))
    return by_s(s, fast_backward_weight<3, float>, fast_backward_weight<5, float>,
                fast_backward_weight<7, float>)(s, dy, x, dw, accumulate);
#endif
  generic_backward_weight(s, dy, x, dw, accumulate);
}

#if defined(__AVX512F__)
bool channelwise_planes(const Conv2dShape& s) { return fast(s); }

void channelwise_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y) {
  by_s(s, fast_forward<3, bf16>, fast_forward<5, bf16>, fast_forward<7, bf16>)(s, x, w, b, y);
}

void channelwise_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx) {
  by_s(s, fast_backward_data<3, bf16>, fast_backward_data<5, bf16>, fast_backward_data<7, bf16>)(s, dy, w, dx);
}

void channelwise_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate) {
  by_s(s, fast_backward_weight<3, bf16>, fast_backward_weight<5, bf16>, fast_backward_weight<7, bf16>)(s, dy, x, dw,
                                                                                                       accumulate);
}
#endif

}  // namespace fastopt::cpu::FASTOPT_ISA

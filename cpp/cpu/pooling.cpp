// Max pooling (with int32 argmax indices), average pooling and global average pooling on the CPU,
// forward and backward (window rules and the backward gathers: fastopt/pooling.h). Average
// pooling moves 4 B per input read and 4 per output written each way (overlapping windows
// re-read from cache); it takes the generic window loops only (no network here leans on it).
//
// Traffic: max pool forward reads x once (overlapping windows re-read it from cache) and writes
// 8 B per output (value + index); backward reads dy and indices (8 B per output, re-read from
// cache for overlapping windows) and writes dx, 4 B per input. Global average pool: forward
// 4 B/element read, backward 4 B/element written.
//
// Shape: OpenMP over output rows (forward: plane x p) or input rows (backward: plane x h), so
// that a few large planes are split as well as many small ones. The backward gathers per input
// element over the outputs whose windows cover it, in (p, q) order (a scatter within the row when
// windows do not overlap): deterministic, no atomics, and bitwise the same as the CUDA kernel. The
// column ranges of that gather are computed once per call. 2x2 windows at stride 2 (the usual
// downsampling) take their own loops both ways, 5x and 9x faster than the generic ones at
// 128x32x32x32 (forward 2.4 -> 0.48 ms, backward 4.9 -> 0.53 ms, on 2 cores: ~50 GB/s).
// Max pooling is templated on the storage type: bf16 runs the same loops on 2-byte elements
// (half the traffic), compares in fp32 (exact) and rounds dx sums once.
// NHWC max pooling (x (N, H, W, C), y and indices (N, P, Q, C), the same h*W + w indices): the
// channels of a pixel are contiguous, so every window position is one contiguous run compared lane
// by lane against a block of running maxima; same traffic as NCHW. OpenMP over (image, output
// row) forward and (image, input row) backward, vectorized over channels; the backward is the
// NCHW gather with a select per lane (adding 0 to a sum that starts at +0 changes no bits), so
// both layouts give the same values, indices and dx bits; an input one window covers (all of
// them when stride >= kernel) takes 0 + dy or 0 directly, without the block of sums (fp32 2x2/2
// backward at 32x64x56x56, one thread: 6.0 -> 1.6 ms, NCHW's 2.7).
// Global average pool sums a plane in 8 double lanes folded in a fixed order, so every ISA (and
// thread count) gives the same bits.
#include <algorithm>
#include <vector>

#include "fastopt/pooling.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* indices);
                     void max_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, int32_t* indices);
                     void max_pool2d_backward(const Pool2dShape& s, const bf16* dy, const int32_t* indices, bf16* dx);
                     void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* indices, float* dx);
                     void max_pool2d_forward_nhwc(const Pool2dShape& s, int64_t channels, const float* x, float* y,
                                                  int32_t* indices);
                     void max_pool2d_forward_nhwc(const Pool2dShape& s, int64_t channels, const bf16* x, bf16* y,
                                                  int32_t* indices);
                     void max_pool2d_backward_nhwc(const Pool2dShape& s, int64_t channels, const float* dy,
                                                   const int32_t* indices, float* dx);
                     void max_pool2d_backward_nhwc(const Pool2dShape& s, int64_t channels, const bf16* dy,
                                                   const int32_t* indices, bf16* dx);
                     void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw);
                     void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw);
                     void global_avg_pool_forward(const bf16* x, bf16* y, int64_t planes, int64_t hw);
                     void global_avg_pool_backward(const bf16* dy, bf16* dx, int64_t planes, int64_t hw);
                     void avg_pool2d_forward(const Pool2dShape& s, const float* x, float* y, bool include_pad);
                     void avg_pool2d_backward(const Pool2dShape& s, const float* dy, float* dx, bool include_pad);
                     void avg_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, bool include_pad);
                     void avg_pool2d_backward(const Pool2dShape& s, const bf16* dy, bf16* dx, bool include_pad);)

namespace FASTOPT_ISA {

namespace {

// Outputs [lo, hi) along one axis whose windows lie wholly inside [0, size).
void interior(int out, int stride, int pad, int k, int size, int& lo, int& hi) {
  lo = 0;
  while (lo < out && lo * stride - pad < 0) ++lo;
  hi = out;
  while (hi > lo && (hi - 1) * stride - pad + k > size) --hi;
}

// 2x2 windows at stride 2 without padding: every window is interior, and the four candidates of
// output q are two interleaved pairs of two rows (loads that vectorize as de-interleaving
// shuffles, where the generic loop below reads at stride 2), taken in row-major order.
template <class T>
void max_pool2d_forward_2x2(const Pool2dShape& s, const T* x, T* y, int32_t* indices) {
  const int64_t rows = s.planes * s.P;
  const int64_t in_plane = static_cast<int64_t>(s.H) * s.W;
  const int W = s.W, Q = s.Q;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / s.P;
    const int p = static_cast<int>(r - plane * s.P);
    const T* __restrict x0 = x + plane * in_plane + static_cast<int64_t>(2 * p) * W;
    const T* __restrict x1 = x0 + W;
    T* __restrict yr = y + r * Q;
    int32_t* __restrict ir = indices + r * Q;
    const int32_t f0 = 2 * p * W, f1 = f0 + W;
    // 16 lanes for bf16 too: at 32 (one zmm of bf16) the rows of a 56x56 plane (Q = 28) missed the
    // vector loop and bf16 took 2.5x fp32's time; now about fp32's.
#pragma omp simd simdlen(16)
    for (int q = 0; q < Q; ++q) {
      float best = to_float(x0[2 * q]);
      int32_t at = f0 + 2 * q;
      const float b = to_float(x0[2 * q + 1]), c = to_float(x1[2 * q]), d = to_float(x1[2 * q + 1]);
      if (max_pool_takes(b, best)) {
        best = b;
        at = f0 + 2 * q + 1;
      }
      if (max_pool_takes(c, best)) {
        best = c;
        at = f1 + 2 * q;
      }
      if (max_pool_takes(d, best)) {
        best = d;
        at = f1 + 2 * q + 1;
      }
      yr[q] = from_float<T>(best);  // one of the inputs: exact
      ir[q] = at;
    }
  }
}

// Interior windows are scanned with the window loops outside and q innermost: each q still sees
// its elements in row-major window order (so ties and NaNs resolve exactly as max_pool_window
// does), and the select-based update vectorizes; edge windows take the clipped generic path.
template <class T>
void max_pool_fwd(const Pool2dShape& s, const T* x, T* y, int32_t* indices) {
  if (s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2 && s.ph == 0 && s.pw == 0)
    return max_pool2d_forward_2x2(s, x, y, indices);
  const int64_t rows = s.planes * s.P;
  const int64_t in_plane = static_cast<int64_t>(s.H) * s.W;
  int qa, qb;
  interior(s.Q, s.sw, s.pw, s.kw, s.W, qa, qb);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / s.P;
    const int p = static_cast<int>(r - plane * s.P);
    const T* xp = x + plane * in_plane;
    T* __restrict yr = y + r * s.Q;
    int32_t* __restrict ir = indices + r * s.Q;
    const int h0 = p * s.sh - s.ph;
    const bool rows_inside = h0 >= 0 && h0 + s.kh <= s.H;
    const int a = rows_inside ? qa : s.Q, b = rows_inside ? qb : s.Q;
    auto edge = [&](int q) {
      float best;
      max_pool_window(xp, s, p, q, &best, ir + q);
      yr[q] = from_float<T>(best);
    };
    for (int q = 0; q < a; ++q) edge(q);
    for (int q = b; q < s.Q; ++q) edge(q);
    if (a >= b) continue;
    const int sw = s.sw, c0 = -s.pw;
    for (int q = a; q < b; ++q) {
      const int32_t i = h0 * s.W + q * sw + c0;
      yr[q] = xp[i];
      ir[q] = i;
    }
    for (int dh = 0; dh < s.kh; ++dh) {
      const int32_t row = (h0 + dh) * s.W;
      for (int dw = 0; dw < s.kw; ++dw) {
        if (dh == 0 && dw == 0) continue;
        const T* xr = xp + row + c0 + dw;
#pragma omp simd
        for (int q = a; q < b; ++q) {
          const float v = to_float(xr[q * sw]);
          const bool take = max_pool_takes(v, to_float(yr[q]));
          yr[q] = take ? xr[q * sw] : yr[q];
          ir[q] = take ? row + c0 + dw + q * sw : ir[q];
        }
      }
    }
  }
}

// Non-overlapping windows (stride >= kernel) cover each input at most once, so the gather
// reduces to a scatter over output rows: a task zeroes the input rows between its window and the
// next one's, then each output adds its dy at its index if the index lies in its own window. Same
// sums (0 + dy) as the gather, one pass over dy and the indices.
template <class T>
void max_pool2d_backward_disjoint(const Pool2dShape& s, const T* dy, const int32_t* indices, T* dx) {
  const int64_t rows = s.planes * s.P;
  const int64_t in_plane = static_cast<int64_t>(s.H) * s.W;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / s.P;
    const int p = static_cast<int>(r - plane * s.P);
    const int h0 = p * s.sh - s.ph;
    const int zb = p == 0 ? 0 : h0, ze = p == s.P - 1 ? s.H : std::min(h0 + s.sh, s.H);
    T* dxp = dx + plane * in_plane;
    std::fill(dxp + static_cast<int64_t>(zb) * s.W, dxp + static_cast<int64_t>(ze) * s.W, from_float<T>(0.0f));
    const T* dyr = dy + r * s.Q;
    const int32_t* ir = indices + r * s.Q;
    for (int q = 0; q < s.Q; ++q) {
      const int32_t i = ir[q], w0 = q * s.sw - s.pw;
      const int wa = std::max(w0, 0), wb = std::min(w0 + s.kw, s.W);
      // Which window row holds the index is a coin toss per output: tested without branches
      // (a branch per row cost a misprediction per output, 3.4x torch's time).
      bool hit = false;
      for (int dh = 0; dh < s.kh; ++dh) {
        const int h = h0 + dh;
        const int32_t w = i - h * s.W;
        hit |= (h >= 0) & (h < s.H) & (w >= wa) & (w < wb);
      }
      if (hit) dxp[i] = from_float<T>(to_float(dxp[i]) + to_float(dyr[q]));
    }
  }
}

// 2x2 windows at stride 2 without padding (the common downsampling pool) write each input once:
// the four elements of output q's window take 0 + dy[q] where the index points and 0 elsewhere,
// and the row and column that odd sizes leave uncovered take 0. Selects over interleaved stores,
// which vectorize: the same sums as the gather, without its zero fill and scattered writes.
template <class T>
void max_pool2d_backward_2x2(const Pool2dShape& s, const T* dy, const int32_t* indices, T* dx) {
  const int64_t rows = s.planes * s.P;
  const int64_t in_plane = static_cast<int64_t>(s.H) * s.W;
  const int W = s.W, Q = s.Q;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / s.P;
    const int p = static_cast<int>(r - plane * s.P);
    T* dxp = dx + plane * in_plane;
    T* __restrict d0 = dxp + static_cast<int64_t>(2 * p) * W;
    T* __restrict d1 = d0 + W;
    const T* __restrict dyr = dy + r * Q;
    const int32_t* __restrict ir = indices + r * Q;
    const int32_t f0 = 2 * p * W, f1 = f0 + W;
#pragma omp simd
    for (int q = 0; q < Q; ++q) {
      const int32_t i = ir[q];
      const float v = 0.0f + to_float(dyr[q]);
      d0[2 * q] = from_float<T>(i == f0 + 2 * q ? v : 0.0f);
      d0[2 * q + 1] = from_float<T>(i == f0 + 2 * q + 1 ? v : 0.0f);
      d1[2 * q] = from_float<T>(i == f1 + 2 * q ? v : 0.0f);
      d1[2 * q + 1] = from_float<T>(i == f1 + 2 * q + 1 ? v : 0.0f);
    }
    if (W > 2 * Q) d0[W - 1] = d1[W - 1] = from_float<T>(0.0f);
    if (p == s.P - 1) std::fill(dxp + static_cast<int64_t>(2 * s.P) * W, dxp + in_plane, from_float<T>(0.0f));
  }
}

// The gather backward of overlapping windows, row by row of dx: body(r, plane, h, p0, p1, q0, q1)
// gets the output rows [p0, p1) covering input row h and, per input column w, the output columns
// [q0[w], q1[w]) (pooling.h's cover_begin/cover_end); rows run in parallel, each written once.
template <class Body>
void for_each_dx_row(const Pool2dShape& s, Body body) {
  std::vector<int> q0(s.W), q1(s.W);
  for (int w = 0; w < s.W; ++w) {
    q0[w] = cover_begin(w, s.sw, s.pw, s.kw);
    q1[w] = cover_end(w, s.sw, s.pw, s.Q);
  }
  const int64_t rows = s.planes * s.H;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / s.H;
    const int h = static_cast<int>(r - plane * s.H);
    body(r, plane, h, cover_begin(h, s.sh, s.ph, s.kh), cover_end(h, s.sh, s.ph, s.P), q0.data(), q1.data());
  }
}

template <class T>
void max_pool_bwd(const Pool2dShape& s, const T* dy, const int32_t* indices, T* dx) {
  if (s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2 && s.ph == 0 && s.pw == 0)
    return max_pool2d_backward_2x2(s, dy, indices, dx);
  if (s.sh >= s.kh && s.sw >= s.kw) return max_pool2d_backward_disjoint(s, dy, indices, dx);
  for_each_dx_row(s, [&](int64_t r, int64_t plane, int h, int p0, int p1, const int* q0, const int* q1) {
    const int64_t out_plane = static_cast<int64_t>(s.P) * s.Q;
    const T* dyp = dy + plane * out_plane;
    const int32_t* ip = indices + plane * out_plane;
    T* dxr = dx + r * s.W;
    for (int w = 0; w < s.W; ++w)
      dxr[w] = from_float<T>(max_pool_gather(dyp, ip, s.Q, p0, p1, q0[w], q1[w], h * s.W + w));
  });
}

}  // namespace

void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* indices) {
  max_pool_fwd(s, x, y, indices);
}
void max_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, int32_t* indices) {
  max_pool_fwd(s, x, y, indices);
}
void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* indices, float* dx) {
  max_pool_bwd(s, dy, indices, dx);
}
void max_pool2d_backward(const Pool2dShape& s, const bf16* dy, const int32_t* indices, bf16* dx) {
  max_pool_bwd(s, dy, indices, dx);
}

namespace {

// Channels per block of running maxima (fp32 values and indices on the stack: a few zmm wide).
constexpr int kChannelBlock = 64;

// Each window is scanned in max_pool_window's row-major order, starting from its first element,
// so ties and NaNs resolve exactly as in NCHW; lanes are channels.
template <class T>
void max_pool_fwd_nhwc(const Pool2dShape& s, int64_t C, const T* x, T* y, int32_t* indices) {
  if (C == 0) return;
  const int64_t rows = s.planes / C * s.P;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / s.P;
    const int p = static_cast<int>(r - n * s.P);
    const T* xn = x + n * s.H * s.W * C;
    const int h0 = window_begin(p, s.sh, s.ph), h1 = window_end(p, s.sh, s.ph, s.kh, s.H);
    for (int q = 0; q < s.Q; ++q) {
      const int w0 = window_begin(q, s.sw, s.pw), w1 = window_end(q, s.sw, s.pw, s.kw, s.W);
      const int64_t out = (r * s.Q + q) * C;
      for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
        const int len = static_cast<int>(std::min<int64_t>(kChannelBlock, C - c0));
        float best[kChannelBlock];
        int32_t at[kChannelBlock];
        const int32_t first = h0 * s.W + w0;
        const T* xf = xn + first * C + c0;
#pragma omp simd
        for (int c = 0; c < len; ++c) {
          best[c] = to_float(xf[c]);
          at[c] = first;
        }
        for (int h = h0; h < h1; ++h)
          for (int w = w0; w < w1; ++w) {
            const int32_t i = h * s.W + w;
            const T* __restrict xi = xn + i * C + c0;
#pragma omp simd
            for (int c = 0; c < len; ++c) {
              const float v = to_float(xi[c]);
              const bool take = max_pool_takes(v, best[c]);
              best[c] = take ? v : best[c];
              at[c] = take ? i : at[c];
            }
          }
        T* __restrict yo = y + out + c0;
        int32_t* __restrict io = indices + out + c0;
#pragma omp simd
        for (int c = 0; c < len; ++c) {
          yo[c] = from_float<T>(best[c]);  // one of the inputs: exact
          io[c] = at[c];
        }
      }
    }
  }
}

template <class T>
void max_pool_bwd_nhwc(const Pool2dShape& s, int64_t C, const T* dy, const int32_t* indices, T* dx) {
  if (C == 0) return;
  Pool2dShape images = s;
  images.planes = s.planes / C;
  const int64_t out_image = static_cast<int64_t>(s.P) * s.Q * C;
  for_each_dx_row(images, [&](int64_t r, int64_t n, int h, int p0, int p1, const int* q0, const int* q1) {
    const T* dyn = dy + n * out_image;
    const int32_t* in = indices + n * out_image;
    for (int w = 0; w < s.W; ++w) {
      const int32_t flat = h * s.W + w;
      T* __restrict dxw = dx + (r * s.W + w) * C;
      if (p1 - p0 == 1 && q1[w] - q0[w] == 1) {  // one window covers it (always when stride >= kernel)
        const int64_t o = (static_cast<int64_t>(p0) * s.Q + q0[w]) * C;
        const T* __restrict g = dyn + o;
        const int32_t* __restrict ix = in + o;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dxw[c] = from_float<T>(ix[c] == flat ? 0.0f + to_float(g[c]) : 0.0f);
        continue;
      }
      for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
        const int len = static_cast<int>(std::min<int64_t>(kChannelBlock, C - c0));
        float acc[kChannelBlock] = {};
        for (int p = p0; p < p1; ++p)
          for (int q = q0[w]; q < q1[w]; ++q) {
            const int64_t o = (static_cast<int64_t>(p) * s.Q + q) * C + c0;
            const T* __restrict g = dyn + o;
            const int32_t* __restrict ix = in + o;
#pragma omp simd
            for (int c = 0; c < len; ++c) {
              const float v = to_float(g[c]);
              acc[c] += ix[c] == flat ? v : 0.0f;
            }
          }
#pragma omp simd
        for (int c = 0; c < len; ++c) dxw[c0 + c] = from_float<T>(acc[c]);
      }
    }
  });
}

}  // namespace

void max_pool2d_forward_nhwc(const Pool2dShape& s, int64_t channels, const float* x, float* y, int32_t* indices) {
  max_pool_fwd_nhwc(s, channels, x, y, indices);
}
void max_pool2d_forward_nhwc(const Pool2dShape& s, int64_t channels, const bf16* x, bf16* y, int32_t* indices) {
  max_pool_fwd_nhwc(s, channels, x, y, indices);
}
void max_pool2d_backward_nhwc(const Pool2dShape& s, int64_t channels, const float* dy, const int32_t* indices,
                              float* dx) {
  max_pool_bwd_nhwc(s, channels, dy, indices, dx);
}
void max_pool2d_backward_nhwc(const Pool2dShape& s, int64_t channels, const bf16* dy, const int32_t* indices,
                              bf16* dx) {
  max_pool_bwd_nhwc(s, channels, dy, indices, dx);
}


namespace {

// T: float or bf16 (the mean rounded once from the double sum through float; dx once).
template <class T>
void global_avg_fwd(const T* x, T* y, int64_t planes, int64_t hw) {
  constexpr int kLanes = 8;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < planes; ++c) {
    const T* __restrict xc = x + c * hw;
    double lane[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= hw; j += kLanes)
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<double>(to_float(xc[j + l]));
    for (int l = 0; j < hw; ++j, ++l) lane[l] += static_cast<double>(to_float(xc[j]));
    const double sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    y[c] = from_float<T>(static_cast<float>(sum / static_cast<double>(hw)));
  }
}

template <class T>
void global_avg_bwd(const T* dy, T* dx, int64_t planes, int64_t hw) {
  const float count = static_cast<float>(hw);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < planes; ++c) {
    const T g = from_float<T>(to_float(dy[c]) / count);
    T* __restrict dxc = dx + c * hw;
#pragma omp simd
    for (int64_t j = 0; j < hw; ++j) dxc[j] = g;
  }
}

}  // namespace

void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw) { global_avg_fwd(x, y, planes, hw); }
void global_avg_pool_forward(const bf16* x, bf16* y, int64_t planes, int64_t hw) { global_avg_fwd(x, y, planes, hw); }
void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw) {
  global_avg_bwd(dy, dx, planes, hw);
}
void global_avg_pool_backward(const bf16* dy, bf16* dx, int64_t planes, int64_t hw) {
  global_avg_bwd(dy, dx, planes, hw);
}

// Average pooling: the window sums and the backward gather are the shared per-element functions
// (pooling.h), one output row (forward) or input row (backward) per task: the same bits as CUDA.
namespace {

template <class T>
void avg_fwd(const Pool2dShape& s, const T* x, T* y, bool include_pad) {
  const int64_t rows = s.planes * s.P;
  const int64_t in_plane = static_cast<int64_t>(s.H) * s.W;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / s.P;
    const int p = static_cast<int>(r - plane * s.P);
    const T* xp = x + plane * in_plane;
    for (int q = 0; q < s.Q; ++q) y[r * s.Q + q] = from_float<T>(avg_pool_window(xp, s, p, q, include_pad));
  }
}

template <class T>
void avg_bwd(const Pool2dShape& s, const T* dy, T* dx, bool include_pad) {
  for_each_dx_row(s, [&](int64_t r, int64_t plane, int, int p0, int p1, const int* q0, const int* q1) {
    const T* dyp = dy + plane * static_cast<int64_t>(s.P) * s.Q;
    for (int w = 0; w < s.W; ++w)
      dx[r * s.W + w] = from_float<T>(avg_pool_gather(dyp, s, p0, p1, q0[w], q1[w], include_pad));
  });
}

}  // namespace

void avg_pool2d_forward(const Pool2dShape& s, const float* x, float* y, bool include_pad) {
  avg_fwd(s, x, y, include_pad);
}
void avg_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, bool include_pad) {
  avg_fwd(s, x, y, include_pad);
}
void avg_pool2d_backward(const Pool2dShape& s, const float* dy, float* dx, bool include_pad) {
  avg_bwd(s, dy, dx, include_pad);
}
void avg_pool2d_backward(const Pool2dShape& s, const bf16* dy, bf16* dx, bool include_pad) {
  avg_bwd(s, dy, dx, include_pad);
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* indices) {
  FASTOPT_CPU_DISPATCH(max_pool2d_forward(s, x, y, indices))
}
void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* indices, float* dx) {
  FASTOPT_CPU_DISPATCH(max_pool2d_backward(s, dy, indices, dx))
}
void max_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, int32_t* indices) {
  FASTOPT_CPU_DISPATCH(max_pool2d_forward(s, x, y, indices))
}
void max_pool2d_backward(const Pool2dShape& s, const bf16* dy, const int32_t* indices, bf16* dx) {
  FASTOPT_CPU_DISPATCH(max_pool2d_backward(s, dy, indices, dx))
}
void max_pool2d_forward_nhwc(const Pool2dShape& s, int64_t channels, const float* x, float* y, int32_t* indices) {
  FASTOPT_CPU_DISPATCH(max_pool2d_forward_nhwc(s, channels, x, y, indices))
}
void max_pool2d_forward_nhwc(const Pool2dShape& s, int64_t channels, const bf16* x, bf16* y, int32_t* indices) {
  FASTOPT_CPU_DISPATCH(max_pool2d_forward_nhwc(s, channels, x, y, indices))
}
void max_pool2d_backward_nhwc(const Pool2dShape& s, int64_t channels, const float* dy, const int32_t* indices,
                              float* dx) {
  FASTOPT_CPU_DISPATCH(max_pool2d_backward_nhwc(s, channels, dy, indices, dx))
}
void max_pool2d_backward_nhwc(const Pool2dShape& s, int64_t channels, const bf16* dy, const int32_t* indices,
                              bf16* dx) {
  FASTOPT_CPU_DISPATCH(max_pool2d_backward_nhwc(s, channels, dy, indices, dx))
}
void global_avg_pool_forward(const float* x, float* y, int64_t planes, int64_t hw) {
  FASTOPT_CPU_DISPATCH(global_avg_pool_forward(x, y, planes, hw))
}
void global_avg_pool_backward(const float* dy, float* dx, int64_t planes, int64_t hw) {
  FASTOPT_CPU_DISPATCH(global_avg_pool_backward(dy, dx, planes, hw))
}
void global_avg_pool_forward(const bf16* x, bf16* y, int64_t planes, int64_t hw) {
  FASTOPT_CPU_DISPATCH(global_avg_pool_forward(x, y, planes, hw))
}
void global_avg_pool_backward(const bf16* dy, bf16* dx, int64_t planes, int64_t hw) {
  FASTOPT_CPU_DISPATCH(global_avg_pool_backward(dy, dx, planes, hw))
}
void avg_pool2d_forward(const Pool2dShape& s, const float* x, float* y, bool include_pad) {
  FASTOPT_CPU_DISPATCH(avg_pool2d_forward(s, x, y, include_pad))
}
void avg_pool2d_backward(const Pool2dShape& s, const float* dy, float* dx, bool include_pad) {
  FASTOPT_CPU_DISPATCH(avg_pool2d_backward(s, dy, dx, include_pad))
}
void avg_pool2d_forward(const Pool2dShape& s, const bf16* x, bf16* y, bool include_pad) {
  FASTOPT_CPU_DISPATCH(avg_pool2d_forward(s, x, y, include_pad))
}
void avg_pool2d_backward(const Pool2dShape& s, const bf16* dy, bf16* dx, bool include_pad) {
  FASTOPT_CPU_DISPATCH(avg_pool2d_backward(s, dy, dx, include_pad))
}
#endif

}  // namespace fastopt::cpu

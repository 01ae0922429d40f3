// What the channels_last conv2d files share (conv2d_nhwc.cpp: forward and data-grad;
// conv2d_nhwc_wgrad.cpp: weight-grad): the output-pixel classes of a spatial dimension, the
// folded window rows of small-channel layers, and the pair interleave of the packed operands.
// Included by both files in each ISA copy (namespace FASTOPT_ISA::nhwc).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastopt/conv2d.h"
#include "gemm_bf16.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(
    void conv2d_nhwc_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
    void conv2d_nhwc_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y);
    void conv2d_nhwc_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
    void conv2d_nhwc_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx);
    void conv2d_nhwc_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate);
    void conv2d_nhwc_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate);)

namespace FASTOPT_ISA::nhwc {

constexpr int64_t kLanes = 16;
constexpr int kMaxMR = 12;
constexpr int64_t kChunkPixels = 96;  // a multiple of every MR, so chunks hold whole tiles

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
constexpr int64_t kDead = INT64_MIN;

// One spatial dimension of an engine pass: the source coordinate that output coordinate o reads
// through tap t, src[o * taps + t] (kDead where the term is absent: padding, or a data-grad
// division that is inexact), and the output coordinates grouped into classes of equal live-tap
// sets (each edge position, each stride phase of the data-grad, the interior). A tile takes
// pixels of one class pair, gathered across images, so a tap is live for all of its pixels or for
// none and padded taps are skipped whole: a 4 x 4 image's 3 x 3 layer multiplied 44% zeros when
// tiles mixed its edge and interior pixels.
struct Dim {
  int64_t out, size, taps;
  std::vector<int64_t> src;
  std::vector<std::vector<int64_t>> classes;
};

// source(o, t): the source coordinate or kDead; live(o, t): whether the term exists, the key of
// o's class (a folded run's taps are live where any part of the run is inside).
template <class Source, class Live>
Dim make_dim(int64_t out, int64_t size, int64_t taps, int64_t key_taps, Source source, Live live) {
  Dim d{out, size, taps, std::vector<int64_t>(static_cast<size_t>(out * taps)), {}};
  std::vector<std::vector<bool>> keys;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t t = 0; t < taps; ++t) d.src[o * taps + t] = source(o, t);
    std::vector<bool> key(static_cast<size_t>(key_taps));
    for (int64_t t = 0; t < key_taps; ++t) key[t] = live(o, t);
    const auto at = std::find(keys.begin(), keys.end(), key);
    if (at == keys.end()) {
      keys.push_back(key);
      d.classes.push_back({o});
    } else {
      d.classes[at - keys.begin()].push_back(o);
    }
  }
  return d;
}

inline Dim forward_dim(int64_t out, int64_t size, int64_t taps, int64_t stride, int64_t pad, int64_t dil) {
  auto at = [=](int64_t o, int64_t t) { return o * stride - pad + t * dil; };
  auto live = [=](int64_t o, int64_t t) { return at(o, t) >= 0 && at(o, t) < size; };
  return make_dim(out, size, taps, taps, [=](int64_t o, int64_t t) { return live(o, t) ? at(o, t) : kDead; }, live);
}

// A folded dimension (fold_rows): one tap, a run of `run` pixels from o * stride - pad, live where
// the run overlaps the image; classed by the unfolded taps, so runs across an edge are apart.
inline Dim folded_dim(int64_t out, int64_t size, int64_t run, int64_t stride, int64_t pad) {
  auto start = [=](int64_t o) { return o * stride - pad; };
  return make_dim(
      out, size, 1, run, [=](int64_t o, int64_t) { return start(o) + run > 0 && start(o) < size ? start(o) : kDead; },
      [=](int64_t o, int64_t t) { return start(o) + t >= 0 && start(o) + t < size; });
}

inline Dim data_grad_dim(int64_t out, int64_t size, int64_t taps, int64_t stride, int64_t pad, int64_t dil) {
  auto source = [=](int64_t o, int64_t t) {
    const int64_t num = o + pad - t * dil;  // dx at o reads dy at num / stride when exact
    return num >= 0 && num % stride == 0 && num / stride < size ? num / stride : kDead;
  };
  return make_dim(out, size, taps, taps, source, [=](int64_t o, int64_t t) { return source(o, t) != kDead; });
}

// Small-channel layers (the stem) read the S taps of a window row as one run of S C contiguous
// values where dil_w = 1 (a "folded" row: cin = S C, one tap per row), so a tile carries R
// pointers per pixel instead of R S and reduces over pairs of S C values instead of S pairs of
// C. A run that crosses the image's left or right edge is copied with zeros into a scratch row.
inline bool fold_rows(int64_t C, int64_t S, int64_t dil_w) { return S > 1 && dil_w == 1 && C * S <= 64 && C < 16; }

// dst[2j] = a[j], dst[2j + 1] = b[j] for j < n, zeros for n <= j < lanes (lanes a multiple of 16).
template <class T>
void interleave(const T* a, const T* b, int64_t n, int64_t lanes, T* dst) {
  int64_t j = 0;
#if defined(__AVX512BW__)
  if constexpr (std::is_same_v<T, bf16>) {
    const __m512i lo = _mm512_setr_epi32(0x00200000, 0x00210001, 0x00220002, 0x00230003, 0x00240004, 0x00250005,
                                         0x00260006, 0x00270007, 0x00280008, 0x00290009, 0x002A000A, 0x002B000B,
                                         0x002C000C, 0x002D000D, 0x002E000E, 0x002F000F);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (; j < lanes; j += 32) {
      const int64_t left = n - j;
      const __mmask32 m = left >= 32 ? ~0u : left <= 0 ? 0u : static_cast<__mmask32>((1u << left) - 1);
      const __m512i va = _mm512_maskz_loadu_epi16(m, a + j), vb = _mm512_maskz_loadu_epi16(m, b + j);
      _mm512_storeu_si512(dst + 2 * j, _mm512_permutex2var_epi16(va, lo, vb));
      if (j + 16 < lanes) _mm512_storeu_si512(dst + 2 * j + 32, _mm512_permutex2var_epi16(va, hi, vb));
    }
    return;
  }
#endif
  for (; j < n; ++j) {
    dst[2 * j] = a[j];
    dst[2 * j + 1] = b[j];
  }
  for (; j < lanes; ++j) dst[2 * j] = dst[2 * j + 1] = T{};
}

}  // namespace FASTOPT_ISA::nhwc
}  // namespace fastopt::cpu

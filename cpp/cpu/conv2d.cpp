// Conv2d on the CPU, NCHW float32, as implicit GEMMs per group g (gemm.h), whose packers
// gather im2col panels straight from x, w and dy, one kc x NR strip at a time:
//
//   forward      y[k, (n,p,q)]    = sum_(c,r,s)  w[k, (c,r,s)] * x[n, c, p*sh-ph+r*dh, q*sw-pw+s*dw]   (+ b[k])
//   data-grad    dx[c, (n,h,w)]   = sum_(k,r,s)  w[k, c, r, s] * dy[n, k, (h+ph-r*dh)/sh, (w+pw-s*dw)/sw]
//                                   (terms whose division is inexact or out of range are zeros)
//                or, for strided or narrow layers, dcols = w^T dy per image, then col2im
//   weight-grad  dw[k, (c,r,s)]   = sum_(n,p,q)  dy[n, k, p, q] * x[n, c, p*sh-ph+r*dh, q*sw-pw+s*dw]
//   bias-grad    db[k]            = sum_(n,p,q)  dy[n, k, p, q]
// Channel-wise layers (C/groups = 1) skip the GEMM: there is no reuse to pack for
// (conv2d_channelwise.cpp). 3x3 layers with unit stride and >= 8 channels per group (128 for
// the weight-grad) take Winograd F(2x2, 3x3) instead (conv2d_winograd.cpp: 1.1-1.9x faster
// than the GEMMs below on them).
//
// Packing (AVX-512 copy; the others keep the generic gathers): with column stride 1 or 2 an
// im2col row (c, r, s) over a strip's columns is the source shifted by (r, s), so a strip row
// is NR/16 masked vector loads (two and a permute at stride 2) from per-strip bases, the masks
// zeroing the padding taps (ShiftGather; at stride 2 the 7x7 stem's forward went from 43.6 to
// 31.6 ms, N = 32, and a 3x3/2 32>64@56 from 3.15 to 1.85 ms, N = 16); the weight-grad's
// operands run along the pixels, so both are packed by 8x16 and 16x16 in-register transposes
// of masked row loads, and layers with fewer columns C R S
// than a tile (the 3-channel stem: 27 of 48) skip the GEMM for pixel-vector dot products
// (weight_grad_narrow). Before these, the packers' per-run scalar logic took 20-35% of a pass.
//
// Work: 2 N K (C/G) R S P Q flops per pass; the floor in bytes is x + w + y (or dy) once each,
// far below the flops at these layer sizes, so the GEMM passes are compute-bound: the target
// is the machine's SGEMM rate (the channel-wise ones are memory-bound). Traffic beyond the
// floor: each source element is read once per strip that covers it (R S rows of the strip),
// from L1/L2, and each kc x NR strip is written once and read M/MR times. Columns run over
// (n, p, q) jointly, so small 7x7 images still fill NR. Launch shape: an OpenMP team over
// (group, row block, column block) tasks (at least 32 column tasks per thread when the shared
// A is small), or over images for col2im and channel-wise planes, or over image chunks for
// the narrow weight-grad.
//
// No atomics anywhere: every output element is written by one thread, and the weight-grad
// reduces fixed image chunks into partials summed in chunk order. All passes are therefore
// deterministic for any thread count; the ISA copies differ only in FMA rounding (gemm.h).
//
// Measured 2026-11-22 (2-core AVX-512 Xeon, torch 2.13 oneDNN on 2 threads, 3x3 pad 1, medians
// of 11 interleaved rounds in one process), torch time / this time, before -> after the packer
// and kernel-prefetch work; fwd / data-grad / weight-grad:
//   N = 128:  3>32@32   1.30 / -    / 0.25  ->  1.32 / -    / 0.98
//             32>32@32  0.99 / 0.97 / 0.85  ->  1.20 / 1.14 / 1.31
//             32>64@16  0.70 / 0.53 / 0.60  ->  0.95 / 0.82 / 0.87
//             64>64@16  0.64 / 0.68 / 0.59  ->  0.88 / 0.91 / 0.87   (sum of the 11: 0.76 -> 1.06)
//   N = 32:   64@56     0.69 / 0.86 / 0.69  ->  0.85-1.13 / 0.99-1.24 / 0.98-1.37 (torch noisy)
//             128@28    0.74 / 0.79 / 0.72  ->  0.97 / 0.98 / 0.93
//             256@14    0.76 / 0.85 / 0.74  ->  0.98 / 1.00 / 0.90
//             512@7     0.69 / 0.72 / 0.92  ->  0.85 / 0.86 / 1.14
// Second round (same day and setup; orig vs this build alternated 3 times, each a median of 9
// interleaved rounds; the machine's neighbour made single runs swing 5-10%): gemm.h's tiles
// accumulate over all KC blocks in a per-task buffer and reach the output once, its buffers are
// no longer zeroed, and the buffer (2 MiB) spares 256-row weight-grad tasks a B repack:
//   N = 32:   128@28    0.95 / 0.96 / 0.95  ->  1.00 / 1.03 / 0.97
//             256@14    0.94 / 0.98 / 0.91  ->  0.99 / 1.05 / 0.93
//             512@7     0.86 / 0.85 / 1.12  ->  0.92 / 0.92 / 1.16
//   N = 128:  32>64@16  0.94 / 0.80 / 0.88  ->  0.94 / 0.84 / 0.90
//             64>64@16  0.92 / 0.91 / 0.86  ->  0.92 / 0.93 / 0.89     (64@56 stays 1.2-1.7 ahead)
// Measured and not kept (no gain beyond that noise): KC 160 / 192 / 256 with the buffer, the
// micro-kernel unrolled by 2, the A prefetch 64-160 steps ahead, the B strip packed just before
// its first use, a jr-major buffer, row-split tasks for 512@7 (with and without a shared packed
// B: that one halved 256@14's rate), 6-22 column blocks there, masked-vector output stores,
// data-grad by col2im at 32-64 channels (0.6x), and a channels-last copy of x for the
// weight-grad's B panel (no transposes, but 3-15% slower: an extra pass over x, read from L3).
// Still behind: the 16x16 layers (the strip pack is 10-15% of a pass at M = 32-64 rows per
// strip, worst for 32>64's data-grad, M = 32), their and 256@14's weight-grad (the transposing
// B pack, ~20%), and 512@7's forward and data-grad (the micro-kernel runs at ~85-90% of its L1
// rate there, torch's direct kernels at ~98% of SGEMM).
#include "fastopt/conv2d.h"
#include "isa.h"

#include <type_traits>

#include "conv2d_channelwise.h"
#include "conv2d_winograd.h"
#include "gemm.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
                     void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
                     void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw);)

namespace FASTOPT_ISA {
namespace {

using gemm::MR;
using gemm::NR;

// Output addressing shared by the three passes: row i of group g, column j = (n, inner) with
// `inner_len` inner positions per image: out + n*n_stride + (row0 + i)*row_stride + inner.
struct OutMap {
  float* out;
  int64_t inner_len, n_stride, row_stride, rows_per_group;
  const float* bias;  // per global row, or null

  void store(int64_t g, int64_t i0, int64_t rows, int64_t j0, int64_t cols, const float* tile) const {
    const int64_t n0 = j0 / inner_len, in0 = j0 % inner_len;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = g * rows_per_group + i0 + i;
      const float init = bias ? bias[row] : 0.0f;
      const float* t = tile + i * NR;
      int64_t n = n0, in = in0;
      for (int64_t j = 0; j < cols;) {
        const int64_t len = std::min(cols - j, inner_len - in);
        float* o = out + n * n_stride + row * row_stride + in;
        for (int64_t u = 0; u < len; ++u) o[u] = init + t[j + u];
        j += len;
        in = 0;
        ++n;
      }
    }
  }
};

// A run of consecutive output columns inside one image row: panel columns [jj, jj+len) are
// (n, a, b0 .. b0+len) for spatial rows a and positions b.
struct Run {
  int64_t jj, len, n, a, b0;
};

// Splits columns [j0, j0+cols) of an (n, A, B) column space into image-row runs.
inline int make_runs(int64_t j0, int64_t cols, int64_t A, int64_t B, Run* runs) {
  int nr = 0;
  int64_t n = j0 / (A * B), a = (j0 / B) % A, b = j0 % B;
  for (int64_t jj = 0; jj < cols;) {
    const int64_t len = std::min(cols - jj, B - b);
    runs[nr++] = {jj, len, n, a, b};
    jj += len;
    b = 0;
    if (++a == A) {
      a = 0;
      ++n;
    }
  }
  return nr;
}

// dst[t] = src[i0 + t*step] where that index lies in [0, n), else 0, for t < len. The valid
// range is computed once, so the middle is a plain (vectorizable) copy.
inline void copy_row(float* __restrict dst, int64_t len, const float* __restrict src, int64_t i0, int64_t step,
                     int64_t n) {
  // Unit stride needs no division for the valid range (this runs per image row per reduction
  // step of every packed strip).
  int64_t lo = step == 1 ? std::max<int64_t>(0, -i0) : i0 >= 0 ? 0 : (-i0 + step - 1) / step;
  int64_t hi = step == 1 ? std::max<int64_t>(0, n - i0) : i0 >= n ? 0 : (n - i0 + step - 1) / step;
  lo = std::min(lo, len);
  hi = std::max(lo, std::min(hi, len));
#if defined(__AVX512F__)
  // Runs are short (an image row, at most NR): masked loads and stores do the zero edges and
  // the tail in the same few vector steps, where a plain loop would finish in scalar code.
  // Masked-off lanes are never read, so src + i0 + t may point outside the row.
  using gemm::lanes_between;
  if (step == 1) {
    for (int64_t t = 0; t < len; t += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(lanes_between(lo - t, hi - t), src + i0 + t);
      _mm512_mask_storeu_ps(dst + t, lanes_between(0, len - t), v);
    }
    return;
  }
  if (step == 2) {
    // 16 outputs from the even lanes of two loads (a 7x7 stride-2 stem's weight-grad packs its
    // whole B panel this way); the loads' masks keep only the in-range even lanes.
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (int64_t t = 0; t < len; t += 16) {
      const int64_t a = 2 * (lo - t), b = 2 * (hi - t);
      const __m512 v0 = _mm512_maskz_loadu_ps(lanes_between(a, b) & 0x5555, src + i0 + 2 * t);
      const __m512 v1 = _mm512_maskz_loadu_ps(lanes_between(a - 16, b - 16) & 0x5555, src + i0 + 2 * t + 16);
      _mm512_mask_storeu_ps(dst + t, lanes_between(0, len - t), _mm512_permutex2var_ps(v0, evens, v1));
    }
    return;
  }
#endif
  for (int64_t t = 0; t < lo; ++t) dst[t] = 0.0f;
  if (step == 1)
    for (int64_t t = lo; t < hi; ++t) dst[t] = src[i0 + t];
  else
    for (int64_t t = lo; t < hi; ++t) dst[t] = src[i0 + t * step];
  for (int64_t t = hi; t < len; ++t) dst[t] = 0.0f;
}

#if defined(__AVX512F__)
// Fast im2col strips for column stride 1 or 2 (forward; data-grad's gather at stride 1). Panel
// row p = (c, r, s) and column j = (n, a, b) read src[n*img + c*chan + (a*sa + roff[r])*SW +
// b*sb + soff[s]], so within one image row consecutive columns read every sb-th float, and when
// sa*SW = B ("same" padding, stride 1) a whole image is one run. A strip is then a few masked
// vector loads per row from precomputed bases, the masks zeroing the padding taps: copy_row's
// per-run range logic per panel row cost 20-35% of a pass on these layers.
// As a volatile asm: GCC 12 deleted these as _mm_prefetch calls (all of them, in this loop).
inline void prefetch_spans(const float* p, const int64_t* lo, const int64_t* hi, int n) {
  for (int t = 0; t < n; ++t)
    for (int64_t e = lo[t]; e <= hi[t] + 15; e += 16) asm volatile("prefetcht0 %0" : : "m"(p[e]));
}

// The source lanes of 16 outputs `m` read with column stride CS (1 or 2): for CS = 2, bit i of
// m becomes bit 2i of the pair of 16-lane loads (bits 0-15 the first, 16-31 the second).
template <int CS>
inline uint32_t source_lanes(__mmask16 m) {
  uint32_t b = m;
  if constexpr (CS == 2) {
    b = (b | b << 8) & 0x00ff00ffu;
    b = (b | b << 4) & 0x0f0f0f0fu;
    b = (b | b << 2) & 0x33333333u;
    b = (b | b << 1) & 0x55555555u;
  }
  return b;
}

// 16 floats from p, p + CS, ..., p + 15 CS at the source lanes `src` (source_lanes); the others
// are zero and not read. Column stride 2 (the 7x7 stem) takes the even lanes of two loads: its
// panel rows went through copy_row's per-run logic.
template <int CS>
inline __m512 load_lanes(uint32_t src, const float* p) {
  if constexpr (CS == 1) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>(src), p);
  } else {
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(static_cast<__mmask16>(src), p), evens,
                                  _mm512_maskz_loadu_ps(static_cast<__mmask16>(src >> 16), p + 16));
  }
}

struct ShiftGather {
  const float* src;
  int64_t chan, img, A, B, SH, SW, sa, sb, R, S;  // sa, sb: row and column strides, sb 1 or 2
  const int64_t* roff;  // R entries
  const int64_t* soff;  // S entries

  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t cols, float* __restrict dst) const {
    if (sb == 2) return pack_cs<2>(p0, kc, j0, cols, dst);
    pack_cs<1>(p0, kc, j0, cols, dst);
  }

  template <int CS>
  void pack_cs(int64_t p0, int64_t kc, int64_t j0, int64_t cols, float* __restrict dst) const {
    constexpr int NV = NR / 16;
    // Loads of vector v: lanes `mask` from src + base + (row offset) + CS lane.
    struct Load {
      int64_t base;
      __mmask16 mask;
    };
    Load loads[NV][16];
    int nl[NV] = {};
    Run runs[NR];
    const int nruns = make_runs(j0, cols, A, B, runs);
    int64_t lane_a[NR], lane_b[NR];
    for (int u = 0; u < nruns; ++u) {
      const Run& ru = runs[u];
      const int64_t base = ru.n * img + ru.a * sa * SW + (ru.b0 - ru.jj) * CS;
      for (int64_t l = ru.jj; l < ru.jj + ru.len; ++l) {
        lane_a[l] = ru.a * sa;
        lane_b[l] = (ru.b0 + l - ru.jj) * CS;
        const int v = static_cast<int>(l / 16);
        const auto bit = static_cast<__mmask16>(1u << (l % 16));
        if (nl[v] > 0 && loads[v][nl[v] - 1].base == base + 16 * v * CS)
          loads[v][nl[v] - 1].mask |= bit;
        else
          loads[v][nl[v]++] = {base + 16 * v * CS, bit};
      }
    }
    // Lane validity per kernel row r and column s (bit l: tap inside the source plane), built in
    // a register: or-ing into the array went through memory, a tenth of the stem's packing.
    uint64_t rok[16], sok[16];
    for (int64_t r = 0; r < R; ++r) {
      uint64_t bits = 0;
      for (int64_t l = 0; l < cols; ++l)
        bits |= uint64_t{lane_a[l] + roff[r] >= 0 && lane_a[l] + roff[r] < SH} << l;
      rok[r] = bits;
    }
    for (int64_t s = 0; s < S; ++s) {
      uint64_t bits = 0;
      for (int64_t l = 0; l < cols; ++l)
        bits |= uint64_t{lane_b[l] + soff[s] >= 0 && lane_b[l] + soff[s] < SW} << l;
      sok[s] = bits;
    }
    // What a channel's rows read: per image run, one span from the lowest to the highest tap.
    // Prefetched PF channels ahead: the spans of successive channels lie a plane apart, a
    // pattern the hardware prefetcher does not follow (1-2% on the 16x16 layers).
    constexpr int64_t PF = 2;
    int64_t span_lo[NR], span_hi[NR];
    int nspans = 0;
    {
      int64_t rlo = roff[0], rhi = roff[0], slo = soff[0], shi = soff[0];
      for (int64_t r = 1; r < R; ++r) rlo = std::min(rlo, roff[r]), rhi = std::max(rhi, roff[r]);
      for (int64_t s = 1; s < S; ++s) slo = std::min(slo, soff[s]), shi = std::max(shi, soff[s]);
      for (int u = 0; u < nruns; ++u) {
        const Run& ru = runs[u];
        const int64_t first = ru.n * img + ru.a * sa * SW + ru.b0 * CS;
        const int64_t lo = first + rlo * SW + slo, hi = first + (ru.len - 1) * CS + rhi * SW + shi;
        if (nspans > 0 && lo <= span_hi[nspans - 1] + 16)
          span_hi[nspans - 1] = std::max(span_hi[nspans - 1], hi);
        else
          span_lo[nspans] = lo, span_hi[nspans++] = hi;
      }
    }
    const int64_t RS = R * S, c_end = (p0 + kc + RS - 1) / RS;
    auto prefetch = [&](int64_t c) {
      if (c < c_end) prefetch_spans(src + c * chan, span_lo, span_hi, nspans);
    };
    int64_t c = p0 / RS, rs = p0 % RS;
    // The common case (at most one image-row boundary inside a vector): one or two loads per
    // vector, so their masks and offsets are fixed per tap (r, s) and a panel row is a few loads
    // and NV stores. Up to 8x8 taps: the 7x7 stem's 49 took the general loop below, as did the
    // strips that cross one of its rows, 27% of its forward.
    constexpr int64_t kMaxTaps = 64;
    if (std::all_of(nl, nl + NV, [](int n) { return n <= 2; }) && RS <= kMaxTaps) {
      uint32_t m[kMaxTaps][NV][2];
      int64_t d[kMaxTaps];
      for (int64_t t = 0; t < RS; ++t) {
        const int64_t r = t / S, s = t % S;
        d[t] = roff[r] * SW + soff[s];
        for (int v = 0; v < NV; ++v)
          for (int i = 0; i < 2; ++i)
            m[t][v][i] = i < nl[v] ? source_lanes<CS>(loads[v][i].mask & ((rok[r] & sok[s]) >> (16 * v))) : 0;
      }
      int64_t base[NV][2];
      for (int v = 0; v < NV; ++v)
        for (int i = 0; i < 2; ++i) base[v][i] = i < nl[v] ? loads[v][i].base : 0;
      // Strips with one load per vector (all but those that cross a row) keep the loop free of
      // the second load's test.
      const auto rows = [&](auto two_loads) {
        for (int64_t p = 0; p < kc; ++p) {
          if (rs == 0) prefetch(c + PF);
          const float* from = src + c * chan + d[rs];
          for (int v = 0; v < NV; ++v) {
            __m512 val = load_lanes<CS>(m[rs][v][0], from + base[v][0]);  // zero outside its lanes
            if constexpr (decltype(two_loads)::value)
              if (nl[v] == 2) val = _mm512_or_ps(val, load_lanes<CS>(m[rs][v][1], from + base[v][1]));
            _mm512_storeu_ps(dst + p * NR + 16 * v, val);
          }
          if (++rs == RS) {
            rs = 0;
            ++c;
          }
        }
      };
      if (std::all_of(nl, nl + NV, [](int n) { return n <= 1; }))
        rows(std::false_type{});
      else
        rows(std::true_type{});
      return;
    }
    for (int64_t p = 0; p < kc; ++p) {
      if (rs == 0) prefetch(c + PF);
      const int64_t r = rs / S, s = rs % S;
      const uint64_t ok = rok[r] & sok[s];
      const float* from = src + c * chan + roff[r] * SW + soff[s];
      for (int v = 0; v < NV; ++v) {
        __m512 acc = _mm512_setzero_ps();
        const auto vok = static_cast<__mmask16>(ok >> (16 * v));
        for (int t = 0; t < nl[v]; ++t) {
          const auto m = static_cast<__mmask16>(loads[v][t].mask & vok);
          acc = _mm512_or_ps(acc, load_lanes<CS>(source_lanes<CS>(m), from + loads[v][t].base));
        }
        _mm512_storeu_ps(dst + p * NR + 16 * v, acc);
      }
      if (++rs == RS) {
        rs = 0;
        ++c;
      }
    }
  }
};
#endif

// row[w0 + q*step] += src[q] for q < nq where that index lies in [0, n).
inline void add_row(float* __restrict row, int64_t n, const float* __restrict src, int64_t nq, int64_t w0,
                    int64_t step) {
  const int64_t lo = std::min(nq, w0 >= 0 ? int64_t{0} : (-w0 + step - 1) / step);
  const int64_t hi = std::max(lo, std::min(nq, w0 >= n ? int64_t{0} : (n - w0 + step - 1) / step));
#if defined(__AVX512F__)
  if (step == 2) {
    // 16 of src spread over the even lanes of two 16-float stretches of the row: the same one
    // add per element as below, in vectors (col2im data-grad, 4 alternated runs each: 7x7/2 stem
    // 52.4 -> 47.8 ms, N = 32; 3x3/2 32>64@56 3.45 -> 2.87 ms, N = 16).
    const __m512i first8 = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i last8 = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    for (int64_t q = lo; q < hi; q += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(gemm::first_lanes(hi - q), src + q);
      float* d = row + w0 + 2 * q;
      const auto m0 = static_cast<__mmask16>(gemm::first_lanes(2 * (hi - q)) & 0x5555);  // even lanes
      const auto m1 = static_cast<__mmask16>(gemm::first_lanes(2 * (hi - q) - 16) & 0x5555);
      _mm512_mask_storeu_ps(d, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, d), _mm512_permutexvar_ps(first8, v)));
      _mm512_mask_storeu_ps(d + 16, m1,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(m1, d + 16), _mm512_permutexvar_ps(last8, v)));
    }
    return;
  }
#endif
  if (step == 1)
    for (int64_t q = lo; q < hi; ++q) row[w0 + q] += src[q];
  else
    for (int64_t q = lo; q < hi; ++q) row[w0 + q * step] += src[q];
}

inline void zero_tail(float* dst, int64_t cols, int64_t kc) {
  if (cols == NR) return;
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t j = cols; j < NR; ++j) dst[p * NR + j] = 0.0f;
}

}  // namespace

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  if (s.C == s.groups) return channelwise_forward(s, x, w, b, y);
  if (winograd_applies(s)) return winograd_forward(s, x, w, b, y);
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t Kd = Cg * RS;
  auto pack_a = [&](int64_t g, int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) {
#if defined(__AVX512F__)
    if constexpr (MR == 8) {
      // 8 x 16 blocks of weight rows transposed in registers (2-3% of a deep layer's forward
      // went into the scalar loop's strided stores: 512 x 4608 weights).
      for (int64_t t = 0; t < kc; t += 16) {
        const int count = static_cast<int>(std::min<int64_t>(16, kc - t));
        const auto m = static_cast<__mmask16>((1u << count) - 1);
        __m512 r[8];
        for (int i = 0; i < 8; ++i)
          r[i] = i < rows ? _mm512_maskz_loadu_ps(m, w + (g * Kg + i0 + i) * Kd + p0 + t) : _mm512_setzero_ps();
        gemm::transpose8x16_to_strip(r, count, dst + t * MR);
      }
      return;
    }
#endif
    for (int64_t i = 0; i < MR; ++i) {
      const float* src = w + (g * Kg + i0 + i) * Kd + p0;
      if (i < rows)
        for (int64_t p = 0; p < kc; ++p) dst[p * MR + i] = src[p];
      else
        for (int64_t p = 0; p < kc; ++p) dst[p * MR + i] = 0.0f;
    }
  };
#if defined(__AVX512F__)
  int64_t roff[16], soff[16];
  for (int64_t r = 0; r < std::min<int64_t>(s.R, 16); ++r) roff[r] = r * s.dil_h - s.pad_h;
  for (int64_t c = 0; c < std::min<int64_t>(s.S, 16); ++c) soff[c] = c * s.dil_w - s.pad_w;
  const bool fast = (s.stride_w == 1 || s.stride_w == 2) && s.R <= 16 && s.S <= 16;
#endif
  auto pack_b = [&](int64_t g, int64_t p0, int64_t kc, int64_t j0, int64_t cols, float* dst) {
#if defined(__AVX512F__)
    if (fast)
      return ShiftGather{x + g * Cg * HW, HW, s.C * HW, s.P, s.Q, s.H, s.W, s.stride_h, s.stride_w, s.R, s.S, roff,
                         soff}.pack(
          p0, kc, j0, cols, dst);
#endif
    Run runs[NR];
    const int nruns = make_runs(j0, cols, s.P, s.Q, runs);
    int64_t c = p0 / RS, r = (p0 % RS) / s.S, sc = p0 % s.S;
    for (int64_t p = 0; p < kc; ++p) {
      float* d = dst + p * NR;
      for (int u = 0; u < nruns; ++u) {
        const Run& ru = runs[u];
        const int64_t ih = ru.a * s.stride_h - s.pad_h + r * s.dil_h;
        if (ih < 0 || ih >= s.H) {
          for (int64_t t = 0; t < ru.len; ++t) d[ru.jj + t] = 0.0f;
          continue;
        }
        const float* row = x + (ru.n * s.C + g * Cg + c) * HW + ih * s.W;
        copy_row(d + ru.jj, ru.len, row, ru.b0 * s.stride_w - s.pad_w + sc * s.dil_w, s.stride_w, s.W);
      }
      if (++sc == s.S) {
        sc = 0;
        if (++r == s.R) {
          r = 0;
          ++c;
        }
      }
    }
    zero_tail(dst, cols, kc);
  };
  const OutMap out{y, PQ, s.K * PQ, PQ, Kg, b};
  gemm::run(
      G, Kg, s.N * PQ, Kd, true, pack_a, pack_b,
      [&](int64_t g, int64_t i0, int64_t rows, int64_t j0, int64_t cols, const float* tile) {
        out.store(g, i0, rows, j0, cols, tile);
      });
}

namespace {

// The gather form: one implicit GEMM straight into dx, for stride 1 only (conv2d_backward_data),
// so its packer maps output rows to dy rows without divisions: with stride > 1 most of its panel
// would be zeros (1 - 1/(sh sw)). With few channels per group it fills few of the MR rows.
void data_grad_gather(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t Kd = Kg * RS;
  auto pack_a = [&](int64_t g, int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) {
    // A[c, (k, r, s)] = w[g*Kg + k, c, r, s]
    for (int64_t i = 0; i < MR; ++i) {
      if (i >= rows) {
        for (int64_t p = 0; p < kc; ++p) dst[p * MR + i] = 0.0f;
        continue;
      }
      const float* wc = w + (i0 + i) * RS;
      int64_t k = p0 / RS, rs = p0 % RS;
      for (int64_t p = 0; p < kc; ++p) {
        dst[p * MR + i] = wc[(g * Kg + k) * Cg * RS + rs];
        if (++rs == RS) {
          rs = 0;
          ++k;
        }
      }
    }
  };
#if defined(__AVX512F__)
  int64_t roff[16], soff[16];
  for (int64_t r = 0; r < std::min<int64_t>(s.R, 16); ++r) roff[r] = s.pad_h - r * s.dil_h;
  for (int64_t c = 0; c < std::min<int64_t>(s.S, 16); ++c) soff[c] = s.pad_w - c * s.dil_w;
  const bool fast = s.R <= 16 && s.S <= 16;
#endif
  auto pack_b = [&](int64_t g, int64_t p0, int64_t kc, int64_t j0, int64_t cols, float* dst) {
#if defined(__AVX512F__)
    if (fast)
      return ShiftGather{dy + g * Kg * PQ, PQ, s.K * PQ, s.H, s.W, s.P, s.Q, 1, 1, s.R, s.S, roff, soff}.pack(
          p0, kc, j0, cols, dst);
#endif
    Run runs[NR];
    const int nruns = make_runs(j0, cols, s.H, s.W, runs);
    int64_t k = p0 / RS, r = (p0 % RS) / s.S, sc = p0 % s.S;
    for (int64_t p = 0; p < kc; ++p) {
      float* d = dst + p * NR;
      for (int u = 0; u < nruns; ++u) {
        const Run& ru = runs[u];
        const int64_t oh = ru.a + s.pad_h - r * s.dil_h;
        if (oh < 0 || oh >= s.P) {
          for (int64_t t = 0; t < ru.len; ++t) d[ru.jj + t] = 0.0f;
          continue;
        }
        copy_row(d + ru.jj, ru.len, dy + (ru.n * s.K + g * Kg + k) * PQ + oh * s.Q, ru.b0 + s.pad_w - sc * s.dil_w, 1,
                 s.Q);
      }
      if (++sc == s.S) {
        sc = 0;
        if (++r == s.R) {
          r = 0;
          ++k;
        }
      }
    }
    zero_tail(dst, cols, kc);
  };
  const OutMap out{dx, HW, s.C * HW, HW, Cg, nullptr};
  gemm::run(
      G, Cg, s.N * HW, Kd, true, pack_a, pack_b,
      [&](int64_t g, int64_t i0, int64_t rows, int64_t j0, int64_t cols, const float* tile) {
        out.store(g, i0, rows, j0, cols, tile);
      });
}

// The col2im form, per image and group on one thread: dcols[(c,r,s), (p,q)] = sum_k w[k,c,r,s]
// dy[k,p,q] as an exact GEMM (M = Cg R S, Kd = Kg), then each dx plane is folded from its
// R S shifted rows in fixed (r, s) order by the thread that owns the image: no atomics.
void data_grad_col2im(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t M = Cg * RS, items = s.N * G;
#pragma omp parallel
  {
    gemm::Workspace ws;
    std::vector<float> cols(static_cast<size_t>(M * PQ));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / G, g = item % G;
      const float* dyg = dy + (n * s.K + g * Kg) * PQ;
      auto pack_a = [&](int64_t, int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) {
        // A[(c,r,s), k] = w[g*Kg + k, (c,r,s)]: contiguous along the rows of the strip.
        for (int64_t p = 0; p < kc; ++p) {
          const float* src = w + (g * Kg + p0 + p) * M + i0;
          for (int64_t i = 0; i < MR; ++i) dst[p * MR + i] = i < rows ? src[i] : 0.0f;
        }
      };
      auto pack_b = [&](int64_t, int64_t p0, int64_t kc, int64_t j0, int64_t ncols, float* dst) {
        for (int64_t p = 0; p < kc; ++p) {
          const float* src = dyg + (p0 + p) * PQ + j0;
          for (int64_t j = 0; j < NR; ++j) dst[p * NR + j] = j < ncols ? src[j] : 0.0f;
        }
      };
      const OutMap out{cols.data(), PQ, 0, PQ, 0, nullptr};
      gemm::serial(
          0, M, PQ, Kg, pack_a, pack_b,
          [&](int64_t, int64_t i0, int64_t rows, int64_t j0, int64_t ncols, const float* tile) {
            out.store(0, i0, rows, j0, ncols, tile);
          },
          ws);
      for (int64_t c = 0; c < Cg; ++c) {
        float* plane = dx + (n * s.C + g * Cg + c) * HW;
        std::fill(plane, plane + HW, 0.0f);
        for (int64_t rs = 0; rs < RS; ++rs) {
          const int64_t r = rs / s.S, sc = rs % s.S;
          const float* src = cols.data() + (c * RS + rs) * PQ;
          for (int64_t p = 0; p < s.P; ++p) {
            const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
            if (h < 0 || h >= s.H) continue;
            add_row(plane + h * s.W, s.W, src + p * s.Q, s.Q, sc * s.dil_w - s.pad_w, s.stride_w);
          }
        }
      }
    }
  }
}

#if defined(__AVX512F__)
// tap_ok[pq]: bit r*S + s set where output pixel pq's tap (r, s) lies inside x; for unit
// strides with Q = W (R*S <= 16), where that tap reads x at pq + (r dh - ph) W + s dw - pw. Padded
// by 16 zeros so that a vector of 16 pixels may load past the last one.
std::vector<uint16_t> tap_table(const Conv2dShape& s) {
  const int64_t PQ = s.P * s.Q;
  std::vector<uint16_t> tap_ok(static_cast<size_t>(PQ + 16));
  for (int64_t pq = 0; pq < PQ; ++pq)
    for (int64_t r = 0; r < s.R; ++r)
      for (int64_t sc = 0; sc < s.S; ++sc) {
        const int64_t ih = pq / s.Q - s.pad_h + r * s.dil_h, iw = pq % s.Q - s.pad_w + sc * s.dil_w;
        if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) tap_ok[pq] |= static_cast<uint16_t>(1u << (r * s.S + sc));
      }
  return tap_ok;
}

// Weight-grad with fewer columns C R S than a tile (the 3-channel stem: 27 of NR = 48, and the
// GEMM's transposing packers cost as much again): dot products along the pixels instead.
// Accumulator vector acc[k][col] sums dy[n, k, pq] * x[n, c, pq + d_rs] over 16-pixel vectors
// (pq in lanes), loaded straight from both tensors (masks zero the padding taps), so nothing is
// packed or transposed and no lane is wasted. Register block: 8 rows k x NB <= 3 columns = 24
// accumulators, 8 + NB loads per 8 NB FMAs, data of one image (dy: K PQ, x: C HW floats) in L1/L2.
// Images run in `chunks` fixed runs (by shape), each into its own vector partials, spilled per
// image and block (24 loads + stores per 8 NB PQ / 16 FMAs); partials are summed in chunk order,
// then each vector's 16 lanes in a fixed tree, so the bits do not depend on the thread count.
template <int NB>
void narrow_block(int64_t PQ, int64_t t0, int64_t t1, const float* dyk, const float* xn, const int64_t* off,
                  const __m256i* bit, const uint16_t* tap_ok, float* acc) {
  __m512 a[8][NB];
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < NB; ++j) a[i][j] = _mm512_loadu_ps(acc + (i * NB + j) * 16);
  for (int64_t t = t0; t < t1; t += 16) {
    const auto m = static_cast<__mmask16>(PQ - t >= 16 ? 0xffff : (1u << (PQ - t)) - 1);
    const __m256i taps = _mm256_maskz_loadu_epi16(m, tap_ok + t);
    __m512 xv[NB];
    for (int j = 0; j < NB; ++j) xv[j] = _mm512_maskz_loadu_ps(m & _mm256_test_epi16_mask(taps, bit[j]), xn + off[j] + t);
    for (int i = 0; i < 8; ++i) {
      const __m512 d = _mm512_maskz_loadu_ps(m, dyk + i * PQ + t);
      for (int j = 0; j < NB; ++j) a[i][j] = _mm512_fmadd_ps(d, xv[j], a[i][j]);
    }
  }
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < NB; ++j) _mm512_storeu_ps(acc + (i * NB + j) * 16, a[i][j]);
}

void weight_grad_narrow(const Conv2dShape& s, const float* dy, const float* x, float* dw) {
  const int64_t RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W, Nn = s.C * RS, Kp = (s.K + 7) / 8 * 8;
  const std::vector<uint16_t> tap_ok = tap_table(s);
  const int64_t chunks = std::min<int64_t>(s.N, 16), slab = Kp * Nn * 16;
  // Pixels per pass over the column blocks: 8 rows of dy (8 KiB) and the x rows under them stay
  // in L1; a whole 32x32 image's 32 KiB of dy rows and 12 KiB of x did not.
  constexpr int64_t kPixels = 256;
  std::vector<float> part(static_cast<size_t>(chunks * slab));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t u = 0; u < chunks; ++u) {
    float* acc = part.data() + u * slab;  // [k block][column block][8][NB][16]
    std::fill(acc, acc + slab, 0.0f);
    for (int64_t n = u * s.N / chunks; n < (u + 1) * s.N / chunks; ++n)
      for (int64_t k0 = 0; k0 < Kp; k0 += 8)
        for (int64_t t0 = 0; t0 < PQ; t0 += kPixels) {
          const int64_t t1 = std::min(PQ, t0 + kPixels);
          // A last partial block of rows starts at K - 8 instead (K >= 8), overlapping the one
          // before it; the reduction below reads each row k from one block only.
          const float* dyk = dy + (n * s.K + std::min(k0, s.K - 8)) * PQ;
          float* ak = acc + k0 * Nn * 16;
          for (int64_t j0 = 0; j0 < Nn; j0 += 3) {
            const int nb = static_cast<int>(std::min<int64_t>(3, Nn - j0));
            int64_t off[3];
            __m256i bit[3];
            for (int j = 0; j < nb; ++j) {
              const int64_t col = j0 + j, c = col / RS, r = (col % RS) / s.S, sc = col % s.S;
              off[j] = c * HW + (r * s.dil_h - s.pad_h) * s.W + sc * s.dil_w - s.pad_w;
              bit[j] = _mm256_set1_epi16(static_cast<short>(1 << (r * s.S + sc)));
            }
            const float* xn = x + n * s.C * HW;
            float* a = ak + j0 * 8 * 16;
            if (nb == 3)
              narrow_block<3>(PQ, t0, t1, dyk, xn, off, bit, tap_ok.data(), a);
            else if (nb == 2)
              narrow_block<2>(PQ, t0, t1, dyk, xn, off, bit, tap_ok.data(), a);
            else
              narrow_block<1>(PQ, t0, t1, dyk, xn, off, bit, tap_ok.data(), a);
          }
        }
  }
#pragma omp parallel for schedule(static)
  for (int64_t e = 0; e < s.K * Nn; ++e) {
    const int64_t k = e / Nn, col = e % Nn, j0 = col / 3 * 3, nb = std::min<int64_t>(3, Nn - j0);
    const int64_t k0 = k / 8 * 8;
    const int64_t i = k - std::min(k0, s.K - 8);  // row k's place in its block
    const int64_t at = k0 * Nn * 16 + j0 * 8 * 16 + (i * nb + (col - j0)) * 16;
    __m512 v = _mm512_loadu_ps(part.data() + at);
    for (int64_t u = 1; u < chunks; ++u) v = _mm512_add_ps(v, _mm512_loadu_ps(part.data() + u * slab + at));
    dw[e] = _mm512_reduce_add_ps(v);
  }
}
#endif

}  // namespace

// The gather form wins when it wastes nothing (stride 1) and its M = C/G fills the tile rows.
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  if (s.C == s.groups)
    channelwise_backward_data(s, dy, w, dx);
  else if (winograd_applies(s))
    winograd_backward_data(s, dy, w, dx);
  else if (s.stride_h * s.stride_w > 1 || s.C / s.groups < 2 * MR)
    data_grad_col2im(s, dy, w, dx);
  else
    data_grad_gather(s, dy, w, dx);
}

// The reduction over (n, p, q) is cut into `chunks` equal runs of whole images (a divisor of N,
// fixed by the shape alone), each reduced into its own partial dw; partials are then summed in
// chunk order. Threads thus work on different images without repacking the other operand, and
// the result does not depend on the thread count.
void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw) {
  if (s.C == s.groups) return channelwise_backward_weight(s, dy, x, dw);
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t Nn = Cg * RS, size = s.K * Nn;
  if (s.N * PQ == 0) {
    std::fill(dw, dw + size, 0.0f);
    return;
  }
  if (winograd_applies(s, true)) return winograd_backward_weight(s, dy, x, dw);
#if defined(__AVX512F__)
  if (G == 1 && Nn < NR && s.K >= 8 && s.stride_h == 1 && s.stride_w == 1 && s.Q == s.W && RS <= 16)
    return weight_grad_narrow(s, dy, x, dw);
#endif
  // Each partial costs a write and a read of dw: worth it only with >= 1024 reduction terms per
  // element of it, and bounded in memory. Columns give the threads work when chunks cannot.
  const int64_t max_chunks =
      std::min<int64_t>({8, std::max<int64_t>(1, (int64_t{16} << 20) / size), std::max<int64_t>(1, s.N * PQ / 1024)});
  int64_t chunks = 1;
  for (int64_t d = std::min(s.N, max_chunks); d > 1; --d)
    if (s.N % d == 0) {
      chunks = d;
      break;
    }
  const int64_t per = s.N / chunks, Kd = per * PQ;
  std::vector<float> partial(chunks > 1 ? static_cast<size_t>(chunks * size) : 0);
#if defined(__AVX512F__)
  const bool fast_b = s.stride_h == 1 && s.stride_w == 1 && s.Q == s.W && RS <= 16;
  const std::vector<uint16_t> tap_ok = fast_b ? tap_table(s) : std::vector<uint16_t>();
#endif
  auto pack_a = [&](int64_t item, int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) {
    // A[k, (n, p, q)] = dy[n, g*Kg + k, p, q]: per row, contiguous runs of one image.
    const int64_t n0 = item / G * per, g = item % G;
#if defined(__AVX512F__)
    if constexpr (MR == 8) {
      // 8 x 16 blocks loaded along the rows and transposed in registers: the scalar loop's
      // stores at stride MR cost as much as the GEMM itself on the narrow layers.
      int64_t n = n0 + p0 / PQ, pq = p0 % PQ;
      for (int64_t p = 0; p < kc;) {
        const int64_t len = std::min(kc - p, PQ - pq);
        const float* src = dy + (n * s.K + g * Kg + i0) * PQ + pq;
        for (int64_t t = 0; t < len; t += 16) {
          const int count = static_cast<int>(std::min<int64_t>(16, len - t));
          const auto m = static_cast<__mmask16>((1u << count) - 1);
          __m512 r[8];
          for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm512_maskz_loadu_ps(m, src + i * PQ + t) : _mm512_setzero_ps();
          gemm::transpose8x16_to_strip(r, count, dst + (p + t) * MR);
        }
        p += len;
        pq = 0;
        ++n;
      }
      return;
    }
#endif
    for (int64_t i = 0; i < MR; ++i) {
      if (i >= rows) {
        for (int64_t p = 0; p < kc; ++p) dst[p * MR + i] = 0.0f;
        continue;
      }
      int64_t n = n0 + p0 / PQ, pq = p0 % PQ;
      for (int64_t p = 0; p < kc;) {
        const int64_t len = std::min(kc - p, PQ - pq);
        const float* src = dy + (n * s.K + g * Kg + i0 + i) * PQ + pq;
        for (int64_t t = 0; t < len; ++t) dst[(p + t) * MR + i] = src[t];
        p += len;
        pq = 0;
        ++n;
      }
    }
  };
  auto pack_b = [&](int64_t item, int64_t p0, int64_t kc, int64_t j0, int64_t cols, float* dst) {
    // B[(n, p, q), (c, r, s)] = x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]: each column
    // is a strided walk along rows of x, so gather it with range-split row copies, then transpose.
    const int64_t n0 = item / G * per, g = item % G;
#if defined(__AVX512F__)
    if (fast_b) {
      // Unit strides with Q = W: column (c, r, s) at pixel pq reads x[.., c, pq + roff_r W + soff_s]
      // where tap_ok[pq] has bit r*S + s, so 16 x 16 blocks load straight from x (masks zero the
      // padding taps) and transpose in registers, with no gathered copy in between.
      int64_t off[NR];
      __m256i bit[NR];
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t col = j0 + j, c = col / RS, r = (col % RS) / s.S, sc = col % s.S;
        off[j] = (g * Cg + c) * HW + (r * s.dil_h - s.pad_h) * s.W + sc * s.dil_w - s.pad_w;
        bit[j] = _mm256_set1_epi16(static_cast<short>(1 << (r * s.S + sc)));
      }
      int64_t n = n0 + p0 / PQ, pq = p0 % PQ;
      for (int64_t p = 0; p < kc;) {
        const int64_t len = std::min(kc - p, PQ - pq);
        const float* xn = x + n * s.C * HW + pq;
        for (int64_t t = 0; t < len; t += 16) {
          const int count = static_cast<int>(std::min<int64_t>(16, len - t));
          const auto m = static_cast<__mmask16>((1u << count) - 1);
          const __m256i taps = _mm256_maskz_loadu_epi16(m, tap_ok.data() + pq + t);
          for (int64_t jb = 0; jb < NR; jb += 16) {
            __m512 r[16];
            for (int64_t i = 0; i < 16; ++i)
              r[i] = jb + i < cols ? _mm512_maskz_loadu_ps(m & _mm256_test_epi16_mask(taps, bit[jb + i]), xn + off[jb + i] + t)
                                   : _mm512_setzero_ps();
            if (jb < cols) gemm::transpose16(r);
            for (int i = 0; i < count; ++i) _mm512_storeu_ps(dst + (p + t + i) * NR + jb, r[i]);
          }
        }
        p += len;
        pq = 0;
        ++n;
      }
      return;
    }
#endif
    alignas(64) float tmp[NR * gemm::KC];
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t col = j0 + j, c = col / RS, r = (col % RS) / s.S, sc = col % s.S;
      float* d = tmp + j * kc;
      int64_t n = n0 + p0 / PQ, oh = (p0 % PQ) / s.Q, ow = p0 % s.Q;
      for (int64_t p = 0; p < kc;) {
        const int64_t len = std::min(kc - p, s.Q - ow);
        const int64_t ih = oh * s.stride_h - s.pad_h + r * s.dil_h;
        if (ih < 0 || ih >= s.H)
          for (int64_t t = 0; t < len; ++t) d[p + t] = 0.0f;
        else
          copy_row(d + p, len, x + (n * s.C + g * Cg + c) * HW + ih * s.W, ow * s.stride_w - s.pad_w + sc * s.dil_w,
                   s.stride_w, s.W);
        p += len;
        ow = 0;
        if (++oh == s.P) {
          oh = 0;
          ++n;
        }
      }
    }
    gemm::transpose_to_panel(tmp, kc, kc, cols, dst);
  };
  gemm::run(
      chunks * G, Kg, Nn, Kd, false, pack_a, pack_b,
      [&](int64_t item, int64_t i0, int64_t rows, int64_t j0, int64_t cols, const float* tile) {
        float* target = chunks > 1 ? partial.data() + item / G * size : dw;
        OutMap{target, Nn, 0, Nn, Kg, nullptr}.store(item % G, i0, rows, j0, cols, tile);
      });
  if (chunks > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < size; ++i) {
      float acc = partial[i];
      for (int64_t c = 1; c < chunks; ++c) acc += partial[c * size + i];
      dw[i] = acc;
    }
  }
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  FASTOPT_CPU_DISPATCH(conv2d_forward(s, x, w, b, y))
}
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  FASTOPT_CPU_DISPATCH(conv2d_backward_data(s, dy, w, dx))
}
void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw) {
  FASTOPT_CPU_DISPATCH(conv2d_backward_weight(s, dy, x, dw))
}

// Memory-bound (4 bytes read per flop), so one plain pass: channels over the threads, each
// summed in double in (n, p, q) order.
void conv2d_backward_bias(const Conv2dShape& s, const float* dy, float* db) {
  const int64_t PQ = s.P * s.Q;
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < s.K; ++k) {
    double acc = 0.0;
    for (int64_t n = 0; n < s.N; ++n) {
      const float* src = dy + (n * s.K + k) * PQ;
      double part = 0.0;
      for (int64_t i = 0; i < PQ; ++i) part += src[i];
      acc += part;
    }
    db[k] = static_cast<float>(acc);
  }
}
#endif

}  // namespace fastopt::cpu

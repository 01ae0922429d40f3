// The packers of the CPU conv2d's implicit GEMMs (conv2d.cpp): they write gemm.h's fp32 strips
// from NCHW sources of type T (float, or bf16 widened at the load: exact), and map finished
// tiles onto NCHW outputs. Included by conv2d.cpp only, so compiled once per ISA copy.
//
// Packing (AVX-512 copy; the others keep the generic gathers): with column stride 1 or 2 an
// im2col row (c, r, s) over a strip's columns is the source shifted by (r, s), so a strip row
// is NR/16 masked vector loads (two and a permute at stride 2) from per-strip bases, the masks
// zeroing the padding taps (ShiftGather; at stride 2 the 7x7 stem's forward went from 43.6 to
// 31.6 ms, N = 32, and a 3x3/2 32>64@56 from 3.15 to 1.85 ms, N = 16). Before these, the
// packers' per-run scalar logic took 20-35% of a pass.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastopt/conv2d.h"
#include "gemm_bf16.h"

namespace fastopt::cpu::FASTOPT_ISA {
namespace conv2d_pack {

using gemm::MR;
using gemm::NR;

// o[u] = init + t[u] for u < len (added into o for an accumulated fp32 gradient), rounded once
// for a bf16 o.
template <class TO>
inline void store_run(TO* __restrict o, const float* __restrict t, int64_t len, float init, bool accumulate) {
#if defined(__AVX512F__)
  // 16 at a time: the scalar loop vectorized only runs of 32 or more, and a 16 x 16 image's are 16.
  const __m512 vinit = _mm512_set1_ps(init);
  for (int64_t u = 0; u < len; u += 16) {
    const __mmask16 m = gemm::first_lanes(len - u);
    __m512 v = _mm512_add_ps(vinit, _mm512_maskz_loadu_ps(m, t + u));
    if constexpr (std::is_same_v<TO, float>)
      if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, o + u), v);
    gemm::store16(m, o + u, v);
  }
#else
  if constexpr (std::is_same_v<TO, float>) {
    if (accumulate)
      for (int64_t u = 0; u < len; ++u) store_grad(o + u, init + t[u], true);
    else
      for (int64_t u = 0; u < len; ++u) o[u] = init + t[u];
  } else {
    for (int64_t u = 0; u < len; ++u) o[u] = from_float<TO>(init + t[u]);
  }
#endif
}

// Output addressing shared by the three passes: row i of group g, column j = (n, inner) with
// `inner_len` inner positions per image: out + n*n_stride + (row0 + i)*row_stride + inner.
// TO: the output type (float, or bf16: each element rounded once, here). accumulate (a float
// weight-grad's dw): add each finished value into the output instead (store_grad).
template <class TO>
struct OutMap {
  TO* out;
  int64_t inner_len, n_stride, row_stride, rows_per_group;
  const TO* bias;  // per global row, or null
  bool accumulate = false;

  void store(int64_t g, int64_t i0, int64_t rows, int64_t j0, int64_t cols, const float* tile) const {
    const int64_t n0 = j0 / inner_len, in0 = j0 % inner_len;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = g * rows_per_group + i0 + i;
      const float init = bias ? to_float(bias[row]) : 0.0f;
      const float* t = tile + i * NR;
      int64_t n = n0, in = in0;
      for (int64_t j = 0; j < cols;) {
        const int64_t len = std::min(cols - j, inner_len - in);
        store_run(out + n * n_stride + row * row_stride + in, t + j, len, init, accumulate);
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
template <class T>
inline void copy_row(float* __restrict dst, int64_t len, const T* __restrict src, int64_t i0, int64_t step, int64_t n) {
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
      const __m512 v = gemm::load16(lanes_between(lo - t, hi - t), src + i0 + t);
      _mm512_mask_storeu_ps(dst + t, lanes_between(0, len - t), v);
    }
    return;
  }
  if (step == 2) {
    // 16 outputs from the even lanes of two loads (a 7x7 stride-2 stem's weight-grad packs its
    // whole B panel this way); the loads' masks keep only the in-range even lanes.
    for (int64_t t = 0; t < len; t += 16) {
      const int64_t a = 2 * (lo - t), b = 2 * (hi - t);
      const uint32_t m = (lanes_between(a, b) & 0x5555u) | (lanes_between(a - 16, b - 16) & 0x5555u) << 16;
      _mm512_mask_storeu_ps(dst + t, lanes_between(0, len - t), gemm::load16_evens(m, src + i0 + 2 * t));
    }
    return;
  }
#endif
  for (int64_t t = 0; t < lo; ++t) dst[t] = 0.0f;
  if (step == 1)
    for (int64_t t = lo; t < hi; ++t) dst[t] = to_float(src[i0 + t]);
  else
    for (int64_t t = lo; t < hi; ++t) dst[t] = to_float(src[i0 + t * step]);
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
template <class T>
inline void prefetch_spans(const T* p, const int64_t* lo, const int64_t* hi, int n) {
  constexpr int64_t line = 64 / sizeof(T);
  for (int t = 0; t < n; ++t)
    for (int64_t e = lo[t]; e <= hi[t] + line - 1; e += line) asm volatile("prefetcht0 %0" : : "m"(p[e]));
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

// 16 lanes from p, p + CS, ..., p + 15 CS at the source lanes `src` (source_lanes), as Rows
// loads them; the others are zero and not read. Column stride 2 (the 7x7 stem) takes the even
// lanes of 32: its panel rows went through copy_row's per-run logic.
template <int CS, class Rows, class T>
inline __m512 load_lanes(uint32_t src, const T* p) {
  if constexpr (CS == 1) return Rows::load(static_cast<__mmask16>(src), p);
  else return Rows::load_evens(src, p);
}

template <class T>
struct ShiftGather {
  static constexpr int32_t kOutside = -(1 << 29);

  const T* src;
  int64_t chan, img, A, B, SH, SW, sa, sb, R, S;  // sa, sb: row and column strides, sb 1 or 2
  const int64_t* roff;  // R entries
  const int64_t* soff;  // S entries

  // Rows: gemm::RowsF32 or gemm::RowPairs.
  template <class Rows>
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t cols, Rows& out) const {
    if (sb == 2) pack_cs<2>(p0, kc, j0, cols, out);
    else pack_cs<1>(p0, kc, j0, cols, out);
    out.finish(kc);
  }

  template <int CS, class Rows>
  void pack_cs(int64_t p0, int64_t kc, int64_t j0, int64_t cols, Rows& out) const {
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
    // Image row and column of each lane's first tap; lanes past `cols` hold a value that no
    // offset brings inside the plane.
    alignas(64) int32_t lane_a[NR], lane_b[NR];
    std::fill(lane_a, lane_a + NR, kOutside);
    std::fill(lane_b, lane_b + NR, kOutside);
    for (int u = 0; u < nruns; ++u) {
      const Run& ru = runs[u];
      const int64_t base = ru.n * img + ru.a * sa * SW + (ru.b0 - ru.jj) * CS;
      for (int64_t l = ru.jj; l < ru.jj + ru.len; ++l) {
        lane_a[l] = static_cast<int32_t>(ru.a * sa);
        lane_b[l] = static_cast<int32_t>((ru.b0 + l - ru.jj) * CS);
        const int v = static_cast<int>(l / 16);
        const auto bit = static_cast<__mmask16>(1u << (l % 16));
        if (nl[v] > 0 && loads[v][nl[v] - 1].base == base + 16 * v * CS) loads[v][nl[v] - 1].mask |= bit;
        else loads[v][nl[v]++] = {base + 16 * v * CS, bit};
      }
    }
    // Lane validity per kernel row r and column s (bit l: tap inside the source plane), built in
    // a register: or-ing into the array went through memory, a tenth of the stem's packing.
    // Compared 16 lanes at a time: the per-lane loops were a third of a 32-channel layer's packing.
    const auto inside = [](const int32_t* lane, int64_t off, int64_t size) {
      uint64_t bits = 0;
      for (int v = 0; v < NV; ++v) {
        const __m512i at = _mm512_add_epi32(_mm512_load_si512(lane + 16 * v), _mm512_set1_epi32(static_cast<int>(off)));
        const __mmask16 ok = _mm512_cmpge_epi32_mask(at, _mm512_setzero_si512()) &
                             _mm512_cmplt_epi32_mask(at, _mm512_set1_epi32(static_cast<int>(size)));
        bits |= uint64_t{ok} << (16 * v);
      }
      return bits;
    };
    uint64_t rok[16], sok[16];
    for (int64_t r = 0; r < R; ++r) rok[r] = inside(lane_a, roff[r], SH);
    for (int64_t s = 0; s < S; ++s) sok[s] = inside(lane_b, soff[s], SW);
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
        if (nspans > 0 && lo <= span_hi[nspans - 1] + 16) span_hi[nspans - 1] = std::max(span_hi[nspans - 1], hi);
        else span_lo[nspans] = lo, span_hi[nspans++] = hi;
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
      // Two panel rows per step (put2): a bf16 pair is stored whole, with nothing held over.
      const auto rows = [&](auto two_loads) {
        const auto next = [&] {
          if (rs == 0) prefetch(c + PF);
          const int64_t t = rs;
          const T* from = src + c * chan + d[t];
          if (++rs == RS) {
            rs = 0;
            ++c;
          }
          return std::pair{t, from};
        };
        const auto row = [&](int64_t t, const T* from, int v) {
          __m512 val = load_lanes<CS, Rows>(m[t][v][0], from + base[v][0]);  // zero outside its lanes
          if constexpr (decltype(two_loads)::value)
            if (nl[v] == 2) val = _mm512_or_ps(val, load_lanes<CS, Rows>(m[t][v][1], from + base[v][1]));
          return val;
        };
        for (int64_t p = 0; p < kc; p += 2) {
          const auto [t0, from0] = next();
          if (p + 1 < kc) {
            const auto [t1, from1] = next();
            for (int v = 0; v < NV; ++v) out.put2(p, v, row(t0, from0, v), row(t1, from1, v));
          } else {
            for (int v = 0; v < NV; ++v) out.put(p, v, row(t0, from0, v));  // finish() pairs it
          }
        }
      };
      if (std::all_of(nl, nl + NV, [](int n) { return n <= 1; })) rows(std::false_type{});
      else rows(std::true_type{});
      return;
    }
    for (int64_t p = 0; p < kc; ++p) {
      if (rs == 0) prefetch(c + PF);
      const int64_t r = rs / S, s = rs % S;
      const uint64_t ok = rok[r] & sok[s];
      const T* from = src + c * chan + roff[r] * SW + soff[s];
      for (int v = 0; v < NV; ++v) {
        __m512 acc = _mm512_setzero_ps();
        const auto vok = static_cast<__mmask16>(ok >> (16 * v));
        for (int t = 0; t < nl[v]; ++t) {
          const auto m = static_cast<__mmask16>(loads[v][t].mask & vok);
          acc = _mm512_or_ps(acc, load_lanes<CS, Rows>(source_lanes<CS>(m), from + loads[v][t].base));
        }
        out.put(p, v, acc);
      }
      if (++rs == RS) {
        rs = 0;
        ++c;
      }
    }
  }
};
#endif

inline void zero_tail(float* dst, int64_t cols, int64_t kc) {
  if (cols == NR) return;
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t j = cols; j < NR; ++j) dst[p * NR + j] = 0.0f;
}

// An im2col operand: panel row p = (c, r, s) (c < chans, r < R, s < S) and column j = (n, a, b)
// (a < A, b < B) read src[n*img + c*chan + h*SW + v] at h = a*sa + r0 + r*rd, v = b*sb + s0 +
// s*sd, or zero where (h, v) lies outside the SH x SW plane. The forward reads x this way
// (h = p sh - ph + r dh), the data-grad's gather dy (h' = h + ph - r dh).
template <class T>
struct Im2col {
  const T* src;
  int64_t chan, img, A, B, SH, SW, sa, sb, R, S, r0, rd, s0, sd;

  // The strip of rows [p0, p0 + kc) and columns [j0, j0 + cols) in gemm.h's F32 layout, or
  // (Dst = bf16) gemm_bf16.h's pairs: ShiftGather writes those directly, the generic gather
  // through an fp32 stage.
  template <class Dst>
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t cols, Dst* __restrict dst) const {
#if defined(__AVX512F__)
    if ((sb == 1 || sb == 2) && R <= 16 && S <= 16) {
      int64_t roff[16], soff[16];
      for (int64_t r = 0; r < R; ++r) roff[r] = r0 + r * rd;
      for (int64_t c = 0; c < S; ++c) soff[c] = s0 + c * sd;
      gemm::RowsOf<Dst> rows{dst};
      return ShiftGather<T>{src, chan, img, A, B, SH, SW, sa, sb, R, S, roff, soff}.pack(p0, kc, j0, cols, rows);
    }
#endif
    gemm::via_stage(dst, kc, [&](float* strip) { gather(p0, kc, j0, cols, strip); });
  }

  void gather(int64_t p0, int64_t kc, int64_t j0, int64_t cols, float* __restrict dst) const {
    Run runs[NR];
    const int nruns = make_runs(j0, cols, A, B, runs);
    const int64_t RS = R * S;
    int64_t c = p0 / RS, r = (p0 % RS) / S, sc = p0 % S;
    for (int64_t p = 0; p < kc; ++p) {
      float* d = dst + p * NR;
      for (int u = 0; u < nruns; ++u) {
        const Run& ru = runs[u];
        const int64_t h = ru.a * sa + r0 + r * rd;
        if (h < 0 || h >= SH) std::fill(d + ru.jj, d + ru.jj + ru.len, 0.0f);
        else copy_row(d + ru.jj, ru.len, src + ru.n * img + c * chan + h * SW, ru.b0 * sb + s0 + sc * sd, sb, SW);
      }
      if (++sc == S) {
        sc = 0;
        if (++r == R) {
          r = 0;
          ++c;
        }
      }
    }
    zero_tail(dst, cols, kc);
  }
};

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

#if defined(__AVX512F__)
// tap_ok[pq]: bit r*S + s set where output pixel pq's tap (r, s) lies inside x; for unit
// strides with Q = W (R*S <= 16), where that tap reads x at pq + (r dh - ph) W + s dw - pw. Padded
// by 16 zeros so that a vector of 16 pixels may load past the last one.
inline std::vector<uint16_t> tap_table(const Conv2dShape& s) {
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
#endif

}  // namespace conv2d_pack
}  // namespace fastopt::cpu::FASTOPT_ISA

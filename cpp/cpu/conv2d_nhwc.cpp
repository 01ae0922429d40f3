// Conv2d on the CPU in channels_last (NHWC) layout, groups = 1, float32 or bfloat16: what
// torch's channels_last tensors hold as they lie, so the PyTorch front converts nothing.
//
// Math (x (N, H, W, C), y and dy (N, P, Q, K), w (K, C, R, S) as torch stores it, dw likewise):
//   forward      y[n,p,q,k]  = b[k] + sum_(r,s,c) x[n, p*sh-ph+r*dh, q*sw-pw+s*dw, c] * w[k,c,r,s]
//   data-grad    dx[n,h,w,c] = sum_(r,s,k) dy[n, (h+ph-r*dh)/sh, (w+pw-s*dw)/sw, k] * w[k,c,r,s]
//                (terms whose division is inexact or out of range are absent)
//   weight-grad  dw[k,c,r,s] = sum_(n,p,q) dy[n,p,q,k] * x[n, p*sh-ph+r*dh, q*sw-pw+s*dw, c]
//   bias-grad    db[k]       = sum_(n,p,q) dy[n,p,q,k]
//
// Why no packing of x: in NHWC a pixel's channels are contiguous, so the forward and the
// data-grad broadcast a pixel's channel pair (one 32-bit load) straight from the source and
// multiply it into the weights, packed once per call as pair-interleaved rows over the output
// channels ("VNNI", the B layout of gemm_bf16.h). Each pixel of a tile reads its source row
// through a pointer per tap. Output pixels are grouped into classes of equal live taps (edge
// positions, the data-grad's stride phases, the interior) and a tile takes pixels of one class
// (gathered across a group of images), so a padded or absent tap is skipped for the whole tile;
// the interior, where dil_w = 1, reads each window row as one run of S C channels (one pointer
// per row). The NCHW im2col path spends 15-25% of a 32-64-channel layer packing strips and
// multiplies padded taps like any other (bench/results/cpu-nhwc-proto-2026-12-07d/).
//   The data-grad is the same engine run from dy with the weights transposed. The weight-grad
// reduces over pixels, which are not contiguous per channel, so it packs both operands per block
// of pixel pairs and reduces dw^T: rows (tap, channel) broadcast from packed x pairs, lanes
// filters from packed dy pairs. Each thread owns fixed (row tile, lane block) units and walks all
// blocks in one fixed order, so every dw element is summed in one order for any thread count.
//
// Engine tile: MR pixels x NV vectors of 16 output lanes, MR x NV fp32 accumulators (6 x 4,
// 8 x 3, 12 x 2, 12 x 1: 24 zmm, with NV weight vectors and one broadcast). The AVX512-BF16 copy
// multiplies with VDPBF16PS (two products per lane and instruction, exact products, fp32 sums;
// subnormal bf16 inputs read as zero, as the instruction is defined). The other copies, and fp32
// data, run the portable loop over the same panels (fp32 arithmetic; bf16 products are exact).
// Outputs are rounded to bf16 once, at the store; dw and db stay fp32.
//
// Bytes: x, w, y (dy) once each from memory (2 bytes per element in bf16); a tile rereads its
// source rows once per 64-lane block of outputs, from L1/L2. Flops: 2 N K C R S P Q per pass, the
// padded taps excluded. Launch: an OpenMP team over (image group, class pair, chunk of 96 pixels,
// lane block) items for forward and data-grad (static: a thread's contiguous items share source
// rows in its cache; dynamic ran 7-15% slower on 32>32@32), over fixed units
// for the weight-grad, over fixed pixel chunks for the bias-grad. Timings and what was tried:
// bench/results/cpu-conv2d-nhwc-2026-12-08/.
#include "fastopt/conv2d.h"
#include "isa.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gemm_bf16.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(
    void conv2d_nhwc_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
    void conv2d_nhwc_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y);
    void conv2d_nhwc_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
    void conv2d_nhwc_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx);
    void conv2d_nhwc_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate);
    void conv2d_nhwc_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate);)

namespace FASTOPT_ISA {
namespace {

constexpr int64_t kLanes = 16;
constexpr int kMaxMR = 12;
constexpr int64_t kChunkPixels = 96;  // a multiple of every MR, so chunks hold whole tiles

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Weights as the engine reads them: for tap t, reduction-channel pair cp and output lane l, the
// pair (w(t, 2cp, l), w(t, 2cp+1, l)) at ((t * pairs + cp) * lanes + l) * 2. Lanes are padded to
// 16 and an odd last channel is paired with zero, so every load is whole.
template <class T>
struct Panel {
  int64_t taps, cin, pairs, cout, lanes;
  std::vector<T> v;
  const T* at(int64_t t, int64_t cp, int64_t l) const { return v.data() + ((t * pairs + cp) * lanes + l) * 2; }
};

template <class T, class Get>
Panel<T> make_panel(int64_t taps, int64_t cin, int64_t cout, Get get) {
  Panel<T> p{taps, cin, (cin + 1) / 2, cout, round_up(cout, kLanes), {}};
  p.v.assign(static_cast<size_t>(taps * p.pairs * p.lanes * 2), T{});
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t c = 0; c < cin; ++c)
      for (int64_t l = 0; l < cout; ++l) p.v[((t * p.pairs + c / 2) * p.lanes + l) * 2 + c % 2] = get(t, c, l);
  return p;
}

// acc[i][l] = sum over taps t and channels c of rows_t[i][c] * panel(t, c, l0 + l), stored (+ bias)
// to outs[i][l0 + l] for the first `count` pixels and the first nl lanes. rows(t, rp) fills tap t's
// MR row pointers and says whether any pixel reaches it (else the tap is skipped): asked tap by
// tap, so the pointer arithmetic runs beside the previous tap's multiplies instead of before them
// (a table of all R S MR pointers up front cost 17% of a 32-channel layer).
template <int MR, int NV, class T, class Rows>
void tile(const Panel<T>& w, Rows rows, int64_t l0, int64_t nl, int count, T* const* outs, const T* bias) {
  const T* rp[MR];
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, bf16>) {
    __m512 acc[MR][NV];
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
    const int64_t full = w.cin / 2;
    for (int64_t t = 0; t < w.taps; ++t) {
      if (!rows(t, rp)) continue;
      const T* wt = w.at(t, 0, l0);
      auto pair = [&](int64_t cp, auto load) {
        __m512i b[NV];
        for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(wt + cp * w.lanes * 2 + 32 * v);
        for (int i = 0; i < MR; ++i) {
          const __m512bh a = (__m512bh)_mm512_set1_epi32(load(rp[i] + 2 * cp));
          for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], a, (__m512bh)b[v]);
        }
      };
      for (int64_t cp = 0; cp < full; ++cp)
        pair(cp, [](const T* p) {
          int32_t u;
          std::memcpy(&u, p, 4);
          return u;
        });
      // An odd last channel: its pair partner would be the next pixel's first channel (or past
      // the array), so read 16 bits; the panel pairs it with zero.
      if (full < w.pairs) pair(full, [](const T* p) { return static_cast<int32_t>(p->bits); });
    }
    for (int v = 0; v < NV; ++v) {
      const int64_t l = 16 * v;
      if (l >= nl) break;
      const __mmask16 m = nl - l >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (nl - l)) - 1);
      const __m512 bv = bias ? gemm::load16(m, bias + l0 + l) : _mm512_setzero_ps();
      for (int i = 0; i < count; ++i) gemm::store16(m, outs[i] + l0 + l, _mm512_add_ps(acc[i][v], bv));
    }
    return;
  }
#endif
  float acc[MR][NV * kLanes] = {};
  for (int64_t t = 0; t < w.taps; ++t) {
    if (!rows(t, rp)) continue;
    for (int64_t cp = 0; cp < w.pairs; ++cp) {
      const T* wt = w.at(t, cp, l0);
      const bool odd = 2 * cp + 1 == w.cin;
      for (int i = 0; i < MR; ++i) {
        const float a0 = to_float(rp[i][2 * cp]), a1 = odd ? 0.0f : to_float(rp[i][2 * cp + 1]);
        for (int j = 0; j < NV * kLanes; ++j) acc[i][j] += a0 * to_float(wt[2 * j]) + a1 * to_float(wt[2 * j + 1]);
      }
    }
  }
  for (int i = 0; i < count; ++i)
    for (int64_t j = 0; j < nl; ++j)
      outs[i][l0 + j] = from_float<T>(acc[i][j] + (bias ? to_float(bias[l0 + j]) : 0.0f));
}

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

Dim forward_dim(int64_t out, int64_t size, int64_t taps, int64_t stride, int64_t pad, int64_t dil) {
  auto at = [=](int64_t o, int64_t t) { return o * stride - pad + t * dil; };
  auto live = [=](int64_t o, int64_t t) { return at(o, t) >= 0 && at(o, t) < size; };
  return make_dim(out, size, taps, taps, [=](int64_t o, int64_t t) { return live(o, t) ? at(o, t) : kDead; }, live);
}

// A folded dimension (fold_rows): one tap, a run of `run` pixels from o * stride - pad, live where
// the run overlaps the image; classed by the unfolded taps, so runs across an edge are apart.
Dim folded_dim(int64_t out, int64_t size, int64_t run, int64_t stride, int64_t pad) {
  auto start = [=](int64_t o) { return o * stride - pad; };
  return make_dim(
      out, size, 1, run, [=](int64_t o, int64_t) { return start(o) + run > 0 && start(o) < size ? start(o) : kDead; },
      [=](int64_t o, int64_t t) { return start(o) + t >= 0 && start(o) + t < size; });
}

Dim data_grad_dim(int64_t out, int64_t size, int64_t taps, int64_t stride, int64_t pad, int64_t dil) {
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
bool fold_rows(int64_t C, int64_t S, int64_t dil_w) { return S > 1 && dil_w == 1 && C * S <= 64 && C < 16; }

// One pass of the engine: out (N, OH, OW, cout) from src (N, IH, IW, pixel) along dims dh, dw;
// each source row read is `run` pixels long (1, or S when folded: w.cin = run * pixel).
// wide (with its panel): the folded form of an unfolded pass (run = wide->run), for the classes
// whose window rows lie wholly inside the image (the interior): one pointer and one reduction of
// S C channels per window row instead of S of C, the same sums in another order. Where dil_w = 1
// this is every layer's interior: a 32-channel 3 x 3 layer then runs 3 taps of 48 pairs per tile,
// not 9 of 16.
struct Wide {
  const Dim* dw;
  int64_t run;
};
template <class T>
void engine(const Panel<T>& w, const T* src, T* out, const T* bias, int64_t N, const Dim& dh, const Dim& dw,
            int64_t pixel, int64_t run, const Panel<T>* wide_w = nullptr, Wide wide = {nullptr, 1}) {
  const int64_t cout = w.cout, R = dh.taps;
  const int64_t cin = std::max(w.cin, wide_w ? wide_w->cin : 0);
  const std::vector<T> zeros(static_cast<size_t>(cin + 2), T{});
  const int64_t lane_blocks = (cout + 63) / 64;
  // Items: chunks of kChunkPixels pixels of one class pair, in (image, row, column) order, group
  // of kMaxMR images by group: a corner class still fills a tile (one pixel per image), and the
  // group's images stay in cache while all of its classes run (class by class over the whole batch
  // fetched each edge pixel's rows from memory again).
  struct Item {
    int64_t ch, cw, n0, first, last;  // pixels first .. last of the class pair, counted from image n0
  };
  std::vector<Item> items;
  for (int64_t n0 = 0; n0 < N; n0 += kMaxMR)
    for (size_t ch = 0; ch < dh.classes.size(); ++ch)
      for (size_t cw = 0; cw < dw.classes.size(); ++cw) {
        const int64_t total = std::min<int64_t>(kMaxMR, N - n0) *
                              static_cast<int64_t>(dh.classes[ch].size() * dw.classes[cw].size());
        for (int64_t f = 0; f < total; f += kChunkPixels)
          items.push_back({static_cast<int64_t>(ch), static_cast<int64_t>(cw), n0, f,
                           std::min(total, f + kChunkPixels)});
      }
  const int64_t work = static_cast<int64_t>(items.size()) * lane_blocks;
#pragma omp parallel
  {
    std::vector<T> edge(run > 1 || wide_w ? static_cast<size_t>(kMaxMR * (cin + 2)) : 0);
    std::vector<int64_t> hv(static_cast<size_t>(R * kMaxMR));  // [r][i]: (image row) * IW, or -1
    T* outs[kMaxMR];
    int64_t ows[kMaxMR];
#pragma omp for schedule(static)
    for (int64_t it = 0; it < work; ++it) {
      const Item& item = items[it / lane_blocks];
      const int64_t lb = it % lane_blocks;
      const std::vector<int64_t>&hs = dh.classes[item.ch], &wsv = dw.classes[item.cw];
      bool interior = wide_w != nullptr;
      for (int64_t t = 0; interior && t < dw.taps; ++t) interior = dw.src[wsv[0] * dw.taps + t] != kDead;
      const Panel<T>& P = interior ? *wide_w : w;
      const Dim& D = interior ? *wide.dw : dw;
      const int64_t S = D.taps, rn = interior ? wide.run : run;
      const int64_t nh = static_cast<int64_t>(hs.size()), nw = static_cast<int64_t>(wsv.size());
      const int64_t l0 = lb * 64, nl = std::min<int64_t>(64, cout - l0), nv = (nl + 15) / 16;
      const int mr = nv == 4 ? 6 : nv == 3 ? 8 : 12;
      for (int64_t f = item.first; f < item.last; f += mr) {
        const int count = static_cast<int>(std::min<int64_t>(mr, item.last - f));
        // (image, row, column) walked from the tile's first pixel: no division per pixel.
        int64_t n = item.n0 + f / (nh * nw), ih = f / nw % nh, iw = f % nw;
        for (int i = 0; i < mr; ++i) {
          const int64_t oh = hs[ih];
          ows[i] = wsv[iw];
          outs[i] = out + ((n * dh.out + oh) * dw.out + ows[i]) * cout;
          for (int64_t r = 0; r < R; ++r) {
            const int64_t h = dh.src[oh * R + r];
            hv[r * kMaxMR + i] = i < count && h != kDead ? (n * dh.size + h) * dw.size : -1;
          }
          if (i + 1 < count && ++iw == nw) {  // pixels past count repeat the last
            iw = 0;
            if (++ih == nh) ih = 0, ++n;
          }
        }
        auto rows = [&](int64_t t, const T** rp) {
          const int64_t r = t / S, s = t % S;
          const int64_t* hr = hv.data() + r * kMaxMR;
          bool any = false;
          for (int i = 0; i < mr; ++i) {
            const int64_t v = D.src[ows[i] * S + s];
            const bool ok = hr[i] >= 0 && v != kDead;
            rp[i] = ok ? src + (hr[i] + v) * pixel : zeros.data();
            any |= ok;
            if (rn > 1 && ok && (v < 0 || v + rn > dw.size)) {  // a folded run across an edge
              T* e = edge.data() + i * (cin + 2);
              for (int64_t j = 0; j < rn; ++j)
                for (int64_t c = 0; c < pixel; ++c)
                  e[j * pixel + c] = v + j >= 0 && v + j < dw.size ? src[(hr[i] + v + j) * pixel + c] : T{};
              rp[i] = e;
            }
          }
          return any;
        };
        switch (nv) {
          case 4: tile<6, 4>(P, rows, l0, nl, count, outs, bias); break;
          case 3: tile<8, 3>(P, rows, l0, nl, count, outs, bias); break;
          case 2: tile<12, 2>(P, rows, l0, nl, count, outs, bias); break;
          default: tile<12, 1>(P, rows, l0, nl, count, outs, bias); break;
        }
      }
    }
  }
}

template <class T>
void forward(const Conv2dShape& s, const T* x, const T* w, const T* b, T* y) {
  const int64_t taps = s.R * s.S;
  const Dim dh = forward_dim(s.P, s.H, s.R, s.stride_h, s.pad_h, s.dil_h);
  if (fold_rows(s.C, s.S, s.dil_w)) {  // panel row (r, (s, c)): one tap per window row
    const Panel<T> panel = make_panel<T>(s.R, s.S * s.C, s.K, [&](int64_t r, int64_t sc, int64_t k) {
      return w[(k * s.C + sc % s.C) * taps + r * s.S + sc / s.C];
    });
    return engine(panel, x, y, b, s.N, dh, folded_dim(s.Q, s.W, s.S, s.stride_w, s.pad_w), s.C, s.S);
  }
  const Panel<T> panel = make_panel<T>(taps, s.C, s.K,
                                       [&](int64_t t, int64_t c, int64_t k) { return w[(k * s.C + c) * taps + t]; });
  const Dim dw = forward_dim(s.Q, s.W, s.S, s.stride_w, s.pad_w, s.dil_w);
  if (s.S == 1 || s.dil_w != 1) return engine(panel, x, y, b, s.N, dh, dw, s.C, 1);
  // The interior's window rows as runs of S pixels from q sw - pw (folded_dim's sources).
  const Panel<T> wide = make_panel<T>(s.R, s.S * s.C, s.K, [&](int64_t r, int64_t sc, int64_t k) {
    return w[(k * s.C + sc % s.C) * taps + r * s.S + sc / s.C];
  });
  const Dim runs = folded_dim(s.Q, s.W, s.S, s.stride_w, s.pad_w);
  engine(panel, x, y, b, s.N, dh, dw, s.C, 1, &wide, Wide{&runs, s.S});
}

template <class T>
void backward_data(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  const int64_t taps = s.R * s.S;
  const Panel<T> panel = make_panel<T>(taps, s.K, s.C,
                                       [&](int64_t t, int64_t k, int64_t c) { return w[(k * s.C + c) * taps + t]; });
  const Dim dh = data_grad_dim(s.H, s.P, s.R, s.stride_h, s.pad_h, s.dil_h);
  const Dim dw = data_grad_dim(s.W, s.Q, s.S, s.stride_w, s.pad_w, s.dil_w);
  if (s.S == 1 || s.dil_w != 1 || s.stride_w != 1) return engine<T>(panel, dy, dx, nullptr, s.N, dh, dw, s.K, 1);
  // Unit stride: dx column w reads dy columns w + pw - s, s = S - 1 ... 0, one run of S pixels
  // from w + pw - (S - 1), so run element j is tap S - 1 - j.
  const Panel<T> wide = make_panel<T>(s.R, s.S * s.K, s.C, [&](int64_t r, int64_t jk, int64_t c) {
    return w[(jk % s.K * s.C + c) * taps + r * s.S + (s.S - 1 - jk / s.K)];
  });
  Dim runs{s.W, s.Q, 1, std::vector<int64_t>(static_cast<size_t>(s.W)), {}};
  for (int64_t o = 0; o < s.W; ++o) runs.src[o] = o + s.pad_w - (s.S - 1);
  engine<T>(panel, dy, dx, nullptr, s.N, dh, dw, s.K, 1, &wide, Wide{&runs, s.S});
}

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

// The weight-grad as dw^T: rows are (tap, channel) pairs, lanes are filters. acc (MR rows x NV * 16
// lanes, fp32, row stride ld) += sum over the block's pixel pairs pp of the x pair of each row
// (xq + (pp * xs + i) * 2, broadcast) times the dy pairs of the lanes (dyq + (pp * Kp) * 2).
template <int MR, int NV, class T>
void wgrad_tile(const T* xq, int64_t xs, const T* dyq, int64_t Kp, int64_t pairs, float* acc, int64_t ld) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, bf16>) {
    __m512 c[MR][NV];
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) c[i][v] = _mm512_loadu_ps(acc + i * ld + 16 * v);
    for (int64_t pp = 0; pp < pairs; ++pp) {
      __m512i b[NV];
      for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(dyq + pp * Kp * 2 + 32 * v);
      const T* ap = xq + pp * xs * 2;
      for (int i = 0; i < MR; ++i) {
        int32_t u;
        std::memcpy(&u, ap + 2 * i, 4);
        const __m512bh a = (__m512bh)_mm512_set1_epi32(u);
        for (int v = 0; v < NV; ++v) c[i][v] = _mm512_dpbf16_ps(c[i][v], a, (__m512bh)b[v]);
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(acc + i * ld + 16 * v, c[i][v]);
    return;
  }
#endif
  for (int64_t pp = 0; pp < pairs; ++pp) {
    const T* ap = xq + pp * xs * 2;
    const T* bp = dyq + pp * Kp * 2;
    for (int i = 0; i < MR; ++i) {
      const float a0 = to_float(ap[2 * i]), a1 = to_float(ap[2 * i + 1]);
      for (int j = 0; j < NV * kLanes; ++j) acc[i * ld + j] += a0 * to_float(bp[2 * j]) + a1 * to_float(bp[2 * j + 1]);
    }
  }
}

// dw[k, c, t] = sum over output pixels of x_t[pixel, c] * dy[pixel, k], reduced as dw^T: rows
// (t, c), T C of them, so a 3-channel stem wastes no lanes; lanes k in blocks of 32. Each thread
// owns a fixed range of (row tile, lane block) units and walks every block of pixel pairs in a
// fixed order, packing only its own rows of x (one interleave per pixel pair and tap, or per
// window row when folded) and all of dy. Pixels come class pair by class pair (the engine's
// classes: equal live taps), so a block's padded taps are the same for all its pixels: their rows
// are packed as zeros and the row tiles that hold nothing else are skipped (31% of a 4 x 4
// image's 3 x 3 work).
template <class T>
void backward_weight(const Conv2dShape& s, const T* dy, const T* x, float* dw, bool accumulate) {
  constexpr int MR = 12;
  const int64_t taps = s.R * s.S, rows = taps * s.C;
  const int64_t rtiles = (rows + MR - 1) / MR, lblocks = (s.K + 31) / 32, Kp = lblocks * 32;
  const int64_t units = rtiles * lblocks;
  const bool fold = fold_rows(s.C, s.S, s.dil_w);
  // Large images keep the flat pixel order (one class per dimension): their few edge pixels
  // save little, and consecutive pixels read consecutive rows.
  auto flat = [](Dim d) {
    size_t largest = 0;
    for (const auto& c : d.classes) largest = std::max(largest, c.size());
    if (8 * static_cast<int64_t>(largest) >= 7 * d.out) {
      d.classes.assign(1, std::vector<int64_t>(static_cast<size_t>(d.out)));
      for (int64_t o = 0; o < d.out; ++o) d.classes[0][o] = o;
    }
    return d;
  };
  const Dim dh = flat(forward_dim(s.P, s.H, s.R, s.stride_h, s.pad_h, s.dil_h));
  const Dim dwd = flat(fold ? folded_dim(s.Q, s.W, s.S, s.stride_w, s.pad_w)
                            : forward_dim(s.Q, s.W, s.S, s.stride_w, s.pad_w, s.dil_w));
  // Packing units: (window row r, tap column sd), sd < Sd (1 when folded), width Wd rows each.
  const int64_t Sd = dwd.taps, Wd = fold ? s.S * s.C : s.C, punits = s.R * Sd;
  std::vector<int64_t> unit_r(static_cast<size_t>(punits)), unit_s(unit_r.size());  // no division per row
  for (int64_t u = 0; u < punits; ++u) unit_r[u] = u / Sd, unit_s[u] = u % Sd;
  // 64 pixel pairs per block: a thread's dy pairs (Kp lanes) and a tile's x pairs stay in L1.
  constexpr int64_t block = 64;
  // Images in groups of ~256 KiB of x (at least 12, so a corner class still makes a few pairs),
  // all classes of a group before the next, so an edge class finds its rows in cache.
  const int64_t group = std::min(s.N, std::max<int64_t>(12, (256 << 10) / std::max<int64_t>(1, s.H * s.W * s.C * 2)));
  std::vector<float> acc(static_cast<size_t>(rtiles * MR * Kp), 0.0f);  // [(t, c)][k]
  const std::vector<T> zeros(static_cast<size_t>(std::max(Wd, s.K) + 64), T{});
#pragma omp parallel
  {
#ifdef _OPENMP
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int64_t tid = 0, team = 1;
#endif
    const int64_t u0 = units * tid / team, u1 = units * (tid + 1) / team;
    // The packing units this thread's rows touch (units run row tile by row tile).
    const int64_t p0 = u0 < u1 ? u0 / lblocks * MR / Wd : 0;
    const int64_t p1 = u0 < u1 ? std::min(punits, ((u1 - 1) / lblocks * MR + MR - 1) / Wd + 1) : 0;
    const int64_t xs = round_up((p1 - p0) * Wd + 64, 2);  // x pairs per pixel pair (+ interleave spill)
    std::vector<T> dyq(static_cast<size_t>(block * Kp * 2)), xq(static_cast<size_t>(block * xs * 2 + 2 * MR));
    std::vector<T> edge(fold ? static_cast<size_t>(2 * (Wd + 2)) : 0);
    std::vector<int64_t> img(static_cast<size_t>(2 * block)), oh(img.size()), ow(img.size());
    std::vector<unsigned char> live(static_cast<size_t>(punits));
    // Pixel j's source row for packing unit u: x's, a zero row, or an edge run copied with zeros.
    auto x_row = [&](int64_t j, int64_t u, T* scratch) -> const T* {
      const int64_t h = img[j] < 0 ? kDead : dh.src[oh[j] * s.R + unit_r[u]], v = dwd.src[ow[j] * Sd + unit_s[u]];
      if (h == kDead || v == kDead) return zeros.data();
      const T* row = x + (img[j] * s.H + h) * s.W * s.C;
      if (!fold || (v >= 0 && v + s.S <= s.W)) return row + v * s.C;
      for (int64_t e = 0; e < s.S; ++e)
        for (int64_t c = 0; c < s.C; ++c)
          scratch[e * s.C + c] = v + e >= 0 && v + e < s.W ? row[(v + e) * s.C + c] : T{};
      return scratch;
    };
    for (int64_t n0 = 0; u0 < u1 && n0 < s.N; n0 += group)
      for (size_t ch = 0; ch < dh.classes.size(); ++ch)
        for (size_t cw = 0; cw < dwd.classes.size(); ++cw) {
          const std::vector<int64_t>&hs = dh.classes[ch], &wsv = dwd.classes[cw];
          const int64_t nh = static_cast<int64_t>(hs.size()), nw = static_cast<int64_t>(wsv.size());
          const int64_t total = std::min(group, s.N - n0) * nh * nw;
          for (int64_t u = p0; u < p1; ++u) {  // live for some pixel of the class pair
            bool in_h = false, in_w = false;
            for (const int64_t h : hs) in_h |= dh.src[h * s.R + unit_r[u]] != kDead;
            for (const int64_t w : wsv) in_w |= dwd.src[w * Sd + unit_s[u]] != kDead;
            live[u] = in_h && in_w;
          }
          for (int64_t first = 0; first < total; first += 2 * block) {
            const int64_t pairs = std::min(block, (total - first + 1) / 2);
            for (int64_t j = 0, n = n0 + first / (nh * nw), ih = first / nw % nh, iw = first % nw; j < 2 * pairs; ++j) {
              img[j] = first + j < total ? n : -1;
              oh[j] = hs[ih];
              ow[j] = wsv[iw];
              if (++iw == nw) {
                iw = 0;
                if (++ih == nh) ih = 0, ++n;
              }
            }
            for (int64_t pp = 0; pp < pairs; ++pp) {
              const T* d0 = img[2 * pp] < 0 ? zeros.data()
                                            : dy + ((img[2 * pp] * s.P + oh[2 * pp]) * s.Q + ow[2 * pp]) * s.K;
              const T* d1 = img[2 * pp + 1] < 0
                                ? zeros.data()
                                : dy + ((img[2 * pp + 1] * s.P + oh[2 * pp + 1]) * s.Q + ow[2 * pp + 1]) * s.K;
              interleave(d0, d1, s.K, Kp, dyq.data() + pp * Kp * 2);
              // Units in order: each interleave's zero spill past Wd is overwritten by the next.
              for (int64_t u = p0; u < p1; ++u) {
                T* dst = xq.data() + (pp * xs + (u - p0) * Wd) * 2;
                if (!live[u]) {
                  interleave(zeros.data(), zeros.data(), Wd, round_up(Wd, kLanes), dst);
                  continue;
                }
                interleave(x_row(2 * pp, u, edge.data()), x_row(2 * pp + 1, u, edge.data() + Wd + 2), Wd,
                           round_up(Wd, kLanes), dst);
              }
            }
            for (int64_t unit = u0; unit < u1; ++unit) {
              const int64_t rt = unit / lblocks, lb = unit % lblocks;
              bool any = false;
              for (int64_t u = rt * MR / Wd; u <= std::min(rows - 1, rt * MR + MR - 1) / Wd; ++u) any |= live[u] != 0;
              if (!any) continue;
              wgrad_tile<MR, 2>(xq.data() + (rt * MR - p0 * Wd) * 2, xs, dyq.data() + lb * 64, Kp, pairs,
                                acc.data() + rt * MR * Kp + lb * 32, Kp);
            }
          }
        }
  }
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t c = 0; c < s.C; ++c)
      for (int64_t t = 0; t < taps; ++t)
        store_grad(dw + (k * s.C + c) * taps + t, acc[(t * s.C + c) * Kp + k], accumulate);
}

}  // namespace

void conv2d_nhwc_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  forward(s, x, w, b, y);
}
void conv2d_nhwc_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y) {
  forward(s, x, w, b, y);
}
void conv2d_nhwc_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  backward_data(s, dy, w, dx);
}
void conv2d_nhwc_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx) {
  backward_data(s, dy, w, dx);
}
void conv2d_nhwc_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  backward_weight(s, dy, x, dw, accumulate);
}
void conv2d_nhwc_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate) {
  backward_weight(s, dy, x, dw, accumulate);
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void conv2d_nhwc_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  FASTOPT_CPU_DISPATCH(conv2d_nhwc_forward(s, x, w, b, y))
}
void conv2d_nhwc_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y) {
  FASTOPT_CPU_DISPATCH(conv2d_nhwc_forward(s, x, w, b, y))
}
void conv2d_nhwc_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  FASTOPT_CPU_DISPATCH(conv2d_nhwc_backward_data(s, dy, w, dx))
}
void conv2d_nhwc_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx) {
  FASTOPT_CPU_DISPATCH(conv2d_nhwc_backward_data(s, dy, w, dx))
}
void conv2d_nhwc_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  FASTOPT_CPU_DISPATCH(conv2d_nhwc_backward_weight(s, dy, x, dw, accumulate))
}
void conv2d_nhwc_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate) {
  FASTOPT_CPU_DISPATCH(conv2d_nhwc_backward_weight(s, dy, x, dw, accumulate))
}

// Memory-bound: fixed chunks of pixel rows summed in double, then the chunks in order, so the
// result does not depend on the thread count.
template <class T>
static void nhwc_backward_bias(const Conv2dShape& s, const T* dy, float* db, bool accumulate) {
  constexpr int64_t kRows = 1024;
  const int64_t pixels = s.N * s.P * s.Q, chunks = (pixels + kRows - 1) / kRows;
  std::vector<double> part(static_cast<size_t>(chunks * s.K), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    double* sum = part.data() + ch * s.K;
    for (int64_t pix = ch * kRows; pix < std::min(pixels, (ch + 1) * kRows); ++pix)
      for (int64_t k = 0; k < s.K; ++k) sum[k] += to_float(dy[pix * s.K + k]);
  }
  for (int64_t k = 0; k < s.K; ++k) {
    double total = 0.0;
    for (int64_t ch = 0; ch < chunks; ++ch) total += part[ch * s.K + k];
    store_grad(db + k, static_cast<float>(total), accumulate);
  }
}
void conv2d_nhwc_backward_bias(const Conv2dShape& s, const float* dy, float* db, bool accumulate) {
  nhwc_backward_bias(s, dy, db, accumulate);
}
void conv2d_nhwc_backward_bias(const Conv2dShape& s, const bf16* dy, float* db, bool accumulate) {
  nhwc_backward_bias(s, dy, db, accumulate);
}
#endif

}  // namespace fastopt::cpu

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
// reduces over pixels, which are not contiguous per channel, so it packs both operands
// (conv2d_nhwc_wgrad.cpp); what the files share is in conv2d_nhwc.h.
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
// rows in its cache; dynamic ran 7-15% slower on 32>32@32), over fixed pixel chunks for the
// bias-grad. Timings, and what was tried and not kept:
// bench/results/README-2026-12-08.md.
#include "fastopt/conv2d.h"
#include "isa.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "conv2d_nhwc.h"

namespace fastopt::cpu {

namespace FASTOPT_ISA {
namespace {
using namespace nhwc;

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

// One pass of the engine: out (N, OH, OW, cout) from src (N, IH, IW, pixel) along dims dh, dw;
// each source row read is `run` pixels long (1, or S when folded: w.cin = run * pixel).
// wide (with its panel): the folded form of an unfolded pass (run = wide->run), for the classes
// whose window rows lie wholly inside the image (the interior): one pointer and one reduction of
// S C channels per window row instead of S of C, the same sums in another order. Where dil_w = 1
// this is every layer's interior: a 32-channel 3 x 3 layer then runs 3 taps of 48 pairs per tile,
// not 9 of 16.
// Wide rows pay where a tap's reduction is short (C < 128: under 64 pairs per tap); for wider
// layers the 3x larger panel slice per window row cost more in cache than the taps saved
// (512@4 forward: 21-22 ms unfolded, 22-24 wide).
constexpr int64_t kWideUpTo = 128;
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
  if (s.S == 1 || s.dil_w != 1 || s.C >= kWideUpTo) return engine(panel, x, y, b, s.N, dh, dw, s.C, 1);
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
  if (s.S == 1 || s.dil_w != 1 || s.stride_w != 1 || s.K >= kWideUpTo)
    return engine<T>(panel, dy, dx, nullptr, s.N, dh, dw, s.K, 1);
  // Unit stride: dx column w reads dy columns w + pw - s, s = S - 1 ... 0, one run of S pixels
  // from w + pw - (S - 1), so run element j is tap S - 1 - j.
  const Panel<T> wide = make_panel<T>(s.R, s.S * s.K, s.C, [&](int64_t r, int64_t jk, int64_t c) {
    return w[(jk % s.K * s.C + c) * taps + r * s.S + (s.S - 1 - jk / s.K)];
  });
  Dim runs{s.W, s.Q, 1, std::vector<int64_t>(static_cast<size_t>(s.W)), {}};
  for (int64_t o = 0; o < s.W; ++o) runs.src[o] = o + s.pad_w - (s.S - 1);
  engine<T>(panel, dy, dx, nullptr, s.N, dh, dw, s.K, 1, &wide, Wide{&runs, s.S});
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
#endif

}  // namespace fastopt::cpu

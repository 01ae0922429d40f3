// Conv2d weight-grad on the CPU in channels_last (NHWC) layout, groups = 1, float32 or bfloat16
// (the forward and data-grad, and the layout's reasons: conv2d_nhwc.cpp).
//
// Math: dw[k,c,r,s] = sum_(n,p,q) dy[n,p,q,k] * x[n, p*sh-ph+r*dh, q*sw-pw+s*dw, c], as dw^T:
// rows (tap, channel), lanes filters. The pixels are the reduction, and they are not contiguous
// per channel, so both operands are packed per block of 64 pixel pairs: x pairs (one interleave
// per pixel pair and tap, or per window row when folded) broadcast per row, dy pairs over the
// lanes, multiplied with VDPBF16PS (other copies and fp32: the portable loop, as the engine's).
// Bytes: x is read once per tap it feeds (R S times, from cache), dy once per thread; dw (fp32)
// once. Flops: 2 N K C R S P Q, less the row tiles of padded taps. Launch: an OpenMP team, each
// thread owning a fixed range of (row tile, lane block) units and walking every block in one
// fixed order, so every dw element is summed in one order for any thread count.
#include "conv2d_nhwc.h"

#include <cstring>
#include <type_traits>

namespace fastopt::cpu {
namespace FASTOPT_ISA {
namespace {
using namespace nhwc;

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

void conv2d_nhwc_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  backward_weight(s, dy, x, dw, accumulate);
}
void conv2d_nhwc_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate) {
  backward_weight(s, dy, x, dw, accumulate);
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void conv2d_nhwc_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  FASTOPT_CPU_DISPATCH(conv2d_nhwc_backward_weight(s, dy, x, dw, accumulate))
}
void conv2d_nhwc_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate) {
  FASTOPT_CPU_DISPATCH(conv2d_nhwc_backward_weight(s, dy, x, dw, accumulate))
}
#endif

}  // namespace fastopt::cpu

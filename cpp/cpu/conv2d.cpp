// Conv2d on the CPU, NCHW, float32 or bfloat16, as implicit GEMMs per group g (gemm.h), whose
// packers (conv2d_pack.h) gather im2col panels straight from x, w and dy, one kc x NR strip at
// a time:
//
//   forward      y[k, (n,p,q)]    = sum_(c,r,s)  w[k, (c,r,s)] * x[n, c, p*sh-ph+r*dh, q*sw-pw+s*dw]   (+ b[k])
//   data-grad    dx[c, (n,h,w)]   = sum_(k,r,s)  w[k, c, r, s] * dy[n, k, (h+ph-r*dh)/sh, (w+pw-s*dw)/sw]
//                                   (terms whose division is inexact or out of range are zeros)
//                or, for strided or narrow layers, dcols = w^T dy per image, then col2im
//   weight-grad  dw[k, (c,r,s)]   = sum_(n,p,q)  dy[n, k, p, q] * x[n, c, p*sh-ph+r*dh, q*sw-pw+s*dw]
//   bias-grad    db[k]            = sum_(n,p,q)  dy[n, k, p, q]
// Channel-wise layers (C/groups = 1) skip the GEMM: there is no reuse to pack for
// (conv2d_channelwise.cpp). float32 3x3 layers with unit stride and >= 8 channels per group
// (128 for the weight-grad) take Winograd F(2x2, 3x3) instead (conv2d_winograd.cpp: 1.1-1.9x
// faster than the GEMMs below on them). The weight-grad's operands run along the pixels, so
// both are packed by 8x16 and 16x16 in-register transposes of masked row loads, and layers with
// fewer columns C R S than a tile (the 3-channel stem: 27 of 48) skip the GEMM for pixel-vector
// dot products (weight_grad_narrow).
//
// bfloat16 (x, w, b, dy all bf16): the same GEMMs and packers, with the packers widening bf16 to
// fp32 at the load (exact) and gemm_bf16.h multiplying, fp32 accumulation throughout. y and dx
// are rounded to bf16 once, at the store (round to nearest even, NaN kept); dw and db stay fp32
// (what an optimizer with fp32 master weights consumes; torch AMP likewise keeps a bf16 layer's
// fp32 master gradient). No bf16 Winograd: its transforms would round bf16 inputs that the GEMM
// multiplies exactly, and the bf16 GEMM is what gains from VDPBF16PS. Channel-wise layers are
// memory-bound: the AVX-512 per-plane kernels read bf16 planes directly (conv2d_channelwise.cpp);
// other channel-wise shapes and copies widen to fp32 copies and run the fp32 kernels.
//
// Work: 2 N K (C/G) R S P Q flops per pass; the floor in bytes is x + w + y (or dy) once each
// (2 bytes per element in bf16), far below the flops at these layer sizes, so the GEMM passes
// are compute-bound: the target is the machine's GEMM rate, fp32 or bf16 (the channel-wise ones
// are memory-bound). Traffic beyond the floor: each source element is read once per strip that
// covers it (R S rows of the strip), from L1/L2, and each kc x NR strip is written once and read
// M/MR times. Columns run over (n, p, q) jointly, so small 7x7 images still fill NR. Launch
// shape: an OpenMP team over (group, row block, column block) tasks (at least 32 column tasks
// per thread when the shared A is small), or over images for col2im and channel-wise planes, or
// over image chunks for the narrow weight-grad.
//
// No atomics anywhere: every output element is written by one thread, and the weight-grad
// reduces fixed image chunks into partials summed in chunk order. All passes are therefore
// deterministic for any thread count; the ISA copies differ only in FMA rounding (gemm.h) and,
// in bf16, in how the exact products are summed (gemm_bf16.h). Timings of the packer and kernel
// work, and what was tried and not kept: bench/results/cpu-conv2d-2026-11-22/NOTES.md.
#include "fastopt/conv2d.h"
#include "isa.h"

#include <type_traits>

#include "conv2d_channelwise.h"
#include "conv2d_pack.h"
#include "conv2d_winograd.h"
#include "gemm_bf16.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b,
                                         float* y);
                     void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
                     void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw,
                                                 bool accumulate);
                     void conv2d_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y);
                     void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx);
                     void conv2d_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw,
                                                 bool accumulate);)

namespace FASTOPT_ISA {
namespace {

using gemm::bf16;
using gemm::MR;
using gemm::NR;
using namespace conv2d_pack;

// One implicit GEMM per group over im2col panels: group g's B rows start group_src elements into
// the image, and each finished tile goes straight to its place in the output (OutMap).
template <class T, class PackA>
void im2col_gemm(int64_t G, int64_t M, int64_t N, int64_t Kd, PackA pack_a, const Im2col<T>& im2col, int64_t group_src,
                 const OutMap<T>& out) {
  auto pack_b = [&](int64_t g, int64_t p0, int64_t kc, int64_t j0, int64_t cols, auto* dst) {
    Im2col<T> at = im2col;
    at.src += g * group_src;
    at.pack(p0, kc, j0, cols, dst);
  };
  gemm::run_typed<T>(G, M, N, Kd, true, pack_a, pack_b,
                     [&](int64_t g, int64_t i0, int64_t rows, int64_t j0, int64_t cols, const float* tile) {
                       out.store(g, i0, rows, j0, cols, tile);
                     });
}

template <class T>
void forward(const Conv2dShape& s, const T* x, const T* w, const T* b, T* y) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t Kd = Cg * RS;
  auto pack_a = [&](int64_t g, int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) {
    gemm::rows_to_strip(w + (g * Kg + i0) * Kd + p0, Kd, rows, kc, dst);
  };
  const Im2col<T> im2col{x,          HW,  s.C * HW, s.P,      s.Q,     s.H,      s.W,    s.stride_h,
                         s.stride_w, s.R, s.S,      -s.pad_h, s.dil_h, -s.pad_w, s.dil_w};
  im2col_gemm<T>(G, Kg, s.N * PQ, Kd, pack_a, im2col, Cg * HW, OutMap<T>{y, PQ, s.K * PQ, PQ, Kg, b});
}

// The gather form: one implicit GEMM straight into dx, for stride 1 only (backward_data), so its
// packer maps output rows to dy rows without divisions: with stride > 1 most of its panel would
// be zeros (1 - 1/(sh sw)). With few channels per group it fills few of the MR rows.
template <class T>
void data_grad_gather(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t Kd = Kg * RS;
  auto pack_a = [&](int64_t g, int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) {
    // A[c, (k, r, s)] = w[g*Kg + k, c, r, s]: for each k, the strip's channels are rows of R S
    // taps, transposed in registers (an element-wise gather took 16% of a bf16 3x3 512@7
    // data-grad at N = 4, one thread: 8.4 -> 7.0 ms).
    for (int64_t p = 0; p < kc;) {
      const int64_t k = (p0 + p) / RS, rs = (p0 + p) % RS, len = std::min(RS - rs, kc - p);
      gemm::rows_to_strip(w + ((g * Kg + k) * Cg + i0) * RS + rs, RS, rows, len, dst + p * MR);
      p += len;
    }
  };
  const Im2col<T> im2col{dy, PQ, s.K * PQ, s.H, s.W, s.P, s.Q, 1, 1, s.R, s.S, s.pad_h, -s.dil_h, s.pad_w, -s.dil_w};
  im2col_gemm<T>(G, Cg, s.N * HW, Kd, pack_a, im2col, Kg * PQ, OutMap<T>{dx, HW, s.C * HW, HW, Cg, nullptr});
}

// The col2im form, per run of images and group on one thread: dcols[(c,r,s), (n,p,q)] =
// sum_k w[k,c,r,s] dy[n,k,p,q] as an exact GEMM (M = Cg R S, Kd = Kg), then each dx plane is
// folded from its R S shifted rows in fixed (r, s) order by the thread that owns the image: no
// atomics. A bf16 plane is folded in fp32 and rounded once. A run holds enough images for
// 4 NR columns: with one image per GEMM, a 4 x 4 output (ResNet's last stride-2 layer) used a
// third of each tile and repacked the whole weight for 16 columns (2.5x its forward's time).
// Each output is the same sum whatever the run, so the runs change no bits.
template <class T>
void data_grad_col2im(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t M = Cg * RS, per = std::max<int64_t>(1, std::min(s.N, 4 * NR / std::max<int64_t>(PQ, 1)));
  const int64_t runs = (s.N + per - 1) / per, items = runs * G;
#pragma omp parallel
  {
    gemm::WorkspaceOf<gemm::KernFor<T>> ws;
    std::vector<float> cols(static_cast<size_t>(M * per * PQ));
    std::vector<float> fold(std::is_same_v<T, float> ? 0 : static_cast<size_t>(HW));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n0 = item / G * per, g = item % G, images = std::min(per, s.N - n0), Nn = images * PQ;
      auto pack_a = [&](int64_t, int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) {
        // A[(c,r,s), k] = w[g*Kg + k, (c,r,s)]: contiguous along the rows of the strip.
        for (int64_t p = 0; p < kc; ++p) {
          const T* src = w + (g * Kg + p0 + p) * M + i0;
          for (int64_t i = 0; i < MR; ++i) dst[p * MR + i] = i < rows ? to_float(src[i]) : 0.0f;
        }
      };
      auto pack_b = [&](int64_t, int64_t p0, int64_t kc, int64_t j0, int64_t ncols, float* dst) {
        // B[k, (n, p, q)] = dy[n0 + n, g*Kg + k, p, q]: per image, rows of contiguous runs.
        for (int64_t j = 0; j < NR;) {
          if (j >= ncols) {
            for (int64_t p = 0; p < kc; ++p) std::fill(dst + p * NR + j, dst + (p + 1) * NR, 0.0f);
            break;
          }
          const int64_t col = j0 + j, pq = col % PQ, len = std::min(ncols - j, PQ - pq);
          const T* src = dy + ((n0 + col / PQ) * s.K + g * Kg + p0) * PQ + pq;
          for (int64_t p = 0; p < kc; ++p)
            for (int64_t u = 0; u < len; ++u) dst[p * NR + j + u] = to_float(src[p * PQ + u]);
          j += len;
        }
      };
      const OutMap<float> out{cols.data(), Nn, 0, Nn, 0, nullptr};
      gemm::serial_typed<T>(
          0, M, Nn, Kg, pack_a, pack_b,
          [&](int64_t, int64_t i0, int64_t rows, int64_t j0, int64_t ncols, const float* tile) {
            out.store(0, i0, rows, j0, ncols, tile);
          },
          ws);
      for (int64_t ni = 0; ni < images; ++ni)
        for (int64_t c = 0; c < Cg; ++c) {
          T* const target = dx + ((n0 + ni) * s.C + g * Cg + c) * HW;
          float* plane;
          if constexpr (std::is_same_v<T, float>) plane = target;
          else plane = fold.data();
          std::fill(plane, plane + HW, 0.0f);
          for (int64_t rs = 0; rs < RS; ++rs) {
            const int64_t r = rs / s.S, sc = rs % s.S;
            const float* src = cols.data() + (c * RS + rs) * Nn + ni * PQ;
            for (int64_t p = 0; p < s.P; ++p) {
              const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
              if (h < 0 || h >= s.H) continue;
              add_row(plane + h * s.W, s.W, src + p * s.Q, s.Q, sc * s.dil_w - s.pad_w, s.stride_w);
            }
          }
          if constexpr (!std::is_same_v<T, float>) from_float_n(plane, target, HW);
        }
    }
  }
}

// The gather form wins when it wastes nothing (stride 1) and its M = C/G fills the tile rows.
template <class T>
void backward_data(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  if (s.stride_h * s.stride_w > 1 || s.C / s.groups < 2 * MR) data_grad_col2im(s, dy, w, dx);
  else data_grad_gather(s, dy, w, dx);
}

#if defined(__AVX512F__)
// Weight-grad with fewer columns C R S than a tile (the 3-channel stem: 27 of NR = 48, and the
// GEMM's transposing packers cost as much again): dot products along the pixels instead.
// Accumulator vector acc[k][col] sums dy[n, k, pq] * x[n, c, pq + d_rs] over 16-pixel vectors
// (pq in lanes), loaded straight from both tensors (masks zero the padding taps), so nothing is
// packed or transposed and no lane is wasted. Register block: 8 rows k x NB <= 3 columns = 24
// accumulators, 8 + NB loads per 8 NB FMAs, data of one image (dy: K PQ, x: C HW floats) in L1/L2.
// Images run in `chunks` fixed runs (by shape), each into its own vector partials, spilled per
// image and block (24 loads + stores per 8 NB PQ / 16 FMAs); partials are summed in chunk order,
// then each vector's 16 lanes in a fixed tree, so the bits do not depend on the thread count.
template <int NB, class T>
void narrow_block(int64_t PQ, int64_t t0, int64_t t1, const T* dyk, const T* xn, const int64_t* off, const __m256i* bit,
                  const uint16_t* tap_ok, float* acc) {
  __m512 a[8][NB];
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < NB; ++j) a[i][j] = _mm512_loadu_ps(acc + (i * NB + j) * 16);
  for (int64_t t = t0; t < t1; t += 16) {
    const auto m = static_cast<__mmask16>(PQ - t >= 16 ? 0xffff : (1u << (PQ - t)) - 1);
    const __m256i taps = _mm256_maskz_loadu_epi16(m, tap_ok + t);
    __m512 xv[NB];
    for (int j = 0; j < NB; ++j) xv[j] = gemm::load16(m & _mm256_test_epi16_mask(taps, bit[j]), xn + off[j] + t);
    for (int i = 0; i < 8; ++i) {
      const __m512 d = gemm::load16(m, dyk + i * PQ + t);
      for (int j = 0; j < NB; ++j) a[i][j] = _mm512_fmadd_ps(d, xv[j], a[i][j]);
    }
  }
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < NB; ++j) _mm512_storeu_ps(acc + (i * NB + j) * 16, a[i][j]);
}

template <class T>
void weight_grad_narrow(const Conv2dShape& s, const T* dy, const T* x, float* dw, bool accumulate) {
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
          const T* dyk = dy + (n * s.K + std::min(k0, s.K - 8)) * PQ;
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
            const T* xn = x + n * s.C * HW;
            float* a = ak + j0 * 8 * 16;
            if (nb == 3) narrow_block<3>(PQ, t0, t1, dyk, xn, off, bit, tap_ok.data(), a);
            else if (nb == 2) narrow_block<2>(PQ, t0, t1, dyk, xn, off, bit, tap_ok.data(), a);
            else narrow_block<1>(PQ, t0, t1, dyk, xn, off, bit, tap_ok.data(), a);
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
    store_grad(dw + e, _mm512_reduce_add_ps(v), accumulate);
  }
}
#endif

// The reduction over (n, p, q) is cut into `chunks` equal runs of whole images (a divisor of N,
// fixed by the shape alone), each reduced into its own partial dw; partials are then summed in
// chunk order. Threads thus work on different images without repacking the other operand, and
// the result does not depend on the thread count. With accumulate, the last write of each element
// (the tile store, or the sum of the partials) adds into dw.
template <class T>
void weight_grad(const Conv2dShape& s, const T* dy, const T* x, float* dw, bool accumulate) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t Nn = Cg * RS, size = s.K * Nn;
  if (s.N * PQ == 0) {
    for (int64_t i = 0; i < size; ++i) store_grad(dw + i, 0.0f, accumulate);
    return;
  }
  if constexpr (std::is_same_v<T, float>)
    if (winograd_applies(s, true)) return winograd_backward_weight(s, dy, x, dw, accumulate);
#if defined(__AVX512F__)
  if (G == 1 && Nn < NR && s.K >= 8 && s.stride_h == 1 && s.stride_w == 1 && s.Q == s.W && RS <= 16)
    return weight_grad_narrow(s, dy, x, dw, accumulate);
#endif
  // Each partial costs a write and a read of dw: worth it only with >= 1024 reduction terms per
  // element of it, and bounded in memory. Columns give the threads work when chunks cannot.
  const int64_t max_chunks = std::min<int64_t>({8, std::max<int64_t>(1, (int64_t{16} << 20) / size),
                                                std::max<int64_t>(1, s.N * PQ / 1024)});
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
    int64_t n = n0 + p0 / PQ, pq = p0 % PQ;
    for (int64_t p = 0; p < kc;) {
      const int64_t len = std::min(kc - p, PQ - pq);
      gemm::rows_to_strip(dy + (n * s.K + g * Kg + i0) * PQ + pq, PQ, rows, len, dst + p * MR);
      p += len;
      pq = 0;
      ++n;
    }
  };
  auto pack_b = [&](int64_t item, int64_t p0, int64_t kc, int64_t j0, int64_t cols, auto* dst) {
    // B[(n, p, q), (c, r, s)] = x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]: each column
    // is a strided walk along rows of x, so gather it with range-split row copies, then transpose.
    // dst: an fp32 strip, or bf16 pairs (gemm_bf16.h).
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
      using Rows = gemm::RowsOf<std::remove_pointer_t<decltype(dst)>>;
      // f(p, len, xn, pq) for each run of the strip's pixels inside one image: panel rows
      // [p, p + len) are pixels pq ... of the image at xn (channel 0).
      const auto image_runs = [&](auto&& f) {
        int64_t n = n0 + p0 / PQ, pq = p0 % PQ;
        for (int64_t p = 0; p < kc;) {
          const int64_t len = std::min(kc - p, PQ - pq);
          f(p, len, x + n * s.C * HW + pq, pq);
          p += len;
          pq = 0;
          ++n;
        }
      };
      if constexpr (std::is_same_v<Rows, gemm::RowPairs> && std::is_same_v<T, bf16>) {
        if (kc % 2 == 0 && PQ % 2 == 0 && p0 % 2 == 0) {
          // bf16 pairs of pixels are 32-bit words of x, so a 16-column by 32-pixel block is a
          // 16 x 16 transpose of words that leaves each pair row whole: half the transposes of
          // the widened path and no pairing (a third of a 32-channel layer's weight-grad packing).
          // Needs every pair inside one image: even PQ, p0 and kc.
          image_runs([&](int64_t p, int64_t len, const T* xn, int64_t pq) {
            for (int64_t t = 0; t < len; t += 32) {
              const int count = static_cast<int>(std::min<int64_t>(32, len - t));
              const auto m = static_cast<__mmask32>(count == 32 ? ~0u : (1u << count) - 1);
              const __m512i taps = _mm512_maskz_loadu_epi16(m, tap_ok.data() + pq + t);
              for (int64_t jb = 0; jb < NR; jb += 16) {
                __m512 r[16];
                for (int64_t i = 0; i < 16; ++i)
                  r[i] = jb + i < cols ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(
                                             m & _mm512_test_epi16_mask(taps, _mm512_broadcast_i64x4(bit[jb + i])),
                                             xn + off[jb + i] + t))
                                       : _mm512_setzero_ps();
                if (jb < cols) gemm::transpose16(r);
                for (int q = 0; q < count / 2; ++q)
                  _mm512_storeu_si512(dst + (p + t + 2 * q) * NR + 2 * jb, _mm512_castps_si512(r[q]));
              }
            }
          });
          return;
        }
      }
      Rows out{dst};
      image_runs([&](int64_t p, int64_t len, const T* xn, int64_t pq) {
        for (int64_t t = 0; t < len; t += 16) {
          const int count = static_cast<int>(std::min<int64_t>(16, len - t));
          const auto m = static_cast<__mmask16>((1u << count) - 1);
          const __m256i taps = _mm256_maskz_loadu_epi16(m, tap_ok.data() + pq + t);
          for (int64_t jb = 0; jb < NR; jb += 16) {
            __m512 r[16];
            for (int64_t i = 0; i < 16; ++i)
              r[i] = jb + i < cols ? Rows::load(m & _mm256_test_epi16_mask(taps, bit[jb + i]), xn + off[jb + i] + t)
                                   : _mm512_setzero_ps();
            if (jb < cols) gemm::transpose16(r);
            for (int i = 0; i < count; ++i) out.put(p + t + i, static_cast<int>(jb / 16), r[i]);
          }
        }
      });
      return out.finish(kc);
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
    gemm::via_stage(dst, kc, [&](float* strip) { gemm::transpose_to_panel(tmp, kc, kc, cols, strip); });
  };
  gemm::run_typed<T>(chunks * G, Kg, Nn, Kd, false, pack_a, pack_b,
                     [&](int64_t item, int64_t i0, int64_t rows, int64_t j0, int64_t cols, const float* tile) {
                       float* target = chunks > 1 ? partial.data() + item / G * size : dw;
                       OutMap<float>{target, Nn, 0, Nn, Kg, nullptr, accumulate && chunks == 1}
                           .store(item % G, i0, rows, j0, cols, tile);
                     });
  if (chunks > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < size; ++i) {
      float acc = partial[i];
      for (int64_t c = 1; c < chunks; ++c) acc += partial[c * size + i];
      store_grad(dw + i, acc, accumulate);
    }
  }
}

// bf16 channel-wise layers that the per-plane kernels do not take (strides, dilation, other
// filters; the copies without AVX-512) run the fp32 kernels on widened copies: an extra pass over
// each tensor, exact, and the outputs rounded once.
std::vector<float> widen(const bf16* p, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += kChunk) to_float_n(p + i, out.data() + i, std::min(kChunk, n - i));
  return out;
}

void round_to(const std::vector<float>& v, bf16* out) {
  const auto n = static_cast<int64_t>(v.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += kChunk) from_float_n(v.data() + i, out + i, std::min(kChunk, n - i));
}

}  // namespace

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  if (s.C == s.groups) return channelwise_forward(s, x, w, b, y);
  if (winograd_applies(s)) return winograd_forward(s, x, w, b, y);
  forward(s, x, w, b, y);
}

void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  if (s.C == s.groups) return channelwise_backward_data(s, dy, w, dx);
  if (winograd_applies(s)) return winograd_backward_data(s, dy, w, dx);
  backward_data(s, dy, w, dx);
}

void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  if (s.C == s.groups) return channelwise_backward_weight(s, dy, x, dw, accumulate);
  weight_grad(s, dy, x, dw, accumulate);
}

void conv2d_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y) {
  if (s.C != s.groups) return forward(s, x, w, b, y);
#if defined(__AVX512F__)
  if (channelwise_planes(s)) return channelwise_forward(s, x, w, b, y);
#endif
  const std::vector<float> xf = widen(x, s.N * s.C * s.H * s.W), wf = widen(w, s.K * s.R * s.S);
  const std::vector<float> bf = b ? widen(b, s.K) : std::vector<float>();
  std::vector<float> yf(static_cast<size_t>(s.N * s.K * s.P * s.Q));
  channelwise_forward(s, xf.data(), wf.data(), b ? bf.data() : nullptr, yf.data());
  round_to(yf, y);
}

void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx) {
  if (s.C != s.groups) return backward_data(s, dy, w, dx);
#if defined(__AVX512F__)
  if (channelwise_planes(s)) return channelwise_backward_data(s, dy, w, dx);
#endif
  const std::vector<float> dyf = widen(dy, s.N * s.K * s.P * s.Q), wf = widen(w, s.K * s.R * s.S);
  std::vector<float> dxf(static_cast<size_t>(s.N * s.C * s.H * s.W));
  channelwise_backward_data(s, dyf.data(), wf.data(), dxf.data());
  round_to(dxf, dx);
}

void conv2d_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate) {
  if (s.C != s.groups) return weight_grad(s, dy, x, dw, accumulate);
#if defined(__AVX512F__)
  if (channelwise_planes(s)) return channelwise_backward_weight(s, dy, x, dw, accumulate);
#endif
  const std::vector<float> dyf = widen(dy, s.N * s.K * s.P * s.Q), xf = widen(x, s.N * s.C * s.H * s.W);
  channelwise_backward_weight(s, dyf.data(), xf.data(), dw, accumulate);
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  FASTOPT_CPU_DISPATCH(conv2d_forward(s, x, w, b, y))
}
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  FASTOPT_CPU_DISPATCH(conv2d_backward_data(s, dy, w, dx))
}
void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  FASTOPT_CPU_DISPATCH(conv2d_backward_weight(s, dy, x, dw, accumulate))
}
void conv2d_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y) {
  FASTOPT_CPU_DISPATCH(conv2d_forward(s, x, w, b, y))
}
void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx) {
  FASTOPT_CPU_DISPATCH(conv2d_backward_data(s, dy, w, dx))
}
void conv2d_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate) {
  FASTOPT_CPU_DISPATCH(conv2d_backward_weight(s, dy, x, dw, accumulate))
}

// Memory-bound (4 bytes read per flop, 2 in bf16), so one plain pass. NCHW: channels over the
// threads, each summed in double in (n, p, q) order. NHWC (a channel strided by K): fixed chunks
// of pixel rows summed in double, then the chunks in order. Neither depends on the thread count.
template <class T>
static void backward_bias(const Conv2dShape& s, const T* dy, float* db, bool accumulate, bool nhwc) {
  const int64_t PQ = s.P * s.Q;
  if (nhwc) {
    constexpr int64_t kRows = 1024;
    const int64_t pixels = s.N * PQ, chunks = (pixels + kRows - 1) / kRows;
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
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < s.K; ++k) {
    double acc = 0.0;
    for (int64_t n = 0; n < s.N; ++n) {
      const T* src = dy + (n * s.K + k) * PQ;
      double part = 0.0;
      for (int64_t i = 0; i < PQ; ++i) part += to_float(src[i]);
      acc += part;
    }
    store_grad(db + k, static_cast<float>(acc), accumulate);
  }
}
void conv2d_backward_bias(const Conv2dShape& s, const float* dy, float* db, bool accumulate, bool nhwc) {
  backward_bias(s, dy, db, accumulate, nhwc);
}
void conv2d_backward_bias(const Conv2dShape& s, const bf16* dy, float* db, bool accumulate, bool nhwc) {
  backward_bias(s, dy, db, accumulate, nhwc);
}
#endif

}  // namespace fastopt::cpu

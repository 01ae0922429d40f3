// Conv2d 3x3 with unit stride and dilation on the CPU by Winograd F(2x2, 3x3) (the transforms'
// math: fastopt/winograd.h), for every pass:
//
//   forward      V[xi, c, t] = (B^T x_t B)[xi]      4x4 input tile t = (n, ty, tx), stride 2
//                U[xi, k, c] = (G w[k, c] G^T)[xi]
//                M[xi, k, t] = sum_c U[xi, k, c] V[xi, c, t]      16 GEMMs per group (gemm.h)
//                y_t[k]      = A^T M[., k, t] A  (+ b[k])         2x2 output tile
//   data-grad    the forward over dy, with the filters flipped and transposed and padding 2 - p
//   weight-grad  dM[xi, k, t] = (A dy_t A^T)[xi];  dU[xi, k, c] = sum_t dM[xi, k, t] V[xi, c, t];
//                dw[k, c] = G^T dU[., k, c] G
//
// Work: the GEMMs do 16 multiply-adds per tile and channel pair where the direct form does 36:
// 2.25x fewer flops, less where P or Q is odd (7x7 outputs run as 8x8 in tiles: 1.72x). V and M
// (16 floats per tile and channel, 4x their tensors) are never materialized whole: the forward
// and data-grad run per block of 48-96 tiles (apply), whose V and M live in L2; the weight-grad
// per block of 256 tiles, whose transposed V and dM (a few MiB) are shared by the threads. So
// the memory traffic stays near the floor (x, w, y once, plus the 16/9 C K transformed filters,
// which deep layers stream from L3 once per tile block), and the passes are bound by the GEMMs.
//
// Blocking V and M is what makes it pay: materialized per chunk of images they made every pass
// slower than the direct GEMMs (page faults, panels repacked from L3). Timings, and the ones
// behind winograd_applies' channel bars: bench/results/cpu-conv2d-2026-11-22/NOTES.md.
//
// Determinism: every output is reduced in a fixed order by one thread (the forward's M over
// channels in gemm.h's KC blocks; the weight-grad's dU over tile blocks in order, each task
// owning its dU tiles), so results depend on neither the thread count nor the blocking; the
// ISA copies differ only in FMA rounding. Rounding: each transform output is a sum of at most 4
// terms with coefficients 1 or 1/2, and each GEMM reduces over C terms where the direct form
// reduces 9 C, so its error against the float64 reference stays within the direct GEMMs'.
//
// Launch shape: forward / data-grad, an OpenMP team over (group, tile block, row block) tasks,
// each transforming its block (masked AVX-512 gathers, 16 tiles per vector), running the
// 16 GEMMs on gemm.h's micro-kernel and scattering its outputs; weight-grad, per tile block a
// team that transforms (16 channels per vector) and then runs (item, channel strip, filter
// strips) tasks.
#include "conv2d_winograd.h"

#include <memory>

#include "fastopt/switches.h"
#include "fastopt/winograd.h"
#include "gemm.h"

namespace fastopt::cpu::FASTOPT_ISA {
namespace {

namespace wg = fastopt::winograd;
using gemm::MR;
using gemm::NR;

// A 3x3 unit-stride correlation of src (N, Ci, Hi, Wi) into out (N, Co, Ho, Wo) with padding
// (ph, pw), in G groups, cut into 2x2 output tiles, TH x TW of them per image (the last row and
// column of tiles overhang odd outputs). Tiles t = (n, ty, tx) run over the whole batch.
struct Tiling {
  int64_t Ci, Hi, Wi, Co, Ho, Wo, ph, pw, G;
  int64_t TH() const { return (Ho + 1) / 2; }
  int64_t TW() const { return (Wo + 1) / 2; }
  int64_t per_image() const { return TH() * TW(); }
};

// Where the tiles of one block (block columns j < NB, tiles t0 + j) read and write: the input
// tile's corner relative to the block's first image (in_off), which of its 16 taps lie inside
// the image (bit i*4 + q of in_taps), the output tile's corner (out_off) and which of its 4
// pixels exist (bit i*2 + q of out_px). Columns past the last tile have no taps and no pixels.
// The offsets are 32-bit for the gathers: within a block's few images of one channel plane.
struct BlockMap {
  int64_t n0;
  std::vector<int32_t> in_off, out_off;
  std::vector<uint16_t> in_taps, out_px;
  explicit BlockMap(int64_t NB) : in_off(NB), out_off(NB), in_taps(NB), out_px(NB) {}

  void build(const Tiling& tl, int64_t t0, int64_t nb) {
    const int64_t TW = tl.TW(), per = tl.per_image();
    n0 = t0 / per;
    for (int64_t j = 0; j < static_cast<int64_t>(in_off.size()); ++j) {
      if (j >= nb) {
        in_off[j] = out_off[j] = 0;
        in_taps[j] = out_px[j] = 0;
        continue;
      }
      const int64_t t = t0 + j, n = t / per - n0, ty = t % per / TW, tx = t % TW;
      const int64_t h0 = 2 * ty - tl.ph, w0 = 2 * tx - tl.pw;
      in_off[j] = static_cast<int32_t>(n * tl.Ci * tl.Hi * tl.Wi + h0 * tl.Wi + w0);
      out_off[j] = static_cast<int32_t>(n * tl.Co * tl.Ho * tl.Wo + 2 * ty * tl.Wo + 2 * tx);
      uint16_t taps = 0, px = 0;
      for (int i = 0; i < 4; ++i)
        for (int q = 0; q < 4; ++q)
          if (h0 + i >= 0 && h0 + i < tl.Hi && w0 + q >= 0 && w0 + q < tl.Wi) taps |= 1u << (i * 4 + q);
      for (int i = 0; i < 2; ++i)
        for (int q = 0; q < 2; ++q)
          if (2 * ty + i < tl.Ho && 2 * tx + q < tl.Wo) px |= 1u << (i * 2 + q);
      in_taps[j] = taps;
      out_px[j] = px;
    }
  }
};

// 32-bit gather offsets hold: a block spans at most NB tiles, so at most NB images.
bool offsets_fit(const Tiling& tl, int64_t NB) {
  const int64_t span = std::min<int64_t>(NB, std::max<int64_t>(1, NB / tl.per_image() + 2));
  return span * std::max(tl.Ci * tl.Hi * tl.Wi, tl.Co * tl.Ho * tl.Wo) < (int64_t{1} << 31);
}

// Buffers kept by each thread across calls, grown as needed: a fresh allocation of this size is
// mapped anew and page-faulted in on every call (3x3 512@7's weight-grad touches 34 MiB: 9 of
// its 26 ms went to that). The price: each thread holds its largest buffers until exit.
enum class Slot { filters, inputs, grads, vp, mp, count };
float* reused(Slot slot, int64_t n) {
  thread_local std::unique_ptr<gemm::Panel> bufs[static_cast<int>(Slot::count)];
  thread_local int64_t sizes[static_cast<int>(Slot::count)] = {};
  const int i = static_cast<int>(slot);
  if (sizes[i] < n) {
    bufs[i].reset();
    bufs[i] = std::make_unique<gemm::Panel>(static_cast<size_t>(n));
    sizes[i] = n;
  }
  return bufs[i]->data();
}

// A thread's buffers for one block of NB tiles: the transformed inputs as packed B panels
// (vp: per xi, Cg rows in gemm.h's KC blocks of NR-column strips) and the GEMM tiles (mp: per
// xi, MR-row strips of the task's rows, NB columns as NR-wide tiles).
struct BlockBuffers {
  float* vp;
  float* mp;
  BlockMap map;
  BlockBuffers(int64_t cg, int64_t rows_p, int64_t NB)
      : vp(reused(Slot::vp, 16 * cg * NB)), mp(reused(Slot::mp, 16 * rows_p * NB)), map(NB) {}
};

// vp = B^T d B of every tile of the block in channels g*Cg .. (g+1)*Cg of src, laid out for
// the micro-kernel: element (xi, c, j) at xi*Cg*NB + pc*NB + (j/NR)*kc*NR + (c-pc)*NR + j%NR,
// for the KC block [pc, pc + kc) holding c. AVX-512 runs 16 tiles per vector: each of the 16
// taps is one masked gather (the masks zero the padding), the transform runs in registers, and
// each xi is one aligned store.
void transform_inputs(const Tiling& tl, const float* src, int64_t g, int64_t NB, BlockBuffers& bb) {
  const int64_t Cg = tl.Ci / tl.G, kb = gemm::kc_block(Cg), plane = tl.Hi * tl.Wi;
  const BlockMap& bm = bb.map;
  const float* base = src + (bm.n0 * tl.Ci + g * Cg) * plane;
  for (int64_t c = 0; c < Cg; ++c) {
    const int64_t pc = c / kb * kb, kc = std::min(kb, Cg - pc);
    float* const vc = bb.vp + pc * NB + (c - pc) * NR;
    const float* bc = base + c * plane;
    for (int64_t j = 0; j < NB; j += 16) {
#if defined(__AVX512F__)
      float* const dst = vc + j / NR * kc * NR + j % NR;
      const __m512i idx = _mm512_loadu_si512(bm.in_off.data() + j);
      const __m256i taps = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bm.in_taps.data() + j));
      __m512 r[4][4];
      for (int i = 0; i < 4; ++i) {
        __m512 d[4];
        for (int q = 0; q < 4; ++q) {
          const __mmask16 m = _mm256_test_epi16_mask(taps, _mm256_set1_epi16(static_cast<short>(1 << (i * 4 + q))));
          d[q] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m,
                                          _mm512_add_epi32(idx, _mm512_set1_epi32(static_cast<int>(i * tl.Wi + q))), bc,
                                          4);
        }
        wg::input_1d(d[0], d[1], d[2], d[3], r[i]);
      }
      for (int b = 0; b < 4; ++b) {
        __m512 col[4];
        wg::input_1d(r[0][b], r[1][b], r[2][b], r[3][b], col);
        for (int a = 0; a < 4; ++a) _mm512_store_ps(dst + (a * 4 + b) * Cg * NB, col[a]);
      }
#else
      // Tile by tile into v, then each xi's 16 values stored as runs: stored straight from each
      // tile, its 16 values lie Cg NB floats apart (a multiple of 4 KiB at 32 and 64 channels),
      // and the AVX2 copy ran 5x slower there on thrashed L1 sets.
      const int64_t lanes = std::min<int64_t>(16, NB - j);
      float v[16][16];  // [xi][tile]
      for (int64_t l = 0; l < lanes; ++l) {
        const float* at = bc + bm.in_off[j + l];
        const unsigned taps = bm.in_taps[j + l];
        float r[4][4];
        for (int i = 0; i < 4; ++i) {
          float d[4];
          for (int q = 0; q < 4; ++q) d[q] = taps >> (i * 4 + q) & 1u ? at[i * tl.Wi + q] : 0.0f;
          wg::input_1d(d[0], d[1], d[2], d[3], r[i]);
        }
        for (int b = 0; b < 4; ++b) {
          float col[4];
          wg::input_1d(r[0][b], r[1][b], r[2][b], r[3][b], col);
          for (int a = 0; a < 4; ++a) v[a * 4 + b][l] = col[a];
        }
      }
      for (int xi = 0; xi < 16; ++xi)
        for (int64_t l = 0; l < lanes; ++l)
          vc[xi * Cg * NB + (j + l) / NR * kc * NR + (j + l) % NR] = v[xi][l];  // NR may be 8
#endif
    }
  }
}

// out[n, g*Kg + k] tiles = A^T m A (+ bias) for rows k0 .. k0 + rows of the block's products
// (mp: element (xi, kl, j) at xi*RP*NB + (kl/MR)*MR*NB + (j/NR)*MR*NR + (kl%MR)*NR + j%NR).
// AVX-512: 16 tiles per vector, each output pixel one masked scatter.
void transform_outputs(const Tiling& tl, int64_t g, int64_t k0, int64_t rows, int64_t RP, int64_t NB, const float* bias,
                       float* out, BlockBuffers& bb) {
  const int64_t Kg = tl.Co / tl.G, plane = tl.Ho * tl.Wo;
  const BlockMap& bm = bb.map;
  for (int64_t kl = 0; kl < rows; ++kl) {
    const int64_t k = g * Kg + k0 + kl;
    const float init = bias ? bias[k] : 0.0f;
    const float* mk = bb.mp + kl / MR * MR * NB + kl % MR * NR;
    float* const ok = out + (bm.n0 * tl.Co + k) * plane;
    for (int64_t j = 0; j < NB; j += 16) {
#if defined(__AVX512F__)
      const float* src = mk + j / NR * MR * NR + j % NR;
      __m512 sm[4][2];
      for (int a = 0; a < 4; ++a)
        wg::output_1d(_mm512_load_ps(src + (a * 4) * RP * NB), _mm512_load_ps(src + (a * 4 + 1) * RP * NB),
                      _mm512_load_ps(src + (a * 4 + 2) * RP * NB), _mm512_load_ps(src + (a * 4 + 3) * RP * NB), sm[a]);
      const __m512i idx = _mm512_loadu_si512(bm.out_off.data() + j);
      const __m256i px = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bm.out_px.data() + j));
      for (int q = 0; q < 2; ++q) {
        __m512 yv[2];
        wg::output_1d(sm[0][q], sm[1][q], sm[2][q], sm[3][q], yv);
        for (int i = 0; i < 2; ++i) {
          const __mmask16 m = _mm256_test_epi16_mask(px, _mm256_set1_epi16(static_cast<short>(1 << (i * 2 + q))));
          _mm512_mask_i32scatter_ps(ok, m, _mm512_add_epi32(idx, _mm512_set1_epi32(static_cast<int>(i * tl.Wo + q))),
                                    _mm512_add_ps(_mm512_set1_ps(init), yv[i]), 4);
        }
      }
#else
      // Each xi's 16 values loaded as runs first (see transform_inputs).
      const int64_t lanes = std::min<int64_t>(16, NB - j);
      float v[16][16];  // [xi][tile]
      for (int xi = 0; xi < 16; ++xi)
        for (int64_t l = 0; l < lanes; ++l) v[xi][l] = mk[xi * RP * NB + (j + l) / NR * MR * NR + (j + l) % NR];
      for (int64_t l = 0; l < lanes; ++l) {
        const unsigned px = bm.out_px[j + l];
        float sm[4][2];
        for (int a = 0; a < 4; ++a)
          wg::output_1d(v[a * 4][l], v[a * 4 + 1][l], v[a * 4 + 2][l], v[a * 4 + 3][l], sm[a]);
        for (int q = 0; q < 2; ++q) {
          float yv[2];
          wg::output_1d(sm[0][q], sm[1][q], sm[2][q], sm[3][q], yv);
          for (int i = 0; i < 2; ++i)
            if (px >> (i * 2 + q) & 1u) ok[bm.out_off[j + l] + i * tl.Wo + q] = init + yv[i];
        }
      }
#endif
    }
  }
}

#if defined(__AVX512F__)
// The weight-grad's transforms put 16 channel (or filter) planes in a vector: lane l reads at
// l * plane from the first, and only the first n lanes have a plane.
inline __m512i plane_offsets(int64_t plane) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(static_cast<int>(plane)));
}
using gemm::first_lanes;
#endif

// The weight-grad's operands for one block of nb tiles, each transposed so that the reduction
// (over tiles, p < nb) runs down its panels: vt[item][c/NR][p][c%NR] = V[xi, c, t0 + p] (the
// micro-kernel's B, channels in NR-wide strips) and dmt[item][k/MR][p][k%MR] = dM[xi, k, t0 + p]
// (its A), item = g*16 + xi, Cp and Kp the channel counts padded to NR and MR (zeros). AVX-512
// runs 16 channels per vector: one masked gather per tap (the masks zero the padding and the
// channels past Cg), the transform in registers, one aligned store per xi.
void transform_inputs_t(const Tiling& tl, const float* src, int64_t g, int64_t nb, int64_t Cp, const BlockMap& bm,
                        float* __restrict vt) {
  const int64_t Cg = tl.Ci / tl.G, plane = tl.Hi * tl.Wi, item = Cp * nb;
  const float* base = src + (bm.n0 * tl.Ci + g * Cg) * plane;
  float* const vg = vt + g * 16 * item;
#if defined(__AVX512F__)
  const __m512i idx = plane_offsets(plane);
#endif
#pragma omp for schedule(static) collapse(2)
  for (int64_t c0 = 0; c0 < Cp; c0 += 16)
    for (int64_t p = 0; p < nb; ++p) {
      const unsigned taps = bm.in_taps[p];
      const float* at = base + bm.in_off[p];
#if defined(__AVX512F__)
      if constexpr (NR % 16 == 0) {
        float* const dst = vg + c0 / NR * nb * NR + p * NR + c0 % NR;
        const __mmask16 lanes = first_lanes(Cg - c0);
        const float* ac = at + c0 * plane;
        __m512 r[4][4];
        for (int i = 0; i < 4; ++i) {
          __m512 d[4];
          for (int q = 0; q < 4; ++q)
            d[q] = taps >> (i * 4 + q) & 1u
                       ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, idx, ac + i * tl.Wi + q, 4)
                       : _mm512_setzero_ps();
          wg::input_1d(d[0], d[1], d[2], d[3], r[i]);
        }
        for (int b = 0; b < 4; ++b) {
          __m512 col[4];
          wg::input_1d(r[0][b], r[1][b], r[2][b], r[3][b], col);
          for (int a = 0; a < 4; ++a) _mm512_store_ps(dst + (a * 4 + b) * item, col[a]);
        }
        continue;
      }
#endif
      for (int64_t l = 0; l < 16 && c0 + l < Cp; ++l) {
        const int64_t c = c0 + l;
        float r[4][4];
        for (int i = 0; i < 4; ++i) {
          float d[4];
          for (int q = 0; q < 4; ++q) d[q] = c < Cg && taps >> (i * 4 + q) & 1u ? at[c * plane + i * tl.Wi + q] : 0.0f;
          wg::input_1d(d[0], d[1], d[2], d[3], r[i]);
        }
        float* const dc = vg + c / NR * nb * NR + p * NR + c % NR;
        for (int b = 0; b < 4; ++b) {
          float col[4];
          wg::input_1d(r[0][b], r[1][b], r[2][b], r[3][b], col);
          for (int a = 0; a < 4; ++a) dc[(a * 4 + b) * item] = col[a];
        }
      }
    }
}

// dmt (above) = A dY A^T of the block's 2x2 dy tiles (zeros where a tile overhangs P or Q): the
// adjoint of transform_outputs. 16 filters per vector; with MR = 8 each half is one strip.
void transform_output_grads_t(const Tiling& tl, const float* dy, int64_t g, int64_t nb, int64_t Kp, const BlockMap& bm,
                              float* __restrict dmt) {
  const int64_t Kg = tl.Co / tl.G, plane = tl.Ho * tl.Wo, item = Kp * nb;
  const float* base = dy + (bm.n0 * tl.Co + g * Kg) * plane;
  float* const dg = dmt + g * 16 * item;
#if defined(__AVX512F__)
  const __m512i idx = plane_offsets(plane);
#endif
#pragma omp for schedule(static) collapse(2)
  for (int64_t k0 = 0; k0 < Kp; k0 += 16)
    for (int64_t p = 0; p < nb; ++p) {
      const unsigned px = bm.out_px[p];
      const float* at = base + bm.out_off[p];
#if defined(__AVX512F__)
      if constexpr (MR == 8) {
        const __mmask16 lanes = first_lanes(Kg - k0);
        const float* ak = at + k0 * plane;
        __m512 c[2][4];
        for (int i = 0; i < 2; ++i) {
          __m512 d[2];
          for (int q = 0; q < 2; ++q)
            d[q] = px >> (i * 2 + q) & 1u
                       ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, idx, ak + i * tl.Wo + q, 4)
                       : _mm512_setzero_ps();
          wg::output_grad_1d(d[0], d[1], c[i]);
        }
        float* const lo = dg + k0 / MR * nb * MR + p * MR;
        float* const hi = lo + nb * MR;  // the next strip: filters k0 + 8 ..
        const bool has_hi = k0 + 8 < Kp;
        for (int b = 0; b < 4; ++b) {
          __m512 col[4];
          wg::output_grad_1d(c[0][b], c[1][b], col);
          for (int a = 0; a < 4; ++a) {
            _mm256_store_ps(lo + (a * 4 + b) * item, _mm512_castps512_ps256(col[a]));
            if (has_hi) _mm256_store_ps(hi + (a * 4 + b) * item, _mm512_extractf32x8_ps(col[a], 1));
          }
        }
        continue;
      }
#endif
      for (int64_t l = 0; l < 16 && k0 + l < Kp; ++l) {
        const int64_t k = k0 + l;
        float c[2][4];
        for (int i = 0; i < 2; ++i) {
          float d[2];
          for (int q = 0; q < 2; ++q) d[q] = k < Kg && px >> (i * 2 + q) & 1u ? at[k * plane + i * tl.Wo + q] : 0.0f;
          wg::output_grad_1d(d[0], d[1], c[i]);
        }
        float* const dk = dg + k / MR * nb * MR + p * MR + k % MR;
        for (int b = 0; b < 4; ++b) {
          float col[4];
          wg::output_grad_1d(c[0][b], c[1][b], col);
          for (int a = 0; a < 4; ++a) dk[(a * 4 + b) * item] = col[a];
        }
      }
    }
}

// The transformed filters as packed A panels, per item g*16 + xi: rows i < Mp (MR-padded),
// columns j < cols in gemm.h's KC blocks: element (i, j) at pc*Mp + (i/MR)*MR*kc + (j-pc)*MR + i%MR
// for the block [pc, pc + kc) holding j. Forward: i = k, j = c, f = w[k, c]; data-grad (flip):
// i = c, j = k, f[r][s] = w[k, c, 2 - r, 2 - s]. Rows past the last are zeros. A task is one
// MR-row strip of one group, so each item's panel is written as one sequential stream (writing
// filter by filter, 16 items apart, cost 18% of 3x3 512@7's forward).
const float* transform_weights(const Conv2dShape& s, const float* w, bool flip, int64_t& Mp) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, rows = flip ? Cg : Kg, cols = flip ? Kg : Cg;
  Mp = (rows + MR - 1) / MR * MR;
  const int64_t kb = gemm::kc_block(cols), item = Mp * cols, strips = Mp / MR;
  float* const u = reused(Slot::filters, 16 * G * item);
#pragma omp parallel for schedule(static)
  for (int64_t gs = 0; gs < G * strips; ++gs) {
    const int64_t g = gs / strips, i0 = gs % strips * MR;
    for (int64_t pc = 0; pc < cols; pc += kb) {
      const int64_t kc = std::min(kb, cols - pc);
      float* const strip = u + g * 16 * item + pc * Mp + i0 * kc;
#if defined(__AVX512F__)
      if constexpr (MR == 8) {
        // 16 filters per vector, in the panel's own order (lane l: row i0 + l%8, column j + l/8),
        // so each xi is one aligned store; their 9 taps come by gathers.
        // Lane offsets to filter (k, c): forward k = i0 + l%8, c = j + l/8; flip c = i0 + l%8, k = j + l/8.
        const int32_t si = static_cast<int32_t>(flip ? 9 : Cg * 9), sj = static_cast<int32_t>(flip ? Cg * 9 : 9);
        const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        const __m512i idx = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_and_si512(lane, _mm512_set1_epi32(7)),
                                                                _mm512_set1_epi32(si)),
                                             _mm512_mullo_epi32(_mm512_srli_epi32(lane, 3), _mm512_set1_epi32(sj)));
        const __mmask16 row_lanes = static_cast<__mmask16>(0x0101 * first_lanes(std::min<int64_t>(rows - i0, 8)));
        for (int64_t j = pc; j < pc + kc; j += 2) {
          const __mmask16 cols2 = j + 1 < pc + kc ? 0xffff : 0x00ff;  // the last column may be alone
          const __mmask16 live = cols2 & row_lanes;
          const float* f = w + ((g * Kg + (flip ? j : i0)) * Cg + (flip ? i0 : j)) * 9;
          __m512 tap[9];
          for (int e = 0; e < 9; ++e)
            tap[e] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, idx, f + (flip ? 8 - e : e), 4);
          __m512 t[3][4];
          for (int r = 0; r < 3; ++r) wg::weight_1d(tap[r * 3], tap[r * 3 + 1], tap[r * 3 + 2], t[r]);
          float* const dst = strip + (j - pc) * MR;
          for (int b = 0; b < 4; ++b) {
            __m512 col[4];
            wg::weight_1d(t[0][b], t[1][b], t[2][b], col);
            for (int a = 0; a < 4; ++a) _mm512_mask_storeu_ps(dst + (a * 4 + b) * item, cols2, col[a]);
          }
        }
        continue;
      }
#endif
      for (int64_t j = pc; j < pc + kc; ++j)
        for (int64_t ii = 0; ii < MR; ++ii) {
          float* const dst = strip + (j - pc) * MR + ii;
          const int64_t i = i0 + ii;
          if (i >= rows) {
            for (int xi = 0; xi < 16; ++xi) dst[xi * item] = 0.0f;
            continue;
          }
          const int64_t k = flip ? j : i, c = flip ? i : j;
          const float* f = w + ((g * Kg + k) * Cg + c) * 9;
          float t[3][4];
          for (int r = 0; r < 3; ++r) {
            if (flip) wg::weight_1d(f[(2 - r) * 3 + 2], f[(2 - r) * 3 + 1], f[(2 - r) * 3], t[r]);
            else wg::weight_1d(f[r * 3], f[r * 3 + 1], f[r * 3 + 2], t[r]);
          }
          for (int b = 0; b < 4; ++b) {
            float col[4];
            wg::weight_1d(t[0][b], t[1][b], t[2][b], col);
            for (int a = 0; a < 4; ++a) dst[(a * 4 + b) * item] = col[a];
          }
        }
    }
  }
  return u;
}

// dw[k, c] = G^T dU[., k, c] G, dU as the micro-kernel's tiles: element (item, k, c) at
// ((item*KS + k/MR)*CS + c/NR)*MR*NR + (k%MR)*NR + c%NR, KS and CS strips of MR and NR.
void weight_grad_transform(const Conv2dShape& s, const float* dU, int64_t KS, int64_t CS, float* dw, bool accumulate) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, xs = KS * CS * MR * NR;
#pragma omp parallel for schedule(static)
  for (int64_t kc = 0; kc < s.K * Cg; ++kc) {
    const int64_t k = kc / Cg % Kg, c = kc % Cg, g = kc / Cg / Kg;
    const float* u = dU + ((g * 16 * KS + k / MR) * CS + c / NR) * MR * NR + k % MR * NR + c % NR;
    float q[4][3];
    for (int a = 0; a < 4; ++a)
      wg::weight_grad_1d(u[(a * 4) * xs], u[(a * 4 + 1) * xs], u[(a * 4 + 2) * xs], u[(a * 4 + 3) * xs], q[a]);
    for (int sc = 0; sc < 3; ++sc) {
      float col[3];
      wg::weight_grad_1d(q[0][sc], q[1][sc], q[2][sc], q[3][sc], col);
      for (int r = 0; r < 3; ++r) store_grad(dw + kc * 9 + r * 3 + sc, col[r], accumulate);
    }
  }
}

// The weight-grad's reduction block: the micro-kernel's whole kc range (gemm::KC).
constexpr int64_t kWeightGradTiles = 256;

// Tiles per block: two strips reuse each A strip once from L1; one when tiles are few.
int64_t block_tiles(int64_t T, int64_t threads) { return T >= 2 * NR * 8 * threads ? 2 * NR : NR; }

// The forward and the data-grad: out = src correlated with the filters whose transforms are
// packed in U (transform_weights), fused per block of tiles so that nothing the size of the
// batch is materialized: a task transforms its block's inputs into L2 (vp), runs the 16 GEMMs
// of its rows into L2 (mp), and transforms those straight into out. Tasks are (group, tile
// block, row block); rows split (each split transforms the block's inputs again) only while
// there are fewer than 8 tasks per thread.
void apply(const Tiling& tl, int64_t N, const float* src, const float* U, int64_t Mp, const float* bias, float* out) {
  const int64_t G = tl.G, Cgi = tl.Ci / G, Cgo = tl.Co / G, T = N * tl.per_image();
  if (T == 0) return;
  const int64_t threads = gemm::max_threads(), NB = block_tiles(T, threads), blocks = (T + NB - 1) / NB;
  int64_t rblocks = 1;
  while (G * blocks * rblocks < 8 * threads && Cgo / (2 * rblocks) >= 4 * MR) rblocks *= 2;
  const int64_t RB = ((Cgo + rblocks - 1) / rblocks + MR - 1) / MR * MR;
  const int64_t kb = gemm::kc_block(Cgi), tasks = G * blocks * rblocks;
#pragma omp parallel
  {
    BlockBuffers bb(Cgi, RB, NB);
    int64_t last = -1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t g = task / (blocks * rblocks), blk = task / rblocks % blocks, rb = task % rblocks;
      const int64_t k0 = rb * RB, rows = std::min(RB, Cgo - k0);
      if (rows <= 0) continue;
      // Consecutive tasks of one thread often share a block: transform it once.
      if (last != g * blocks + blk) {
        bb.map.build(tl, blk * NB, std::min(NB, T - blk * NB));
        transform_inputs(tl, src, g, NB, bb);
        last = g * blocks + blk;
      }
      const int64_t strips = (rows + MR - 1) / MR;
      for (int64_t xi = 0; xi < 16; ++xi) {
        const float* ua = U + (g * 16 + xi) * Mp * Cgi;
        const float* vb = bb.vp + xi * Cgi * NB;
        float* mt = bb.mp + xi * RB * NB;
        for (int64_t ks = 0; ks < strips; ++ks)
          for (int64_t sj = 0; sj < NB / NR; ++sj)
            for (int64_t pc = 0; pc < Cgi; pc += kb) {
              const int64_t kc = std::min(kb, Cgi - pc);
              gemm::micro_kernel(kc, ua + pc * Mp + (k0 + ks * MR) * kc, vb + pc * NB + sj * kc * NR,
                                 mt + ks * MR * NB + sj * MR * NR, pc > 0);
            }
      }
      transform_outputs(tl, g, k0, rows, RB, NB, bias, out, bb);
    }
  }
}

}  // namespace

bool winograd_applies(const Conv2dShape& s, bool weight_grad) {
  // Read per call (microseconds against milliseconds), so a process can compare both paths.
  const char* v = switch_value(switches::cpu_conv2d_winograd);
  const bool enabled = v == nullptr || v[0] != '0';
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
#if defined(__AVX2__) && !defined(__AVX512F__)
  // The AVX2 copy's transforms go tile by tile: its forward and data-grad beat the direct GEMMs
  // only from 32 channels, its weight-grad nowhere (timings: see the header).
  const int64_t min_channels = weight_grad ? INT64_MAX : 32;
#else
  const int64_t min_channels = weight_grad ? 128 : 8;
#endif
  return enabled && s.R == 3 && s.S == 3 && s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 && s.dil_w == 1 &&
         s.pad_h <= 2 && s.pad_w <= 2 && std::min(Cg, Kg) >= min_channels &&
         offsets_fit(Tiling{s.C, s.H, s.W, s.K, s.P, s.Q, s.pad_h, s.pad_w, s.groups}, kWeightGradTiles) &&
         offsets_fit(Tiling{s.K, s.P, s.Q, s.C, s.H, s.W, 2 - s.pad_h, 2 - s.pad_w, s.groups}, 2 * NR);
}

void winograd_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  int64_t Mp = 0;
  const float* U = transform_weights(s, w, false, Mp);
  apply(Tiling{s.C, s.H, s.W, s.K, s.P, s.Q, s.pad_h, s.pad_w, s.groups}, s.N, x, U, Mp, b, y);
}

// dx = dy correlated with w flipped and transposed, dy padded by 2 - p: the same tiles.
void winograd_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  int64_t Mp = 0;
  const float* U = transform_weights(s, w, true, Mp);
  apply(Tiling{s.K, s.P, s.Q, s.C, s.H, s.W, 2 - s.pad_h, 2 - s.pad_w, s.groups}, s.N, dy, U, Mp, nullptr, dx);
}

// dU accumulates over blocks of kWeightGradTiles tiles, in order: each block's operands are
// transformed by all threads into shared panels (vt, dmt), then each task (item, channel
// strip, filter strips) adds the block's rank-nb product into the dU tiles it owns, so every
// element is reduced in a fixed order by one thread and no partial sums are needed.
void winograd_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  const Tiling tl{s.C, s.H, s.W, s.K, s.P, s.Q, s.pad_h, s.pad_w, s.groups};
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, T = s.N * tl.per_image();
  const int64_t CS = (Cg + NR - 1) / NR, KS = (Kg + MR - 1) / MR, Cp = CS * NR, Kp = KS * MR;
  float* const vt = reused(Slot::inputs, 16 * G * Cp * kWeightGradTiles);
  float* const dmt = reused(Slot::grads, 16 * G * Kp * kWeightGradTiles);
  float* const dU = reused(Slot::filters, 16 * G * KS * CS * MR * NR);
  BlockMap bm(kWeightGradTiles);
  // Filter strips per task: enough tasks for the threads, few enough that the B strip is reused.
  const int64_t threads = gemm::max_threads();
  int64_t kparts = 1;
  while (16 * G * CS * kparts < 8 * threads && KS / (2 * kparts) >= 2) kparts *= 2;
  const int64_t ks_per = (KS + kparts - 1) / kparts, tasks = 16 * G * CS * kparts;
  for (int64_t t0 = 0; t0 < T; t0 += kWeightGradTiles) {
    const int64_t nb = std::min(kWeightGradTiles, T - t0);
    bm.build(tl, t0, nb);
#pragma omp parallel
    {
      for (int64_t g = 0; g < G; ++g) {
        transform_inputs_t(tl, x, g, nb, Cp, bm, vt);
        transform_output_grads_t(tl, dy, g, nb, Kp, bm, dmt);
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < tasks; ++task) {
        const int64_t item = task / (CS * kparts), cs = task / kparts % CS, kp = task % kparts;
        const float* b = vt + item * Cp * nb + cs * nb * NR;
        for (int64_t ks = kp * ks_per; ks < std::min(KS, (kp + 1) * ks_per); ++ks)
          gemm::micro_kernel(nb, dmt + item * Kp * nb + ks * nb * MR, b, dU + ((item * KS + ks) * CS + cs) * MR * NR,
                             t0 > 0);
      }
    }
  }
  weight_grad_transform(s, dU, KS, CS, dw, accumulate);
}

}  // namespace fastopt::cpu::FASTOPT_ISA

// A packed, blocked single-precision GEMM, C (M x Nn) = A (M x Kd) B (Kd x Nn), in the BLIS
// shape: the caller's packers write A in MR-row strips and B in NR-column strips (zero-padded),
// so the micro-kernel reads both with unit stride, and the caller's store maps the MR x NR tile
// onto its output. Packers that gather (im2col, col2im) thus never materialize a whole matrix.
//
// Blocking: a B strip kc x NR (at most 60 KiB at AVX-512) is reused from L1/L2 across the
// MR-row strips of an MC x kc A block streaming from L2. A task packs one kc x NC panel of B
// (1.4 MiB, L2-resident) at a time and runs all of its rows against it. Forward and data-grad
// share one prepacked A (the weights) across tasks, so their tasks are column blocks, each
// packing its own part of the im2col once; the whole im2col is materialized only when tasks
// must split rows (see run()). A task's tiles stay in a thread-private accumulator buffer
// (ws.c, at most 2 MiB) for all KC blocks: the micro-kernel loads a tile, adds one block's
// products and stores it back (contiguous, L2), and each tile reaches the output once. Before,
// every KC block's tile went through the caller's scattered read-add-write store: 5-7% of the
// deep layers' forward and data-grad (3x3 512@7, Kd = 4608 in 15 blocks), 1-4% at 128@28.
// KC = 320 keeps the 3x3 reductions C*9 = 288 in one block and 576 in two (smaller KCs and NCs,
// tried: bench/results/notes-kernels.md). Each output element is reduced over Kd in fixed equal blocks
// (kc_block), in order, by one thread, so results never depend on the thread count.
//
// Why not link a BLAS: a BLAS needs both operands materialized, while conv wants im2col built
// inside the packing step, and the build keeps no extra dependency. The micro-kernel alone keeps
// up with OpenBLAS; the driver around it (packing, stores) is where this GEMM still loses to it
// (rates: bench/results/notes-kernels.md).
//
// Included by one CPU family file that is compiled once per ISA: the tile shape and the
// micro-kernel follow the ISA of the copy (explicit FMA, since the family builds with
// -ffp-contract=off; the baseline copy multiplies and adds).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastopt::cpu::FASTOPT_ISA {
namespace gemm {

#if defined(__AVX512F__)
constexpr int MR = 8, NR = 48;  // 24 zmm accumulators, 3 for B, 1 broadcast; MR divides 64, 128, ...
#elif defined(__AVX2__)
constexpr int MR = 6, NR = 16;   // 12 ymm accumulators
#else
constexpr int MR = 4, NR = 8;
#endif
constexpr int64_t KC = 320;  // the most; a reduction is cut into equal blocks of at most KC
constexpr int64_t MC = MR * 16;
constexpr int64_t NC = NR * 24;

// tile (MR x NR, row-major) = (acc ? tile : 0) + sum_p a[p*MR + i] * b[p*NR + j], summed in p order.
// AVX-512: NV < NR / 16 computes only the tile's first 16 NV columns (a strip's tail), leaving
// the others unwritten.
#if defined(__AVX512F__)
template <int NV = NR / 16>
#endif
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict tile,
                         bool acc) {
#if defined(__AVX512F__)
  __m512 c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) c[i][v] = acc ? _mm512_load_ps(tile + i * NR + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m512 bv[NV];
    // The B strip outgrows L1 at kc near KC (60 KiB), so its rows come from L2: fetch them 8
    // steps ahead (2-4% on the 32- and 64-channel layers' forward and data-grad). The A strip
    // streams from L2 (L3 for deep layers' weights): fetch its line 32 steps ahead, once per
    // line (another 2-7%, most on 3x3 512@7).
    for (int v = 0; v < NV; ++v) _mm_prefetch(reinterpret_cast<const char*>(b + (p + 8) * NR + 16 * v), _MM_HINT_T0);
    if (p % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(a + (p + 32) * MR), _MM_HINT_T0);
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + p * NR + 16 * v);
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[p * MR + i]);
      for (int v = 0; v < NV; ++v) c[i][v] = _mm512_fmadd_ps(ai, bv[v], c[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) _mm512_store_ps(tile + i * NR + 16 * v, c[i][v]);
#elif defined(__AVX2__)
  __m256 c0[MR], c1[MR];
  for (int i = 0; i < MR; ++i) {
    c0[i] = acc ? _mm256_loadu_ps(tile + i * NR) : _mm256_setzero_ps();
    c1[i] = acc ? _mm256_loadu_ps(tile + i * NR + 8) : _mm256_setzero_ps();
  }
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_loadu_ps(b + p * NR), b1 = _mm256_loadu_ps(b + p * NR + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + p * MR + i);
      c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(tile + i * NR, c0[i]);
    _mm256_storeu_ps(tile + i * NR + 8, c1[i]);
  }
#else
  float c[MR * NR] = {};
  if (acc) std::memcpy(c, tile, sizeof c);
  for (int64_t p = 0; p < kc; ++p)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) c[i * NR + j] += a[p * MR + i] * b[p * NR + j];
  std::memcpy(tile, c, sizeof c);
#endif
}

// The micro-kernel for a strip of `cols` <= NR columns: on AVX-512, only the vectors that hold
// them (the 7x7 stem's weight-grad has 147 = 3 x 48 + 3 columns; a 10-class linear layer 10).
inline void micro_kernel_cols(int64_t cols, int64_t kc, const float* __restrict a, const float* __restrict b,
                              float* __restrict tile, bool acc) {
#if defined(__AVX512F__)
  if (cols <= 16) return micro_kernel<1>(kc, a, b, tile, acc);
  if (cols <= 32) return micro_kernel<2>(kc, a, b, tile, acc);
#endif
  (void)cols;
  micro_kernel(kc, a, b, tile, acc);
}

#if defined(__AVX512F__)
// Lanes [0, n) of 16 (n clamped to [0, 16]) as a mask: a row's or a block's tail.
inline __mmask16 first_lanes(int64_t n) { return static_cast<__mmask16>((1u << std::clamp<int64_t>(n, 0, 16)) - 1); }

// Lanes [a, b) of 16, clamped to [0, 16]: the part of a vector that lies inside a row.
inline __mmask16 lanes_between(int64_t a, int64_t b) { return first_lanes(b) & ~first_lanes(a); }

// In-register transposes for packers whose source runs along the reduction (weight-grad: both
// operands are rows of pixels). transpose16: r[i] holds element i of every input row on return.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  // r[4a + b] now holds element b of every 4-lane group of rows 4a..4a+3; combine the 128-bit
  // lanes across row groups.
  for (int b = 0; b < 4; ++b) {
    t[b] = _mm512_shuffle_f32x4(r[b], r[4 + b], 0x88);
    t[4 + b] = _mm512_shuffle_f32x4(r[b], r[4 + b], 0xdd);
    t[8 + b] = _mm512_shuffle_f32x4(r[8 + b], r[12 + b], 0x88);
    t[12 + b] = _mm512_shuffle_f32x4(r[8 + b], r[12 + b], 0xdd);
  }
  for (int b = 0; b < 8; ++b) {
    r[b] = _mm512_shuffle_f32x4(t[b], t[8 + b], 0x88);
    r[8 + b] = _mm512_shuffle_f32x4(t[b], t[8 + b], 0xdd);
  }
}

// An MR = 8 row strip from 8 rows of 16 elements: dst[e*8 + i] = row i element e, for the first
// `count` elements (<= 16). Output vector u holds elements 2u and 2u + 1.
inline void transpose8x16_to_strip(const __m512 r[8], int count, float* __restrict dst) {
  __m512 q[8], x[8];
  for (int h = 0; h < 8; h += 4) {  // rows h..h+3: q[h + e] lane L = those rows of element 4L + e
    const __m512 t0 = _mm512_unpacklo_ps(r[h], r[h + 1]), t1 = _mm512_unpackhi_ps(r[h], r[h + 1]);
    const __m512 t2 = _mm512_unpacklo_ps(r[h + 2], r[h + 3]), t3 = _mm512_unpackhi_ps(r[h + 2], r[h + 3]);
    q[h] = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    q[h + 1] = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    q[h + 2] = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    q[h + 3] = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int e = 0; e < 4; ++e) {  // x[e]: lanes 0, 1 of q[e], q[4+e]; x[4+e]: lanes 2, 3
    x[e] = _mm512_shuffle_f32x4(q[e], q[4 + e], 0x44);
    x[4 + e] = _mm512_shuffle_f32x4(q[e], q[4 + e], 0xee);
  }
  for (int u = 0; 2 * u < count; ++u) {
    const int L = u / 2, e = 2 * (u % 2);
    const __m512* xs = x + (L >= 2 ? 4 : 0);
    const __m512 o = (L % 2) ? _mm512_shuffle_f32x4(xs[e], xs[e + 1], 0xdd)
                             : _mm512_shuffle_f32x4(xs[e], xs[e + 1], 0x88);
    _mm512_mask_storeu_ps(dst + 16 * u, 2 * u + 1 < count ? 0xffff : 0x00ff, o);
  }
}
#endif

// dst[p*NR + j] = src[j*ld + p] for p < kc, j < cols; zero for cols <= j < NR. Packs a panel
// whose columns were gathered as contiguous rows (weight-grad's im2col) into the B layout;
// AVX-512 transposes 16 x 16 blocks in registers instead of 256 scattered element moves.
inline void transpose_to_panel(const float* __restrict src, int64_t ld, int64_t kc, int64_t cols,
                               float* __restrict dst) {
  int64_t p0 = 0;
#if defined(__AVX512F__)
  if (cols == NR) {
    for (; p0 + 16 <= kc; p0 += 16)
      for (int jb = 0; jb < NR; jb += 16) {
        __m512 r[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (jb + i) * ld + p0);
        transpose16(r);
        for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + (p0 + i) * NR + jb, r[i]);
      }
  }
#endif
  for (int64_t p = p0; p < kc; ++p)
    for (int64_t j = 0; j < NR; ++j) dst[p * NR + j] = j < cols ? src[j * ld + p] : 0.0f;
}

// One unit of parallel work: rows [i0, i1) and columns [j0, j1) of batch item `item`.
struct Task {
  int64_t item, i0, i1, j0, j1;
};

// Splits items x M x Nn into tasks, finer only while there are fewer than a few per thread.
// Columns split first, down to 4 strips: a task packs its own B panels (im2col, dear) but
// shares A. Below that rows split: a few wide A panels streamed against a small B panel beat
// many passes over A, which for deep layers (512 x 4608 weights) no longer fits in cache.
inline std::vector<Task> make_tasks(int64_t items, int64_t M, int64_t Nn, int threads, bool shared_a, int64_t Kd) {
  const int64_t want = 4 * static_cast<int64_t>(threads);
  int64_t nb = std::min<int64_t>(NC, (Nn + NR - 1) / NR * NR);
  int64_t mb = M;
  auto count = [&] { return items * ((M + mb - 1) / mb) * ((Nn + nb - 1) / nb); };
  auto split = [&](int64_t& b, int64_t unit, int64_t floor) {
    while (count() < want && b > floor) b = std::max<int64_t>(floor, (b / 2 + unit - 1) / unit * unit);
  };
  split(nb, NR, 4 * NR);
  split(mb, MR, 4 * MR);
  split(nb, NR, NR);
  split(mb, MR, MR);
  // With few tasks, a count that the threads do not divide leaves one thread idle at the end
  // (11 column tasks for 3x3 256@14), so add column blocks up to a multiple of the thread count
  // and spread the NR strips evenly over them (about 1% there: dynamic scheduling had hidden
  // most of it).
  const int64_t strips = (Nn + NR - 1) / NR, rblocks = (M + mb - 1) / mb;
  int64_t cblocks = (Nn + nb - 1) / nb;
  // With A shared and L2-resident (<= 512 KiB), a column block costs nothing extra, so cut at
  // least 32 per thread (down to 4 strips): dynamic scheduling then ends within a small task of
  // the other thread, where 29 blocks of 24 strips (3x3 32>64@16 data-grad, N = 128) could idle
  // one for 7% of the pass (2% measured). A larger A is streamed again by every block (3% lost
  // on 3x3 256@14).
  const bool fine = shared_a && M * Kd <= (int64_t{128} << 10);
  if (fine)
    while (items * rblocks * cblocks < 32 * threads && (cblocks + 1) * 4 <= strips) ++cblocks;
  if (items * rblocks * cblocks < 8 * threads || fine)
    while ((items * rblocks * cblocks) % threads != 0 && cblocks < strips) ++cblocks;
  std::vector<Task> tasks;
  for (int64_t t = 0; t < items; ++t)
    for (int64_t i = 0; i < M; i += mb)
      for (int64_t b = 0; b < cblocks; ++b)
        tasks.push_back({t, i, std::min(M, i + mb), b * strips / cblocks * NR,
                         std::min(Nn, (b + 1) * strips / cblocks * NR)});
  return tasks;
}

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Equal reduction blocks: 576 = 2 x 288 rather than 384 + 192, so no pass runs a short block.
inline int64_t kc_block(int64_t Kd) {
  const int64_t blocks = (Kd + KC - 1) / KC;
  return (Kd + blocks - 1) / blocks;
}

// Packed panels start on a cache line: B rows are NR floats (a whole number of lines), and a
// vector load that straddles two lines costs twice (it halved the GEMM rate when unaligned).
// Left uninitialized: every float is written before it is read, and zeroing the workspaces
// (3.6 MiB per thread per call) and the prepacked A cost 1-2% of a deep layer's pass.
template <class T>
class PanelOf {
 public:
  explicit PanelOf(size_t n) : buf_(new T[n + 64 / sizeof(T)]) {
    const auto addr = reinterpret_cast<uintptr_t>(buf_.get());
    data_ = buf_.get() + ((64 - addr % 64) % 64) / sizeof(T);
  }
  T* data() { return data_; }

 private:
  std::unique_ptr<T[]> buf_;
  T* data_;
};
using Panel = PanelOf<float>;

// The packed operand format and the micro-kernel that multiplies it: here float32 panels
// (dst[p*MR + i], dst[p*NR + j]); gemm_bf16.h adds bf16 pairs. kstep: reduction rows per
// packed group, so a strip of kc rows holds kpad(kc) = kc rounded up to kstep rows (zeros past
// kc), and every KC block but the last is a whole number of groups. begin() / end() bracket a
// task on its thread (AMX configures and releases its tiles there: gemm_amx.h).
struct F32 {
  using Elem = float;
  static constexpr int64_t kstep = 1;
  static void begin() {}
  static void end() {}
  static void micro(int64_t cols, int64_t kc, const float* a, const float* b, float* tile, bool acc) {
    micro_kernel_cols(cols, kc, a, b, tile, acc);
  }
};

template <class Kern>
inline int64_t kpad(int64_t kc) {
  return (kc + Kern::kstep - 1) / Kern::kstep * Kern::kstep;
}

// The reduction block of a Kern: kc_block rounded up to whole groups (KC is a multiple of every
// kstep, so the block stays within the workspaces).
template <class Kern>
inline int64_t kc_block_of(int64_t Kd) {
  return kpad<Kern>(kc_block(Kd));
}

// Row blocks of a task are cut to at most this many accumulator floats (2 MiB; each row block
// packs its B panels again). At 1 MiB the 256-row weight-grad tasks of 3x3 256@14 (M x NC =
// 256 x 1152) ran as two row blocks, repacking the transposed x panel: 4-5% of that pass.
constexpr int64_t C_FLOATS = int64_t{1} << 19;

// Thread-private packing buffers and the accumulator tiles of one task block; the same for
// every Kern of one element type (a kpad(kc) strip fits, as KC is a multiple of every kstep).
template <class E>
struct WorkspaceFor {
  PanelOf<E> a{static_cast<size_t>(MC * KC)};
  PanelOf<E> b{static_cast<size_t>(KC * NC)};
  Panel c{static_cast<size_t>(C_FLOATS)};
};
template <class Kern>
using WorkspaceOf = WorkspaceFor<typename Kern::Elem>;
using Workspace = WorkspaceOf<F32>;

// One task on the calling thread. apre / bpre: A / B of this item prepacked by run(), or null
// to pack here.
// pack_a(item, i0, rows, p0, kc, dst): dst[p*MR + i] = A[i0+i][p0+p], zero for i >= rows.
// pack_b(item, p0, kc, j0, cols, dst): dst[p*NR + j] = B[p0+p][j0+j], zero for j >= cols.
// (That is the F32 layout; another Kern's packers write its own, kpad(kc) rows per strip.)
// store(item, i0, rows, j0, cols, tile): writes the finished tile (rows of NR floats, reduced
// over all of Kd) to the output.
// prepack_a packs all of A once up front (worth it when A is small next to B, e.g. weights):
// tasks then share it and columns can be split finely without repacking A per task.
template <class Kern, class PackA, class PackB, class Store>
void task(const Task& tk, int64_t Kd, const typename Kern::Elem* apre, int64_t Mp, const typename Kern::Elem* bpre,
          int64_t Np, PackA& pack_a, PackB& pack_b, Store& store, WorkspaceOf<Kern>& ws) {
  using E = typename Kern::Elem;
  const int64_t kb = kc_block_of<Kern>(Kd);
  struct Bracket {  // end() on every way out (a packer may throw)
    Bracket() { Kern::begin(); }
    ~Bracket() { Kern::end(); }
  } bracket;
  for (int64_t jc = tk.j0; jc < tk.j1; jc += NC) {
    const int64_t nc = std::min(NC, tk.j1 - jc), ns = (nc + NR - 1) / NR;
    // The tiles of rows [is, ie) accumulate over all KC blocks in ws.c (tile (ir, jr) at
    // (ir/MR * ns + jr/NR) MR NR) and reach the output once, at the end.
    const int64_t sb = std::max<int64_t>(MC, C_FLOATS / (ns * NR * MC) * MC);
    for (int64_t is = tk.i0; is < tk.i1; is += sb) {
      const int64_t ie = std::min(tk.i1, is + sb);
      float* const c = ws.c.data();
      for (int64_t pc = 0; pc < Kd; pc += kb) {
        const int64_t kc = std::min(kb, Kd - pc), kp = kpad<Kern>(kc);
        const E* b = bpre ? bpre + pc * Np + jc * kp : ws.b.data();
        if (!bpre)
          for (int64_t jr = 0; jr < nc; jr += NR)
            pack_b(tk.item, pc, kc, jc + jr, std::min<int64_t>(NR, nc - jr), ws.b.data() + jr * kp);
        for (int64_t ic = is; ic < ie; ic += MC) {
          const int64_t mc = std::min(MC, ie - ic);
          const E* a = apre ? apre + pc * Mp + ic * kp : ws.a.data();
          if (!apre)
            for (int64_t ir = 0; ir < mc; ir += MR)
              pack_a(tk.item, ic + ir, std::min<int64_t>(MR, mc - ir), pc, kc, ws.a.data() + ir * kp);
          for (int64_t jr = 0; jr < nc; jr += NR)
            for (int64_t ir = 0; ir < mc; ir += MR)
              Kern::micro(std::min<int64_t>(NR, nc - jr), kc, a + ir * kp, b + jr * kp,
                          c + ((ic - is + ir) / MR * ns + jr / NR) * MR * NR, pc > 0);
        }
      }
      for (int64_t i = is; i < ie; i += MR)
        for (int64_t jr = 0; jr < nc; jr += NR)
          store(tk.item, i, std::min<int64_t>(MR, ie - i), jc + jr, std::min<int64_t>(NR, nc - jr),
                c + ((i - is) / MR * ns + jr / NR) * MR * NR);
    }
  }
}

// A whole M x Nn product of one item on the calling thread (for callers that parallelize over
// items themselves).
template <class Kern = F32, class PackA, class PackB, class Store>
void serial(int64_t item, int64_t M, int64_t Nn, int64_t Kd, PackA pack_a, PackB pack_b, Store store,
            WorkspaceOf<Kern>& ws) {
  if (M <= 0 || Nn <= 0 || Kd <= 0) return;
  task<Kern>(Task{item, 0, M, 0, Nn}, Kd, nullptr, 0, nullptr, 0, pack_a, pack_b, store, ws);
}

template <class Kern = F32, class PackA, class PackB, class Store>
void run(int64_t items, int64_t M, int64_t Nn, int64_t Kd, bool prepack_a, PackA pack_a, PackB pack_b, Store store) {
  if (items <= 0 || M <= 0 || Nn <= 0 || Kd <= 0) return;
  const std::vector<Task> tasks = make_tasks(items, M, Nn, max_threads(), prepack_a, Kd);
  const int64_t nt = static_cast<int64_t>(tasks.size());
  // Packed A of item t: KC blocks in order, each holding Mp/MR strips of kpad(kc) x MR (only
  // the last block can be padded, so block pc starts at pc * Mp).
  const int64_t Mp = (M + MR - 1) / MR * MR, strips = Mp / MR, kb = kc_block_of<Kern>(Kd), nkc = (Kd + kb - 1) / kb;
  const int64_t Kdp = kpad<Kern>(Kd);
  PanelOf<typename Kern::Elem> apack(prepack_a ? static_cast<size_t>(items * Mp * Kdp) : 0);
  if (prepack_a) {
#pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < items * nkc * strips; ++u) {
      const int64_t t = u / (nkc * strips), pc = (u / strips) % nkc * kb, i = u % strips * MR;
      const int64_t kc = std::min(kb, Kd - pc);
      pack_a(t, i, std::min<int64_t>(MR, M - i), pc, kc, apack.data() + t * Mp * Kdp + pc * Mp + i * kpad<Kern>(kc));
    }
  }
  // Only when the tasks split rows would several tasks pack the same B panels; then, if B is
  // small (deep layers on tiny batches), pack it once and share it. Otherwise a task packs its
  // own kc x nc panel into L2 and reuses it for all its rows: materializing the whole im2col
  // instead (58 MB for 3x3 256@14, N = 32) cost half the forward rate in page faults, writes
  // and L3 reads.
  const int64_t Np = (Nn + NR - 1) / NR * NR, bstrips = Np / NR;
  const bool rows_split = std::any_of(tasks.begin(), tasks.end(), [&](const Task& t) { return t.i1 - t.i0 < M; });
  const bool prepack_b = prepack_a && rows_split && items * Np * Kd <= (int64_t{16} << 20);
  PanelOf<typename Kern::Elem> bpack(prepack_b ? static_cast<size_t>(items * Np * Kdp) : 0);
  if (prepack_b) {
#pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < items * nkc * bstrips; ++u) {
      const int64_t t = u / (nkc * bstrips), pc = (u / bstrips) % nkc * kb, j = u % bstrips * NR;
      const int64_t kc = std::min(kb, Kd - pc);
      pack_b(t, pc, kc, j, std::min<int64_t>(NR, Nn - j), bpack.data() + t * Np * Kdp + pc * Np + j * kpad<Kern>(kc));
    }
  }
#pragma omp parallel
  {
    WorkspaceOf<Kern> ws;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < nt; ++t) {
      const int64_t item = tasks[t].item;
      task<Kern>(tasks[t], Kd, prepack_a ? apack.data() + item * Mp * Kdp : nullptr, Mp,
                 prepack_b ? bpack.data() + item * Np * Kdp : nullptr, Np, pack_a, pack_b, store, ws);
    }
  }
}

}  // namespace gemm
}  // namespace fastopt::cpu::FASTOPT_ISA

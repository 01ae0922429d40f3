// Linear layer on the CPU (fastopt/linear.h): three GEMMs on the packed driver of gemm.h and a
// column sum, in float32 or bfloat16 (x, w, b, dy bf16; fp32 accumulation, gemm_bf16.h; y and dx
// rounded to bf16 once at the store, dw and db kept in fp32 for an fp32-master-weight optimizer).
//
//   forward      y  (N x out) = x (N x in) w^T (in x out)  (+ b per column)
//   data-grad    dx (N x in)  = dy (N x out) w (out x in)
//   weight-grad  dw (out x in) = dy^T (out x N) x (N x in)
//   bias-grad    db (out)     = column sums of dy
// Each GEMM is 2 N in out flops against 4 (N in + N out + in out) bytes (2 per element in bf16),
// so all but the thinnest are compute-bound: the target is the GEMM rate (fp32, or bf16). The
// operands are read in place by the packers (row-major, or transposed: the torch layout makes
// w^T and dy^T strided views), so nothing is materialized besides the packed panels.
//
// Orientation: C = A B or, equivalently, C^T = B^T A^T with the store transposed. The
// micro-tile is MR x NR = 8 x 48 (AVX-512), so a thin side belongs on the rows: for y = x w^T
// with out = 10, rows = out pads 10 -> 16 where columns would pad 10 -> 48. Each GEMM takes the
// orientation with less padded work (ties: C = A B, whose stores are contiguous).
//
// Launch shape: small products (under kSerialFlops) run on the calling thread with a
// thread-local workspace: an OpenMP team and fresh 1.3 MB packing buffers cost more than a
// 128 x 256 x 10 product. Larger ones run gemm::run's tasks (row x column blocks of C) over an
// OpenMP team, and so does the bias sum past 1M elements.
//
// Timings against numpy.matmul and the 1x1-conv path this replaced: bench/results/notes-kernels.md.
// The tiny backward passes lose to numpy on packing: a 10-row product still packs whole 8 x 48 tiles.
//
// Determinism: each output element is reduced over the whole of K by one thread, in gemm.h's
// fixed KC blocks, so neither the thread count nor the serial/parallel choice changes a bit;
// the bias sum uses fixed row blocks summed in order.
#include <algorithm>

#include "fastopt/linear.h"
#include "gemm_bf16.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b,
                                         float* y);
                     void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx);
                     void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw,
                                                 bool accumulate);
                     void linear_backward_bias(const LinearShape& s, const float* dy, float* db, bool accumulate);
                     void linear_forward(const LinearShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y);
                     void linear_backward_data(const LinearShape& s, const bf16* dy, const bf16* w, bf16* dx);
                     void linear_backward_weight(const LinearShape& s, const bf16* dy, const bf16* x, float* dw,
                                                 bool accumulate);
                     void linear_backward_bias(const LinearShape& s, const bf16* dy, float* db, bool accumulate);)

namespace FASTOPT_ISA {
namespace {

using gemm::bf16;
using gemm::MR;
using gemm::NR;

// Below this many padded flops (~250 us of one core) one thread does as well as a team: on
// the 2-core dev VM, 256 x 512 x 256 (67 Mflop) ran in 466 us on one thread and 426 on two,
// while a team's start, three barriers and fresh per-thread packing buffers dominate anything
// much smaller (and stall for whole scheduler slices when the other core is busy).
constexpr int64_t kSerialFlops = int64_t{32} << 20;

// A factor with rows r and reduction index k: element (r, k) = p[r*ld + k] when along_k (rows
// contiguous along the reduction), else p[k*ld + r].
template <class T>
struct Factor {
  const T* p;
  int64_t ld;
  bool along_k;
};

// C[m][j] = p[m*ld + j], or p[j*ld + m] when transposed; accumulate (float C without bias: the
// weight-grad) adds each finished element into C (store_grad).
template <class TO>
struct Out {
  TO* p;
  int64_t ld;
  bool transposed;
  bool accumulate = false;
};

// An accumulating store (gradient accumulation): one addition into what C holds, rounded once.
template <class TO>
void grad_to(TO* o, float v) {
  *o = from_float<TO>(to_float(*o) + v);
}

inline int64_t padded(int64_t v, int64_t unit) { return (v + unit - 1) / unit * unit; }

// C (M x Nn) = A (M x Kd) B (Kd x Nn) + bias_row[m] + bias_col[j] (either may be null), with B
// given as the factor of B^T (rows j). Requires M, Nn, Kd >= 1.
template <class T, class TO>
void gemm_oriented(int64_t M, int64_t Nn, int64_t Kd, Factor<T> A, Factor<T> B, Out<TO> C, const T* bias_row,
                   const T* bias_col) {
  auto pack_a = [&](int64_t, int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) {
    if (A.along_k) {
      gemm::rows_to_strip(A.p + i0 * A.ld + p0, A.ld, rows, kc, dst);
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        const T* src = A.p + (p0 + p) * A.ld + i0;
        for (int64_t i = 0; i < MR; ++i) dst[p * MR + i] = i < rows ? to_float(src[i]) : 0.0f;
      }
    }
  };
  auto pack_b = [&](int64_t, int64_t p0, int64_t kc, int64_t j0, int64_t cols, float* dst) {
    if (B.along_k && cols == NR && std::is_same_v<T, float>) {
      gemm::transpose_to_panel(reinterpret_cast<const float*>(B.p) + j0 * B.ld + p0, B.ld, kc, NR, dst);
    } else if (B.along_k) {
      // A partial (or bf16) strip is staged as NR zero-padded fp32 rows, so that it also takes
      // the vector transpose (the element-wise tail of transpose_to_panel took half of 128 x
      // 256 x 10).
      alignas(64) float tmp[NR * gemm::KC];
      for (int64_t j = 0; j < NR; ++j)
        if (j < cols)
          std::transform(B.p + (j0 + j) * B.ld + p0, B.p + (j0 + j) * B.ld + p0 + kc, tmp + j * kc,
                         [](T v) { return to_float(v); });
        else std::fill_n(tmp + j * kc, kc, 0.0f);
      gemm::transpose_to_panel(tmp, kc, kc, NR, dst);
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        const T* src = B.p + (p0 + p) * B.ld + j0;
        std::transform(src, src + cols, dst + p * NR, [](T v) { return to_float(v); });
        std::fill(dst + p * NR + cols, dst + (p + 1) * NR, 0.0f);
      }
    }
  };
  auto store = [&](int64_t, int64_t i0, int64_t rows, int64_t j0, int64_t cols, const float* tile) {
    if (!C.transposed) {
      for (int64_t i = 0; i < rows; ++i) {
        TO* o = C.p + (i0 + i) * C.ld + j0;
        const float* t = tile + i * NR;
        if (bias_col)
          for (int64_t j = 0; j < cols; ++j) o[j] = from_float<TO>(to_float(bias_col[j0 + j]) + t[j]);
        else if (bias_row)
          for (int64_t j = 0; j < cols; ++j) o[j] = from_float<TO>(to_float(bias_row[i0 + i]) + t[j]);
        else if (C.accumulate)
          for (int64_t j = 0; j < cols; ++j) grad_to(o + j, t[j]);
        else
          for (int64_t j = 0; j < cols; ++j) o[j] = from_float<TO>(t[j]);
      }
    } else {
      // Column j of the tile is a run of `rows` consecutive elements of C's storage.
      for (int64_t j = 0; j < cols; ++j) {
        TO* o = C.p + (j0 + j) * C.ld + i0;
        const float* t = tile + j;
        if (bias_col)
          for (int64_t i = 0; i < rows; ++i) o[i] = from_float<TO>(to_float(bias_col[j0 + j]) + t[i * NR]);
        else if (bias_row)
          for (int64_t i = 0; i < rows; ++i) o[i] = from_float<TO>(to_float(bias_row[i0 + i]) + t[i * NR]);
        else if (C.accumulate)
          for (int64_t i = 0; i < rows; ++i) grad_to(o + i, t[i * NR]);
        else
          for (int64_t i = 0; i < rows; ++i) o[i] = from_float<TO>(t[i * NR]);
      }
    }
  };
  if (2 * padded(M, MR) * padded(Nn, NR) * Kd < kSerialFlops || gemm::max_threads() == 1) {
    static thread_local gemm::WorkspaceOf<gemm::KernFor<T>> ws;
    gemm::serial_typed<T>(0, M, Nn, Kd, pack_a, pack_b, store, ws);
  } else {
    // A prepacked once is shared by all column tasks, but it is a copy of the whole operand
    // (x itself when the batch is on the rows): past 64 MB the tasks pack their own strips.
    gemm::run_typed<T>(1, M, Nn, Kd, padded(M, MR) * Kd <= (int64_t{16} << 20), pack_a, pack_b, store);
  }
}

// C = A B in whichever orientation pads less; with Kd = 0, C = the bias (or zeros).
template <class T, class TO>
void matmul(int64_t M, int64_t Nn, int64_t Kd, Factor<T> A, Factor<T> B, Out<TO> C, const T* bias_col) {
  if (M == 0 || Nn == 0) return;
  if (Kd == 0) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < Nn; ++j) {
        TO* o = C.p + (C.transposed ? j * C.ld + m : m * C.ld + j);
        if (C.accumulate) grad_to(o, 0.0f);
        else *o = from_float<TO>(bias_col ? to_float(bias_col[j]) : 0.0f);
      }
    return;
  }
  if (padded(Nn, MR) * padded(M, NR) < padded(M, MR) * padded(Nn, NR))
    gemm_oriented(Nn, M, Kd, B, A, Out<TO>{C.p, C.ld, !C.transposed, C.accumulate}, bias_col,
                  static_cast<const T*>(nullptr));
  else gemm_oriented(M, Nn, Kd, A, B, C, static_cast<const T*>(nullptr), bias_col);
}

template <class T, class TO>
void forward(const LinearShape& s, const T* x, const T* w, const T* b, TO* y) {
  matmul(s.N, s.out, s.in, Factor<T>{x, s.in, true}, Factor<T>{w, s.in, true}, Out<TO>{y, s.out, false}, b);
}

template <class T>
void backward_data(const LinearShape& s, const T* dy, const T* w, T* dx) {
  matmul(s.N, s.in, s.out, Factor<T>{dy, s.out, true}, Factor<T>{w, s.in, false}, Out<T>{dx, s.in, false},
         static_cast<const T*>(nullptr));
}

template <class T>
void backward_weight(const LinearShape& s, const T* dy, const T* x, float* dw, bool accumulate) {
  matmul(s.out, s.in, s.N, Factor<T>{dy, s.out, false}, Factor<T>{x, s.in, false},
         Out<float>{dw, s.in, false, accumulate}, static_cast<const T*>(nullptr));
}

// Memory-bound (one add per element read). Rows are summed in fixed blocks of kRows, each block
// row by row (vectorized across columns), and the block sums added in order: a fixed order whose
// error grows like kRows + N / kRows rather than N. Threads take (row block, column block)
// units, each writing its own partial; the partials are then added in row-block order.
template <class T>
void backward_bias(const LinearShape& s, const T* dy, float* db, bool accumulate) {
  constexpr int64_t kRows = 256, kCols = 256;
  const int64_t N = s.N, out = s.out;
  if (out == 0) return;
  const int64_t rblocks = std::max<int64_t>(1, (N + kRows - 1) / kRows), cblocks = (out + kCols - 1) / kCols;
  std::vector<float> partial(static_cast<size_t>(rblocks * out));
  auto unit = [&](int64_t u) {
    const int64_t rb = u / cblocks, c0 = u % cblocks * kCols, c1 = std::min(out, c0 + kCols);
    float* acc = partial.data() + rb * out;
    for (int64_t c = c0; c < c1; ++c) acc[c] = 0.0f;
    for (int64_t n = rb * kRows; n < std::min(N, (rb + 1) * kRows); ++n) {
      const T* row = dy + n * out;
      for (int64_t c = c0; c < c1; ++c) acc[c] += to_float(row[c]);
    }
  };
  const int64_t units = rblocks * cblocks;
  if (N * out < (int64_t{1} << 20)) {
    for (int64_t u = 0; u < units; ++u) unit(u);
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < units; ++u) unit(u);
  }
  for (int64_t c = 0; c < out; ++c) {
    float sum = partial[c];
    for (int64_t rb = 1; rb < rblocks; ++rb) sum += partial[rb * out + c];
    store_grad(db + c, sum, accumulate);
  }
}

}  // namespace

void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y) {
  forward(s, x, w, b, y);
}
void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx) {
  backward_data(s, dy, w, dx);
}
void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  backward_weight(s, dy, x, dw, accumulate);
}
void linear_backward_bias(const LinearShape& s, const float* dy, float* db, bool accumulate) {
  backward_bias(s, dy, db, accumulate);
}
void linear_forward(const LinearShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y) {
  forward(s, x, w, b, y);
}
void linear_backward_data(const LinearShape& s, const bf16* dy, const bf16* w, bf16* dx) {
  backward_data(s, dy, w, dx);
}
void linear_backward_weight(const LinearShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate) {
  backward_weight(s, dy, x, dw, accumulate);
}
void linear_backward_bias(const LinearShape& s, const bf16* dy, float* db, bool accumulate) {
  backward_bias(s, dy, db, accumulate);
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y) {
  FASTOPT_CPU_DISPATCH(linear_forward(s, x, w, b, y))
}
void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx) {
  FASTOPT_CPU_DISPATCH(linear_backward_data(s, dy, w, dx))
}
void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  FASTOPT_CPU_DISPATCH(linear_backward_weight(s, dy, x, dw, accumulate))
}
void linear_backward_bias(const LinearShape& s, const float* dy, float* db, bool accumulate) {
  FASTOPT_CPU_DISPATCH(linear_backward_bias(s, dy, db, accumulate))
}
void linear_forward(const LinearShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y) {
  FASTOPT_CPU_DISPATCH(linear_forward(s, x, w, b, y))
}
void linear_backward_data(const LinearShape& s, const bf16* dy, const bf16* w, bf16* dx) {
  FASTOPT_CPU_DISPATCH(linear_backward_data(s, dy, w, dx))
}
void linear_backward_weight(const LinearShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate) {
  FASTOPT_CPU_DISPATCH(linear_backward_weight(s, dy, x, dw, accumulate))
}
void linear_backward_bias(const LinearShape& s, const bf16* dy, float* db, bool accumulate) {
  FASTOPT_CPU_DISPATCH(linear_backward_bias(s, dy, db, accumulate))
}
#endif

}  // namespace fastopt::cpu

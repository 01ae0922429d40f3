/*
Linear layer on CUDA, float32, torch layout (fastopt/linear.h): three GEMMs and a column sum.

  forward      y  (N x out) = x (N x in) w^T + b      M = N,   N' = out, K = in
  data-grad    dx (N x in)  = dy w                    M = N,   N' = in,  K = out
  weight-grad  dw (out x in) = dy^T x                 M = out, N' = in,  K = N
  bias-grad    db (out)     = column sums of dy
Work: 2 N in out flops per GEMM against 4 (N in + N out + in out) bytes, so all but the thinnest
layers are compute-bound; the column sum reads N out floats once (bandwidth-bound).

GEMM: the tiled kernel of the conv family (cuda/gemm_tiles.cuh: 256 threads, a BM x BN tile per
block, 8-deep k steps double-buffered through shared memory, exact float32 FMAs), here with plain
strided operands: the transposes (w^T, dy^T) are only index math in the loaders. Tiles are 128x128
when their grid fills the SMs, else 64x64. Grid (M tiles, N' tiles, splits): M, usually the batch,
runs along x, whose limit is 2^31 - 1 blocks. When the tiles alone leave SMs idle (small batch or
few features) and K is deep, K is split into `splits` ranges of whole k steps: each split writes
its own M x N' partial into stream-ordered scratch, and one thread per output then adds the
partials in split order (then the bias). Shapes past the tiles' int32 coordinates or grid limits
take a one-thread-per-output loop with int64 indices.

Column sum: 256-thread blocks of 32 columns x 8 row lanes (a warp reads 32 consecutive floats of
a row); each lane sums rows lane, lane + 8, ... of its row range, the 8 lanes are added in order
in shared memory; a tall dy is cut into row ranges (grid y) whose partials are added in order.

No atomics: every output is written once, every sum runs in an order fixed by the shape and the
device's SM count, so results are bitwise reproducible run to run. Empty extents launch nothing
(an empty reduction writes b or 0).
*/
#include <algorithm>

#include "gemm_tiles.cuh"
#include "fastopt/backend.h"
#include "fastopt/linear.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using tiled::ceil_div;
using tiled::kMaxGridYZ;
using tiled::kThreads;
using tiled::Tile;
using detail::as_stream;
using detail::check;
using detail::grid_stride_grid;
using detail::sm_count;

constexpr int64_t kMaxSplitFloats = int64_t{1} << 26;  // split-K scratch, 256 MiB at most

// C (M x N) = A (M x Kd) B (Kd x N) (+ bias[n]) with strided operands: A[m][k] = A[m lda + k] when
// kA (rows contiguous along k) else A[k lda + m]; B[k][n] = B[n ldb + k] when kB else B[k ldb + n].
// Split `split` stores into out + split M N; the bias is only passed with a single split, and so is
// accumulate (the weight-grad adds into out: store_grad).
template <bool kA, bool kB>
struct Problem {
  static constexpr bool kAAlongK = kA;
  static constexpr bool kBAlongK = kB;
  int M, N, Kd;
  int splits;
  const float* A;
  int64_t lda;
  const float* B;
  int64_t ldb;
  const float* bias;
  float* out;
  bool accumulate = false;

  FASTOPT_HD float a(int, int m, int k) const { return kA ? A[int64_t(m) * lda + k] : A[int64_t(k) * lda + m]; }
  FASTOPT_HD float b(int, int k, int n) const { return kB ? B[int64_t(n) * ldb + k] : B[int64_t(k) * ldb + n]; }
  FASTOPT_HD void store(int, int split, int m, int n, float v) const {
    store_grad(out + (int64_t(split) * M + m) * N + n, bias != nullptr ? v + bias[n] : v, accumulate);
  }
};

// The conv family's gemm_kernel minus groups and TF32, with M tiles along grid x.
template <class Prob, int BM, int BN>
__global__ void __launch_bounds__(kThreads, BM == 128 ? 2 : 1) gemm_kernel(const Prob pb) {
  using T = Tile<BM, BN>;
  __shared__ T tiles[2];
  const int tid = static_cast<int>(threadIdx.x);
  const int split = static_cast<int>(blockIdx.z);
  const int m0 = static_cast<int>(blockIdx.x) * BM;
  const int n0 = static_cast<int>(blockIdx.y) * BN;
  int k_begin, k_end;
  tiled::split_range(pb.Kd, pb.splits, split, k_begin, k_end);
  float acc[T::TM][T::TN];
  tiled::gemm_mainloop<Prob, BM, BN, false>(pb, 0, tid, m0, n0, k_begin, k_end, tiles, acc);
  tiled::store_outputs<Prob, BM, BN>(pb, 0, split, tid, m0, n0, acc);
}

// out[i] = sum over s ascending of part[s numel + i] (+ bias[i % N]), added into out with accumulate.
__global__ void __launch_bounds__(kThreads) split_sum_kernel(const float* part, int64_t numel, int splits, int64_t N,
                                                             const float* bias, float* out, bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < numel; i += int64_t{gridDim.x} * kThreads) {
    float acc = part[i];
    for (int s = 1; s < splits; ++s) acc += part[s * numel + i];
    store_grad(out + i, bias != nullptr ? acc + bias[i % N] : acc, accumulate);
  }
}

// The fallback: one thread per output, int64 throughout, k ascending.
struct Gemm64 {
  int64_t M, N, Kd;
  const float* A;
  int64_t lda;
  bool a_along_k;
  const float* B;
  int64_t ldb;
  bool b_along_k;
  const float* bias;
  float* out;
  bool accumulate;
};

__global__ void __launch_bounds__(kThreads) gemm_gather_kernel(const Gemm64 g) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < g.M * g.N; i += int64_t{gridDim.x} * kThreads) {
    const int64_t m = i / g.N, n = i % g.N;
    float acc = 0.0f;
    for (int64_t k = 0; k < g.Kd; ++k)
      acc = fmaf(g.a_along_k ? g.A[m * g.lda + k] : g.A[k * g.lda + m],
                 g.b_along_k ? g.B[n * g.ldb + k] : g.B[k * g.ldb + n], acc);
    store_grad(g.out + i, g.bias != nullptr ? acc + g.bias[n] : acc, g.accumulate);
  }
}

constexpr int kSumCols = 32;
constexpr int kSumLanes = kThreads / kSumCols;

// dst[blockIdx.y out + c] = sum of dy[r, c] over the block's row range [y rows, (y + 1) rows)
// (added into dst with accumulate).
__global__ void __launch_bounds__(kThreads) column_sum_kernel(const float* dy, int64_t N, int64_t out, int64_t rows,
                                                              float* dst, bool accumulate) {
  __shared__ float lane_sum[kSumLanes][kSumCols];
  const int cx = static_cast<int>(threadIdx.x) % kSumCols, ly = static_cast<int>(threadIdx.x) / kSumCols;
  const int64_t c = int64_t{blockIdx.x} * kSumCols + cx;
  const int64_t r0 = int64_t{blockIdx.y} * rows, r1 = r0 + rows < N ? r0 + rows : N;
  float acc = 0.0f;
  if (c < out)
    for (int64_t r = r0 + ly; r < r1; r += kSumLanes) acc += dy[r * out + c];
  lane_sum[ly][cx] = acc;
  __syncthreads();
  if (ly == 0 && c < out) {
    float s = lane_sum[0][cx];
    for (int l = 1; l < kSumLanes; ++l) s += lane_sum[l][cx];
    store_grad(dst + int64_t{blockIdx.y} * out + c, s, accumulate);
  }
}

// ------------------------------------------------------------------ host side

template <class Prob, int BM, int BN>
void launch_tiles(const Prob& pb, int64_t splits, cudaStream_t st, const char* what) {
  const dim3 grid(static_cast<unsigned>(ceil_div(pb.M, BM)), static_cast<unsigned>(ceil_div(pb.N, BN)),
                  static_cast<unsigned>(splits));
  gemm_kernel<Prob, BM, BN><<<grid, kThreads, 0, st>>>(pb);
  check(cudaGetLastError(), what);
}

// out (M x N, row-major) = A B (+ bias[n]) with A, B as in Problem<kA, kB>; with accumulate, out +=.
template <bool kA, bool kB>
void gemm(int64_t M, int64_t N, int64_t Kd, const float* A, int64_t lda, const float* B, int64_t ldb,
          const float* bias, float* out, bool accumulate, cudaStream_t st, const char* what) {
  if (M == 0 || N == 0) return;
  // Tile coordinates are int32 with room for a tile origin plus a tile past the extent.
  const int64_t lim = (int64_t{1} << 31) - (int64_t{1} << 16);
  if (M >= lim || N >= lim || Kd >= lim || ceil_div(N, 64) > kMaxGridYZ) {
    const Gemm64 g{M, N, Kd, A, lda, kA, B, ldb, kB, bias, out, accumulate};
    gemm_gather_kernel<<<grid_stride_grid(M * N), kThreads, 0, st>>>(g);
    check(cudaGetLastError(), what);
    return;
  }
  const int64_t sms = sm_count();
  // 128x128 tiles do twice the FMAs per shared-memory load of 64x64 ones, but only pay when
  // there are enough of them to give every SM a block.
  const bool big = M > 64 && N > 64 && ceil_div(M, 128) * ceil_div(N, 128) >= sms;
  const int64_t tiles = big ? ceil_div(M, 128) * ceil_div(N, 128) : ceil_div(M, 64) * ceil_div(N, 64);
  // Split K only to fill the SMs (about 2 blocks each), each split reducing at least 256 terms.
  int64_t splits = 1;
  if (tiles < sms)
    splits = std::min({ceil_div(2 * sms, tiles), std::max<int64_t>(1, Kd / 256), int64_t{kMaxGridYZ},
                       std::max<int64_t>(1, kMaxSplitFloats / (M * N))});
  const detail::Scratch scratch(splits > 1 ? static_cast<size_t>(splits * M * N) * sizeof(float) : 0, st);
  float* dst = splits > 1 ? reinterpret_cast<float*>(scratch.bytes()) : out;
  const Problem<kA, kB> pb{static_cast<int>(M), static_cast<int>(N), static_cast<int>(Kd), static_cast<int>(splits),
                           A, lda, B, ldb, splits > 1 ? nullptr : bias, dst, accumulate && splits == 1};
  if (big)
    launch_tiles<Problem<kA, kB>, 128, 128>(pb, splits, st, what);
  else
    launch_tiles<Problem<kA, kB>, 64, 64>(pb, splits, st, what);
  if (splits > 1) {
    split_sum_kernel<<<grid_stride_grid(M * N), kThreads, 0, st>>>(dst, M * N, static_cast<int>(splits), N, bias,
                                                                   out, accumulate);
    check(cudaGetLastError(), what);
  }
}

}  // namespace

void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y, void* stream) {
  gemm<true, true>(s.N, s.out, s.in, x, s.in, w, s.in, b, y, false, as_stream(stream), "linear_forward");
}

void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx, void* stream) {
  gemm<true, false>(s.N, s.in, s.out, dy, s.out, w, s.in, nullptr, dx, false, as_stream(stream),
                    "linear_backward_data");
}

void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, bool accumulate,
                            void* stream) {
  gemm<false, false>(s.out, s.in, s.N, dy, s.out, x, s.in, nullptr, dw, accumulate, as_stream(stream),
                     "linear_backward_weight");
}

// Row ranges of at least 1024 rows, as many as give about 4 blocks per SM (at least one range,
// so an empty batch still writes zeros).
void linear_backward_bias(const LinearShape& s, const float* dy, float* db, bool accumulate, void* stream) {
  if (s.out == 0) return;
  const cudaStream_t st = as_stream(stream);
  const int64_t cblocks = ceil_div(s.out, kSumCols);
  const int64_t ranges = std::max<int64_t>(
      1, std::min({s.N / 1024, std::max<int64_t>(1, 4 * sm_count() / cblocks), int64_t{kMaxGridYZ},
                   std::max<int64_t>(1, kMaxSplitFloats / s.out)}));
  const int64_t rows = std::max<int64_t>(1, ceil_div(s.N, ranges));
  const detail::Scratch scratch(ranges > 1 ? static_cast<size_t>(ranges * s.out) * sizeof(float) : 0, st);
  float* dst = ranges > 1 ? reinterpret_cast<float*>(scratch.bytes()) : db;
  column_sum_kernel<<<dim3(static_cast<unsigned>(cblocks), static_cast<unsigned>(ranges)), kThreads, 0, st>>>(
      dy, s.N, s.out, rows, dst, accumulate && ranges == 1);
  check(cudaGetLastError(), "linear_backward_bias");
  if (ranges > 1) {
    split_sum_kernel<<<grid_stride_grid(s.out), kThreads, 0, st>>>(dst, s.out, static_cast<int>(ranges), s.out,
                                                                   nullptr, db, accumulate);
    check(cudaGetLastError(), "linear_backward_bias (range sum)");
  }
}

}  // namespace fastopt::cuda

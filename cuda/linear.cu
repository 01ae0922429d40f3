/*
Linear layer on CUDA, float32 or bfloat16, torch layout (fastopt/linear.h): three GEMMs and a
column sum.

  forward      y  (N x out) = x (N x in) w^T + b      M = N,   N' = out, K = in
  data-grad    dx (N x in)  = dy w                    M = N,   N' = in,  K = out
  weight-grad  dw (out x in) = dy^T x                 M = out, N' = in,  K = N
  bias-grad    db (out)     = column sums of dy
Work: 2 N in out flops per GEMM against 4 (N in + N out + in out) bytes (bf16: 2 per operand
element), so all but the thinnest layers are compute-bound; the column sum reads dy once
(bandwidth-bound).

bf16 (x, w, b, dy bf16; fp32 accumulation; y and dx rounded to bf16 once, dw and db fp32, as on
the CPU): the same GEMMs through the engine's bf16 tensor-core stage (gemm_bf16.cuh: tiles of
bf16, mma.sync.m16n8k16), split-K partials in fp32 and rounded after their sum; the column sum and
the int64 fallback widen dy as they read it.

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
#include <type_traits>

#include "gemm_tiles.cuh"
#include "fastopt/backend.h"
#include "fastopt/linear.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using detail::as_stream;
using detail::check;
using detail::grid_stride_grid;
using detail::sm_count;
using tiled::ceil_div;
using tiled::kMaxGridYZ;
using tiled::kThreads;
using tiled::Math;
using tiled::Tile;
using tiled::TileFor;

constexpr int64_t kMaxSplitFloats = int64_t{1} << 26;  // split-K scratch, 256 MiB at most

// An output of type TOut from its fp32 sum: fp32 outputs (dw, and every fp32 pass) through
// store_grad (accumulate adds into them), bf16 ones rounded once (never accumulated).
template <class TOut>
FASTOPT_HD void store_out(TOut* p, float v, bool accumulate) {
  if constexpr (std::is_same_v<TOut, float>)
    store_grad(p, v, accumulate);
  else
    *p = from_float<TOut>(v);
}

// C (M x N) = A (M x Kd) B (Kd x N) (+ bias[n]) with strided operands of storage type T: A[m][k] =
// A[m lda + k] when kA (rows contiguous along k) else A[k lda + m]; B[k][n] = B[n ldb + k] when kB
// else B[k ldb + n]. With splits > 1, split `split` stores its fp32 partial into part + split M N;
// else the tile stores into out (+ bias, accumulate: store_out).
template <bool kA, bool kB, class T, class TOut>
struct Problem {
  static constexpr bool kAAlongK = kA;
  static constexpr bool kBAlongK = kB;
  int M, N, Kd;
  int splits;
  const T* A;
  int64_t lda;
  const T* B;
  int64_t ldb;
  const T* bias;
  float* part;
  TOut* out;
  bool accumulate = false;

  FASTOPT_HD float a(int, int m, int k) const {
    return to_float(kA ? A[int64_t(m) * lda + k] : A[int64_t(k) * lda + m]);
  }
  FASTOPT_HD float b(int, int k, int n) const {
    return to_float(kB ? B[int64_t(n) * ldb + k] : B[int64_t(k) * ldb + n]);
  }
  FASTOPT_HD void store(int, int split, int m, int n, float v) const {
    if (splits > 1)
      part[(int64_t(split) * M + m) * N + n] = v;
    else
      store_out(out + int64_t(m) * N + n, bias != nullptr ? v + to_float(bias[n]) : v, accumulate);
  }
};

// The conv family's gemm_kernel minus groups, with M tiles along grid x.
template <class Prob, int BM, int BN, Math kMath>
__global__ void __launch_bounds__(kThreads, BM == 128 ? 2 : 1) gemm_kernel(const Prob pb) {
  using T = TileFor<BM, BN, kMath>;
  __shared__ T tiles[2];
  const int tid = static_cast<int>(threadIdx.x);
  const int split = static_cast<int>(blockIdx.z);
  const int m0 = static_cast<int>(blockIdx.x) * BM;
  const int n0 = static_cast<int>(blockIdx.y) * BN;
  int k_begin, k_end;
  tiled::split_range(pb.Kd, pb.splits, split, k_begin, k_end, T::BK);
  float acc[T::TM][T::TN];
  tiled::gemm_mainloop<Prob, BM, BN, kMath>(pb, 0, tid, m0, n0, k_begin, k_end, tiles, acc);
  tiled::store_tile<Prob, BM, BN, kMath>(pb, 0, split, tid, m0, n0, acc);
}

// out[i] = sum over s ascending of part[s numel + i] (+ bias[i % N]), stored as TOut (store_out).
template <class T, class TOut>
__global__ void __launch_bounds__(kThreads) split_sum_kernel(const float* part, int64_t numel, int splits, int64_t N,
                                                             const T* bias, TOut* out, bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < numel; i += int64_t{gridDim.x} * kThreads) {
    float acc = part[i];
    for (int s = 1; s < splits; ++s) acc += part[s * numel + i];
    store_out(out + i, bias != nullptr ? acc + to_float(bias[i % N]) : acc, accumulate);
  }
}

// The fallback: one thread per output, int64 throughout, k ascending.
template <class T, class TOut>
struct Gemm64 {
  int64_t M, N, Kd;
  const T* A;
  int64_t lda;
  bool a_along_k;
  const T* B;
  int64_t ldb;
  bool b_along_k;
  const T* bias;
  TOut* out;
  bool accumulate;
};

template <class T, class TOut>
__global__ void __launch_bounds__(kThreads) gemm_gather_kernel(const Gemm64<T, TOut> g) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < g.M * g.N; i += int64_t{gridDim.x} * kThreads) {
    const int64_t m = i / g.N, n = i % g.N;
    float acc = 0.0f;
    for (int64_t k = 0; k < g.Kd; ++k)
      acc = fmaf(to_float(g.a_along_k ? g.A[m * g.lda + k] : g.A[k * g.lda + m]),
                 to_float(g.b_along_k ? g.B[n * g.ldb + k] : g.B[k * g.ldb + n]), acc);
    store_out(g.out + i, g.bias != nullptr ? acc + to_float(g.bias[n]) : acc, g.accumulate);
  }
}

constexpr int kSumCols = 32;
constexpr int kSumLanes = kThreads / kSumCols;

// dst[blockIdx.y out + c] = sum of dy[r, c] over the block's row range [y rows, (y + 1) rows)
// (added into dst with accumulate).
template <class T>
__global__ void __launch_bounds__(kThreads) column_sum_kernel(const T* dy, int64_t N, int64_t out, int64_t rows,
                                                              float* dst, bool accumulate) {
  __shared__ float lane_sum[kSumLanes][kSumCols];
  const int cx = static_cast<int>(threadIdx.x) % kSumCols, ly = static_cast<int>(threadIdx.x) / kSumCols;
  const int64_t c = int64_t{blockIdx.x} * kSumCols + cx;
  const int64_t r0 = int64_t{blockIdx.y} * rows, r1 = r0 + rows < N ? r0 + rows : N;
  float acc = 0.0f;
  if (c < out)
    for (int64_t r = r0 + ly; r < r1; r += kSumLanes) acc += to_float(dy[r * out + c]);
  lane_sum[ly][cx] = acc;
  __syncthreads();
  if (ly == 0 && c < out) {
    float s = lane_sum[0][cx];
    for (int l = 1; l < kSumLanes; ++l) s += lane_sum[l][cx];
    store_grad(dst + int64_t{blockIdx.y} * out + c, s, accumulate);
  }
}

// ------------------------------------------------------------------ host side

template <class Prob, int BM, int BN, Math kMath>
void launch_tiles(const Prob& pb, int64_t splits, cudaStream_t st, const char* what) {
  const dim3 grid(static_cast<unsigned>(ceil_div(pb.M, BM)), static_cast<unsigned>(ceil_div(pb.N, BN)),
                  static_cast<unsigned>(splits));
  gemm_kernel<Prob, BM, BN, kMath><<<grid, kThreads, 0, st>>>(pb);
  check(cudaGetLastError(), what);
}

// out (M x N, row-major) = A B (+ bias[n]) with A, B as in Problem<kA, kB, T, TOut>; with
// accumulate, out += (fp32 outputs only). bf16 operands run on the bf16 tensor-core stage.
template <bool kA, bool kB, class T, class TOut>
void gemm(int64_t M, int64_t N, int64_t Kd, const T* A, int64_t lda, const T* B, int64_t ldb, const T* bias,
          TOut* out, bool accumulate, cudaStream_t st, const char* what) {
  constexpr Math kMath = std::is_same_v<T, bf16> ? Math::kBf16 : Math::kFma;
  if (M == 0 || N == 0) return;
  // Tile coordinates are int32 with room for a tile origin plus a tile past the extent.
  const int64_t lim = (int64_t{1} << 31) - (int64_t{1} << 16);
  if (M >= lim || N >= lim || Kd >= lim || ceil_div(N, 64) > kMaxGridYZ) {
    const Gemm64<T, TOut> g{M, N, Kd, A, lda, kA, B, ldb, kB, bias, out, accumulate};
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
  float* part = reinterpret_cast<float*>(scratch.bytes());
  using Prob = Problem<kA, kB, T, TOut>;
  const Prob pb{static_cast<int>(M), static_cast<int>(N), static_cast<int>(Kd), static_cast<int>(splits), A, lda, B,
                ldb, bias, part, out, accumulate};
  if (big)
    launch_tiles<Prob, 128, 128, kMath>(pb, splits, st, what);
  else
    launch_tiles<Prob, 64, 64, kMath>(pb, splits, st, what);
  if (splits > 1) {
    split_sum_kernel<<<grid_stride_grid(M * N), kThreads, 0, st>>>(part, M * N, static_cast<int>(splits), N, bias,
                                                                   out, accumulate);
    check(cudaGetLastError(), what);
  }
}

// The entry points of both storage types: T for x, w, b, dy, y and dx; dw and db fp32.
template <class T>
void forward(const LinearShape& s, const T* x, const T* w, const T* b, T* y, void* stream) {
  gemm<true, true>(s.N, s.out, s.in, x, s.in, w, s.in, b, y, false, as_stream(stream), "linear_forward");
}

template <class T>
void backward_data(const LinearShape& s, const T* dy, const T* w, T* dx, void* stream) {
  gemm<true, false>(s.N, s.in, s.out, dy, s.out, w, s.in, static_cast<const T*>(nullptr), dx, false,
                    as_stream(stream), "linear_backward_data");
}

template <class T>
void backward_weight(const LinearShape& s, const T* dy, const T* x, float* dw, bool accumulate, void* stream) {
  gemm<false, false>(s.out, s.in, s.N, dy, s.out, x, s.in, static_cast<const T*>(nullptr), dw, accumulate,
                     as_stream(stream), "linear_backward_weight");
}

// Row ranges of at least 1024 rows, as many as give about 4 blocks per SM (at least one range,
// so an empty batch still writes zeros).
template <class T>
void backward_bias(const LinearShape& s, const T* dy, float* db, bool accumulate, void* stream) {
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
                                                                   static_cast<const float*>(nullptr), db, accumulate);
    check(cudaGetLastError(), "linear_backward_bias (range sum)");
  }
}

}  // namespace

void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y, void* stream) {
  forward(s, x, w, b, y, stream);
}
void linear_forward(const LinearShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y, void* stream) {
  forward(s, x, w, b, y, stream);
}
void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx, void* stream) {
  backward_data(s, dy, w, dx, stream);
}
void linear_backward_data(const LinearShape& s, const bf16* dy, const bf16* w, bf16* dx, void* stream) {
  backward_data(s, dy, w, dx, stream);
}
void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, bool accumulate,
                            void* stream) {
  backward_weight(s, dy, x, dw, accumulate, stream);
}
void linear_backward_weight(const LinearShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate,
                            void* stream) {
  backward_weight(s, dy, x, dw, accumulate, stream);
}
void linear_backward_bias(const LinearShape& s, const float* dy, float* db, bool accumulate, void* stream) {
  backward_bias(s, dy, db, accumulate, stream);
}
void linear_backward_bias(const LinearShape& s, const bf16* dy, float* db, bool accumulate, void* stream) {
  backward_bias(s, dy, db, accumulate, stream);
}

}  // namespace fastopt::cuda

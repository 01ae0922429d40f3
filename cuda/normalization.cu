/*
Batch, layer and group normalization on CUDA (math and NormShape: fastopt/normalization.h).

x, y, dy and dx are of a storage type T (float or bf16: the CPU's bf16 contract, fp32 statistics
and math, each output rounded once; per-channel and per-row arrays stay fp32), bf16 halving the
bytes below; a bf16 quad moves as one 8-byte access.

Bytes per element of x (fp32), the floor: forward reads x twice (statistics, normalize) and
writes y: 12 B; backward reads x and dy for the fused sums and again for dx, writes dx: 20 B.
Batch norm forward + backward: 32 B per element (the "3-read/2-write" floor of the issue counts
one read of x per pass). Per-channel or per-row vectors are negligible.

Statistics: every thread runs Welford on x - K, K a sample of the channel or row (its first
element; 0 if that is not finite: norm_shift), so float32 moments stay accurate for a mean of
1e5 and a std of 1e-2, and NaN/Inf reach mean and rstd as in torch (moments_push); threads merge
with Chan's rule over warp shuffles (a fixed tree), warps in index order, and per-block partials
in split order in a per-channel finalize kernel. The normalize pass uses mean = K + m with the
exact x - K. No atomics: results are bitwise reproducible run to run.

Launch shapes, 256 threads per block:
  channel reductions (batch norm statistics, the fused backward sums sum dy / sum dy (x - mean),
  and the dw/db sums of the row family): grid (C, splits), each block folds one channel over a
  range of its N*S values; splits = ceil(N*S / 8192) capped at 256, so C = 64 still yields
  thousands of blocks. A 2-d input (S = 1) is laid out by rows, so there a block covers 32
  consecutive channels (one per lane, coalesced) and 8 row strides: grid (ceil(C/32), splits).
  finalize: one thread per channel.  normalize / dx: grid-stride elementwise, float4 when the
  pointers are 16-byte aligned and a quad stays in one row and one channel (S % 4 == 0) or on
  four consecutive channels (S == 1, C % 4 == 0).
  row family (layer/group norm): one block per row for the statistics and for dx (its two sums,
  then dx, the row's second read hitting L2).
*/
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "fastopt/normalization.h"
#include "launch.cuh"
#include "pack.cuh"

namespace fastopt::cuda {
namespace {

using detail::as_stream;
using detail::check;
using detail::Scratch;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kSplitElems = 8192;  // values of one channel per statistics block
constexpr int64_t kMaxSplits = 256;
constexpr int64_t kTileRows = 64;      // rows per block of a 2-d (S = 1) channel reduction

// i / d, in 32-bit arithmetic when both fit (`narrow`, uniform per launch): a 64-bit division
// costs several times as many instructions, and the elementwise passes do one per quad.
__device__ __forceinline__ int64_t div_index(int64_t i, int64_t d, bool narrow) {
  return narrow ? static_cast<int64_t>(static_cast<uint32_t>(i) / static_cast<uint32_t>(d)) : i / d;
}

struct WelfordOp {
  using T = Moments<float>;
  static __device__ T zero() { return {0.0f, 0.0f, 0.0f}; }
  static __device__ T merge(T a, T b) { return moments_merge(a, b); }
  static __device__ T shfl_down(T v, int off) {
    return {__shfl_down_sync(0xffffffffu, v.count, off), __shfl_down_sync(0xffffffffu, v.mean, off),
            __shfl_down_sync(0xffffffffu, v.m2, off)};
  }
};

struct SumOp {  // (sum dy, sum dy (x - mean) [* rstd])
  using T = float2;
  static __device__ T zero() { return make_float2(0.0f, 0.0f); }
  static __device__ T merge(T a, T b) { return make_float2(a.x + b.x, a.y + b.y); }
  static __device__ T shfl_down(T v, int off) {
    return make_float2(__shfl_down_sync(0xffffffffu, v.x, off), __shfl_down_sync(0xffffffffu, v.y, off));
  }
};

// The block's fold of v, returned to every thread. Once per kernel (its shared arrays).
template <class Op>
__device__ typename Op::T block_fold(typename Op::T v) {
  using T = typename Op::T;
  __shared__ T warp_v[kWarps];
  __shared__ T result;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v = Op::merge(v, Op::shfl_down(v, off));
  if (threadIdx.x % 32 == 0) warp_v[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T r = warp_v[0];
    for (int w = 1; w < kWarps; ++w) r = Op::merge(r, warp_v[w]);
    result = r;
  }
  __syncthreads();
  return result;
}

// Fold over the 8 row strides of a 32-channel tile; valid in threads with threadIdx.x < 32.
template <class Op>
__device__ typename Op::T tile_fold(typename Op::T v) {
  using T = typename Op::T;
  __shared__ T part[kWarps][32];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  part[ty][tx] = v;
  __syncthreads();
  T r = part[0][tx];
  if (ty == 0)
    for (int w = 1; w < kWarps; ++w) r = Op::merge(r, part[w][tx]);
  return r;
}

// How a channel reduction is cut into blocks (see the header comment).
struct Geom {
  int64_t N, C, S;
  int64_t splits, per;  // per: values (spread) or rows (tile) of one split
  bool tile;            // S == 1
  bool narrow;          // N * S < 2^32: 32-bit index division
};

Geom make_geom(const NormShape& s) {
  Geom g{s.N, s.C, s.S, 1, 0, s.S == 1, s.N * s.S <= static_cast<int64_t>(UINT32_MAX)};
  const int64_t span = g.tile ? s.N : s.N * s.S;
  g.splits = std::min(kMaxSplits, std::max<int64_t>(1, (span + (g.tile ? kTileRows : kSplitElems) - 1) /
                                                           (g.tile ? kTileRows : kSplitElems)));
  g.per = (span + g.splits - 1) / g.splits;
  return g;
}

dim3 reduce_grid(const Geom& g) {
  return dim3(static_cast<unsigned>(g.tile ? (g.C + 31) / 32 : g.C), static_cast<unsigned>(g.splits));
}

// Calls f(c, n, offset) for this thread's values of its block's channel and split; returns the
// channel (>= C for idle lanes of the last tile).
template <class F>
__device__ int64_t for_each_value(const Geom& g, F&& f) {
  const int64_t k = blockIdx.y;
  if (g.tile) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x % 32;
    const int64_t n1 = min(g.N, (k + 1) * g.per);
    if (c < g.C)
      for (int64_t n = k * g.per + threadIdx.x / 32; n < n1; n += kWarps) f(c, n, n * g.C + c);
    return c;
  }
  const int64_t c = blockIdx.x;
  const int64_t j1 = min(g.N * g.S, (k + 1) * g.per);
  for (int64_t j = k * g.per + threadIdx.x; j < j1; j += kThreads) {
    const int64_t n = div_index(j, g.S, g.narrow);
    f(c, n, (n * g.C + c) * g.S + (j - n * g.S));
  }
  return c;
}

// Reduces per-thread values to the block's partial slot c * splits + blockIdx.y.
template <class Op>
__device__ void store_partial(const Geom& g, int64_t c, typename Op::T v, typename Op::T* partial) {
  if (g.tile) {
    v = tile_fold<Op>(v);
    if (threadIdx.x < 32 && c < g.C) partial[c * g.splits + blockIdx.y] = v;
  } else {
    v = block_fold<Op>(v);
    if (threadIdx.x == 0) partial[c * g.splits + blockIdx.y] = v;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) bn_stats_partial(const T* x, Geom g, Moments<float>* partial) {
  const int64_t cs = g.tile ? min(g.C - 1, static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x % 32) : blockIdx.x;
  const float K = norm_shift(to_float(x[g.tile ? cs : cs * g.S]));  // from element (0, c, 0)
  Moments<float> m = WelfordOp::zero();
  // Named lambdas here and below: nvcc 13's front end crashes (i_copy_expr_tree) on them as
  // temporaries in these kernel templates.
  auto push = [&](int64_t, int64_t, int64_t off) { m = moments_push(m, to_float(x[off]) - K); };
  const int64_t c = for_each_value(g, push);
  store_partial<WelfordOp>(g, c, m, partial);
}

template <class T>
__global__ void bn_stats_final(const T* x, Geom g, const Moments<float>* partial, float* mean, float* rstd,
                               float* hi, float* lo, float* running_mean, float* running_var, double factor,
                               double eps) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= g.C) return;
  Moments<float> m = partial[c * g.splits];
  for (int64_t k = 1; k < g.splits; ++k) m = moments_merge(m, partial[c * g.splits + k]);
  const float K = norm_shift(to_float(x[g.tile ? c : c * g.S]));
  const double count = static_cast<double>(g.N * g.S);
  const double mu = static_cast<double>(K) + static_cast<double>(m.mean);
  const double var = static_cast<double>(m.m2) / count;
  mean[c] = static_cast<float>(mu);
  rstd[c] = static_cast<float>(norm_rstd(var, eps));
  hi[c] = K;
  lo[c] = m.mean;
  if (running_mean != nullptr) update_running(running_mean + c, running_var + c, mu, var, count, factor);
}

__global__ void bn_eval_stats(int64_t C, const float* running_mean, const float* running_var, double eps,
                              float* mean, float* rstd, float* lo) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  mean[c] = running_mean[c];
  rstd[c] = static_cast<float>(norm_rstd(running_var[c], eps));
  lo[c] = 0.0f;
}

// Elementwise over (N, C, S): element i has channel (i / S) % C and statistic index
// i / L (row family, L = row length) or its channel (batch norm, L = 0).
struct Index {
  int64_t S, C, L;
  bool narrow;  // numel < 2^32
  __device__ int64_t channel(int64_t i) const {
    const int64_t p = div_index(i, S, narrow);
    return p - div_index(p, C, narrow) * C;
  }
  __device__ int64_t stat(int64_t i, int64_t c) const { return L > 0 ? div_index(i, L, narrow) : c; }
};

Index make_index(const NormShape& s, int64_t L) {
  return Index{s.S, s.C, L, s.N * s.C * s.S <= static_cast<int64_t>(UINT32_MAX)};
}

// float4 access needs 16-byte aligned pointers and quads that stay inside one row (L % 4 == 0)
// and either inside one channel (S % 4 == 0) or on 4 consecutive channels of one sample
// (S == 1, C % 4 == 0): then element e of the quad at i0 has channel c0 + e * cstep.
bool quad_layout(const Index& ix, int64_t* cstep) {
  *cstep = ix.S == 1 ? 1 : 0;
  const bool rows_ok = ix.L == 0 || ix.L % 4 == 0;
  return rows_ok && (ix.S % 4 == 0 || (ix.S == 1 && ix.C % 4 == 0));
}

// Grid-stride over quads: f(i0) handles elements [i0, i0 + 4) (fewer at the end).
template <class F>
__device__ void for_each_quad(int64_t numel, F&& f) {
  const int64_t quads = (numel + 3) / 4;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x)
    f(q * 4);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
norm_apply_kernel(const T* x, T* y, int64_t numel, Index ix, const float* hi, const float* lo,
                  const float* rstd, const float* w, const float* b, bool vec, int64_t cstep) {
  auto one = [&](float v, int64_t c, int64_t r) {
    return norm_apply(v, hi[r], lo[r], w ? w[c] * rstd[r] : rstd[r], b ? b[c] : 0.0f);
  };
  for_each_quad(numel, [&](int64_t i0) {
    if (vec && i0 + 4 <= numel) {
      const int64_t c0 = ix.channel(i0), r0 = ix.stat(i0, c0);
      float o[4];
      detail::load_pack(x + i0, o);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t c = c0 + e * cstep;
        o[e] = one(o[e], c, ix.L > 0 ? r0 : c);
      }
      detail::store_pack(y + i0, o);
      return;
    }
    for (int64_t i = i0; i < i0 + 4 && i < numel; ++i) {
      const int64_t c = ix.channel(i);
      y[i] = from_float<T>(one(to_float(x[i]), c, ix.stat(i, c)));
    }
  });
}

// Fused backward sums per channel: (sum dy, sum dy (x - mean)), mean per channel (batch norm,
// rows == false) or per row n * G + c / Cg times that row's rstd (row family: dw, db directly).
template <class T>
__global__ void __launch_bounds__(kThreads)
grad_sums_partial(const T* dy, const T* x, Geom g, const float* mean, const float* rstd, bool rows,
                  int64_t G, int64_t Cg, float2* partial) {
  float2 acc = SumOp::zero();
  auto add = [&](int64_t ch, int64_t n, int64_t off) {
    const int64_t r = rows ? n * G + ch / Cg : ch;
    const float d = to_float(dy[off]);
    const float t = d * (to_float(x[off]) - mean[r]);
    acc.x += d;
    acc.y += rows ? t * rstd[r] : t;
  };
  const int64_t c = for_each_value(g, add);
  store_partial<SumOp>(g, c, acc, partial);
}

// Per channel: dw, db (added into them with accumulate) and, for batch norm, dx's coefficients k, c2, c3.
__global__ void grad_sums_final(Geom g, const float2* partial, const float* w, const float* rstd, bool rows,
                                bool training, float* dw, float* db, bool accumulate, float* k, float* c2, float* c3) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= g.C) return;
  double sdy = 0.0, sdyxmu = 0.0;
  for (int64_t s = 0; s < g.splits; ++s) {
    sdy += partial[c * g.splits + s].x;
    sdyxmu += partial[c * g.splits + s].y;
  }
  if (rows) {
    if (dw != nullptr) store_grad(dw + c, static_cast<float>(sdyxmu), accumulate);
    if (db != nullptr) store_grad(db + c, static_cast<float>(sdy), accumulate);
    return;
  }
  const double r = rstd[c], wc = w ? w[c] : 1.0, M = static_cast<double>(g.N * g.S);
  k[c] = static_cast<float>(wc * r);
  c2[c] = training ? static_cast<float>(-r * r * r * wc * sdyxmu / M) : 0.0f;
  c3[c] = training ? static_cast<float>(-r * wc * sdy / M) : 0.0f;
  if (dw != nullptr) store_grad(dw + c, static_cast<float>(sdyxmu * r), accumulate);
  if (db != nullptr) store_grad(db + c, static_cast<float>(sdy), accumulate);
}

__global__ void bn_eval_coefs(int64_t C, const float* w, const float* rstd, float* k, float* c2, float* c3) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  k[c] = w ? w[c] * rstd[c] : rstd[c];
  c2[c] = 0.0f;
  c3[c] = 0.0f;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
bn_dx_kernel(const T* dy, const T* x, T* dx, int64_t numel, Index ix, const float* mean, const float* k,
             const float* c2, const float* c3, bool vec, int64_t cstep) {
  auto one = [&](float g, float v, int64_t c) { return norm_backward_dx(g, v - mean[c], k[c], c2[c], c3[c]); };
  for_each_quad(numel, [&](int64_t i0) {
    if (vec && i0 + 4 <= numel) {
      const int64_t c0 = ix.channel(i0);
      float g[4], v[4], o[4];
      detail::load_pack(dy + i0, g);
      detail::load_pack(x + i0, v);
#pragma unroll
      for (int e = 0; e < 4; ++e) o[e] = one(g[e], v[e], c0 + e * cstep);
      detail::store_pack(dx + i0, o);
      return;
    }
    for (int64_t i = i0; i < i0 + 4 && i < numel; ++i)
      dx[i] = from_float<T>(one(to_float(dy[i]), to_float(x[i]), ix.channel(i)));
  });
}

template <class T>
__global__ void __launch_bounds__(kThreads)
row_stats_kernel(const T* x, int64_t L, double eps, float* mean, float* rstd, float* hi, float* lo) {
  const int64_t r = blockIdx.x;
  const T* row = x + r * L;
  const float K = norm_shift(to_float(row[0]));
  Moments<float> m = WelfordOp::zero();
  for (int64_t j = threadIdx.x; j < L; j += kThreads) m = moments_push(m, to_float(row[j]) - K);
  m = block_fold<WelfordOp>(m);
  if (threadIdx.x == 0) {
    const double var = static_cast<double>(m.m2) / static_cast<double>(L);
    mean[r] = static_cast<float>(static_cast<double>(K) + static_cast<double>(m.mean));
    rstd[r] = static_cast<float>(norm_rstd(var, eps));
    hi[r] = K;
    lo[r] = m.mean;
  }
}

// One block per row (n, g): the two sums of dx, then dx itself.
template <class T>
__global__ void __launch_bounds__(kThreads)
row_dx_kernel(const T* dy, const T* x, const float* w, const float* mean, const float* rstd, int64_t L, int64_t S,
              int64_t G, int64_t Cg, T* dx) {
  const int64_t r = blockIdx.x, c0 = (r % G) * Cg;
  const bool narrow = L <= static_cast<int64_t>(UINT32_MAX);
  const float mu = mean[r], rs = rstd[r];
  const T* xr = x + r * L;
  const T* gr = dy + r * L;
  float2 acc = SumOp::zero();
  for (int64_t j = threadIdx.x; j < L; j += kThreads) {
    const float gj = to_float(gr[j]);
    const float g = w ? gj * w[c0 + div_index(j, S, narrow)] : gj;
    acc.x += g;
    acc.y += g * (to_float(xr[j]) - mu);
  }
  acc = block_fold<SumOp>(acc);
  const float c2 = static_cast<float>(-static_cast<double>(rs) * rs * rs * acc.y / static_cast<double>(L));
  const float c3 = static_cast<float>(-static_cast<double>(rs) * acc.x / static_cast<double>(L));
  for (int64_t j = threadIdx.x; j < L; j += kThreads)
    dx[r * L + j] = from_float<T>(norm_backward_dx(to_float(gr[j]), to_float(xr[j]) - mu,
                                                   w ? w[c0 + div_index(j, S, narrow)] * rs : rs, c2, c3));
}

unsigned blocks_for(int64_t count, int64_t per_block) {
  return static_cast<unsigned>(std::min<int64_t>((count + per_block - 1) / per_block, int64_t(1) << 20));
}

template <class T>
void launch_apply(const T* x, T* y, int64_t numel, const Index& ix, const float* hi, const float* lo,
                  const float* rstd, const float* w, const float* b, cudaStream_t st) {
  if (numel == 0) return;
  int64_t cstep;
  const bool vec = quad_layout(ix, &cstep) && detail::pack_aligned<T, 4>(x) && detail::pack_aligned<T, 4>(y);
  norm_apply_kernel<<<blocks_for((numel + 3) / 4, kThreads), kThreads, 0, st>>>(x, y, numel, ix, hi, lo, rstd, w, b,
                                                                                vec, cstep);
  check(cudaGetLastError(), "norm_apply_kernel");
}

void check_rows(int64_t rows) {
  if (rows > INT32_MAX) throw std::runtime_error("fastopt CUDA normalization: more than 2^31 - 1 rows");
}

template <class T>
void bn_forward_train(const NormShape& s, const T* x, const float* w, const float* b, T* y, float* mean, float* rstd,
                      float* running_mean, float* running_var, double factor, double eps, void* stream) {
  if (s.C == 0) return;
  const cudaStream_t st = as_stream(stream);
  const Geom g = make_geom(s);
  Scratch partial(sizeof(Moments<float>) * g.C * g.splits, st), hilo(sizeof(float) * 2 * g.C, st);
  auto* part = reinterpret_cast<Moments<float>*>(partial.bytes());
  float* hi = reinterpret_cast<float*>(hilo.bytes());
  float* lo = hi + g.C;
  bn_stats_partial<<<reduce_grid(g), kThreads, 0, st>>>(x, g, part);
  check(cudaGetLastError(), "bn_stats_partial");
  bn_stats_final<<<blocks_for(g.C, kThreads), kThreads, 0, st>>>(x, g, part, mean, rstd, hi, lo, running_mean,
                                                                    running_var, factor, eps);
  check(cudaGetLastError(), "bn_stats_final");
  const int64_t numel = s.N * s.C * s.S;
  launch_apply(x, y, numel, make_index(s, 0), hi, lo, rstd, w, b, st);
}

template <class T>
void bn_forward_eval(const NormShape& s, const T* x, const float* w, const float* b, T* y, float* mean, float* rstd,
                     const float* running_mean, const float* running_var, double eps, void* stream) {
  if (s.C == 0) return;
  const cudaStream_t st = as_stream(stream);
  Scratch lo_buf(sizeof(float) * s.C, st);
  float* lo = reinterpret_cast<float*>(lo_buf.bytes());
  bn_eval_stats<<<blocks_for(s.C, kThreads), kThreads, 0, st>>>(s.C, running_mean, running_var, eps, mean, rstd, lo);
  check(cudaGetLastError(), "bn_eval_stats");
  launch_apply(x, y, s.N * s.C * s.S, make_index(s, 0), mean, lo, rstd, w, b, st);
}

template <class T>
void bn_backward(const NormShape& s, const T* dy, const T* x, const float* w, const float* mean, const float* rstd,
                 bool training, T* dx, float* dw, float* db, bool accumulate, void* stream) {
  if (s.C == 0) return;
  const cudaStream_t st = as_stream(stream);
  const Geom g = make_geom(s);
  Scratch coefs(sizeof(float) * 3 * g.C, st);
  float* k = reinterpret_cast<float*>(coefs.bytes());
  float* c2 = k + g.C;
  float* c3 = c2 + g.C;
  const int64_t numel = s.N * s.C * s.S;
  if (training || dw != nullptr || db != nullptr) {
    Scratch partial(sizeof(float2) * g.C * g.splits, st);
    auto* part = reinterpret_cast<float2*>(partial.bytes());
    if (numel > 0) {
      grad_sums_partial<<<reduce_grid(g), kThreads, 0, st>>>(dy, x, g, mean, rstd, false, 1, 1, part);
      check(cudaGetLastError(), "grad_sums_partial");
    } else {
      check(cudaMemsetAsync(part, 0, sizeof(float2) * g.C * g.splits, st), "cudaMemsetAsync");
    }
    grad_sums_final<<<blocks_for(g.C, kThreads), kThreads, 0, st>>>(g, part, w, rstd, false, training, dw, db,
                                                                     accumulate, k, c2, c3);
    check(cudaGetLastError(), "grad_sums_final");
  } else {
    bn_eval_coefs<<<blocks_for(g.C, kThreads), kThreads, 0, st>>>(g.C, w, rstd, k, c2, c3);
    check(cudaGetLastError(), "bn_eval_coefs");
  }
  if (numel == 0) return;
  const Index ix = make_index(s, 0);
  int64_t cstep;
  const bool vec = quad_layout(ix, &cstep) && detail::pack_aligned<T, 4>(x) && detail::pack_aligned<T, 4>(dy) &&
                   detail::pack_aligned<T, 4>(dx);
  bn_dx_kernel<<<blocks_for((numel + 3) / 4, kThreads), kThreads, 0, st>>>(dy, x, dx, numel, ix, mean, k, c2, c3, vec,
                                                                           cstep);
  check(cudaGetLastError(), "bn_dx_kernel");
}

template <class T>
void row_forward(const NormShape& s, const T* x, const float* w, const float* b, T* y, float* mean, float* rstd,
                 double eps, void* stream) {
  const int64_t R = s.N * s.G, L = s.C / s.G * s.S;
  if (R == 0) return;
  check_rows(R);
  const cudaStream_t st = as_stream(stream);
  Scratch hilo(sizeof(float) * 2 * R, st);
  float* hi = reinterpret_cast<float*>(hilo.bytes());
  float* lo = hi + R;
  row_stats_kernel<<<static_cast<unsigned>(R), kThreads, 0, st>>>(x, L, eps, mean, rstd, hi, lo);
  check(cudaGetLastError(), "row_stats_kernel");
  launch_apply(x, y, R * L, make_index(s, L), hi, lo, rstd, w, b, st);
}

template <class T>
void row_backward(const NormShape& s, const T* dy, const T* x, const float* w, const float* mean, const float* rstd,
                  T* dx, float* dw, float* db, bool accumulate, void* stream) {
  const int64_t R = s.N * s.G, Cg = s.C / s.G, L = Cg * s.S;
  const cudaStream_t st = as_stream(stream);
  check_rows(R);
  if (R > 0) {
    row_dx_kernel<<<static_cast<unsigned>(R), kThreads, 0, st>>>(dy, x, w, mean, rstd, L, s.S, s.G, Cg, dx);
    check(cudaGetLastError(), "row_dx_kernel");
  }
  if ((dw == nullptr && db == nullptr) || s.C == 0) return;
  const Geom g = make_geom(s);
  Scratch partial(sizeof(float2) * g.C * g.splits, st);
  auto* part = reinterpret_cast<float2*>(partial.bytes());
  if (R > 0) {
    grad_sums_partial<<<reduce_grid(g), kThreads, 0, st>>>(dy, x, g, mean, rstd, true, s.G, Cg, part);
    check(cudaGetLastError(), "grad_sums_partial");
  } else {
    check(cudaMemsetAsync(part, 0, sizeof(float2) * g.C * g.splits, st), "cudaMemsetAsync");
  }
  grad_sums_final<<<blocks_for(g.C, kThreads), kThreads, 0, st>>>(g, part, w, rstd, true, true, dw, db, accumulate,
                                                                   nullptr, nullptr, nullptr);
  check(cudaGetLastError(), "grad_sums_final");
}

}  // namespace

// One definition per storage type T in {float, bf16}.
#define FASTOPT_NORMALIZATION_ENTRIES(T)                                                                         \
  void batch_norm_forward_train(const NormShape& s, const T* x, const float* w, const float* b, T* y,            \
                                float* mean, float* rstd, float* running_mean, float* running_var, double factor, \
                                double eps, void* stream) {                                                      \
    bn_forward_train(s, x, w, b, y, mean, rstd, running_mean, running_var, factor, eps, stream);                 \
  }                                                                                                              \
  void batch_norm_forward_eval(const NormShape& s, const T* x, const float* w, const float* b, T* y, float* mean, \
                               float* rstd, const float* running_mean, const float* running_var, double eps,     \
                               void* stream) {                                                                   \
    bn_forward_eval(s, x, w, b, y, mean, rstd, running_mean, running_var, eps, stream);                          \
  }                                                                                                              \
  void batch_norm_backward(const NormShape& s, const T* dy, const T* x, const float* w, const float* mean,       \
                           const float* rstd, bool training, T* dx, float* dw, float* db, bool accumulate,       \
                           void* stream) {                                                                       \
    bn_backward(s, dy, x, w, mean, rstd, training, dx, dw, db, accumulate, stream);                              \
  }                                                                                                              \
  void row_norm_forward(const NormShape& s, const T* x, const float* w, const float* b, T* y, float* mean,       \
                        float* rstd, double eps, void* stream) {                                                 \
    row_forward(s, x, w, b, y, mean, rstd, eps, stream);                                                         \
  }                                                                                                              \
  void row_norm_backward(const NormShape& s, const T* dy, const T* x, const float* w, const float* mean,         \
                         const float* rstd, T* dx, float* dw, float* db, bool accumulate, void* stream) {        \
    row_backward(s, dy, x, w, mean, rstd, dx, dw, db, accumulate, stream);                                       \
  }
FASTOPT_NORMALIZATION_ENTRIES(float)
FASTOPT_NORMALIZATION_ENTRIES(bf16)
#undef FASTOPT_NORMALIZATION_ENTRIES

}  // namespace fastopt::cuda

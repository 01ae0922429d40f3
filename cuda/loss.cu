/*
Softmax cross-entropy forward + backward on CUDA (math: fastopt/loss.h):
  row = Q log s - sum_k q_k (z_k - m),  dz_k = (Q exp(z_k - m) / s - q_k) / N,  loss = mean(row)

Logits, soft targets and dlogits are of a storage type T (float or bf16: fp32 math, dlogits
rounded once, the loss and its row sums fp32; the CPU's bf16 contract), bf16 halving their bytes.

Bytes per logit: three reads of the row (max; exp-sum and target sums; gradient), the second
and third from L1/L2, soft targets read twice, dlogits written once: about 8 B (hard) or 12 B
(soft) from DRAM per element, plus 8 B per row of scratch (row loss, hit flags).

Launch shape: rows kernel, one warp per row, 8 rows per 256-thread block, grid ceil(N / 8); lane
l takes classes l, l + 32, ... (coalesced) and the warp combines with an xor butterfly, which
gives every lane bitwise the same sums (the adds are commutative at each level), so the
gradient pass needs no broadcast. The warp writes its row's loss and hit flags to scratch. Then
one 1024-thread block folds them in a fixed order (strided per thread, a fixed shuffle tree),
writes the mean and adds to stats: no atomics, bitwise reproducible, and the host never waits.
*/
#include <cmath>
#include <type_traits>

#include "fastopt/loss.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using detail::check;
using detail::kFinalThreads;
using detail::kThreads;

constexpr int kRows = kThreads / 32;  // rows per block

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// The first argmax of the soft row (the smaller class wins ties); 0 if no value compares.
__device__ __forceinline__ int64_t warp_argmax(float v, int64_t i, int64_t K) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (oi < K && (i == K || ov > v || (ov == v && oi < i))) {
      v = ov;
      i = oi;
    }
  }
  return i < K ? i : 0;
}

template <TargetKind kKind, class T>
__global__ void __launch_bounds__(kThreads)
xent_rows(const T* __restrict__ logits, const void* __restrict__ target, const LossParams p, float inv_n,
          bool want_hits, T* __restrict__ dlogits, float* __restrict__ row_loss, uint32_t* __restrict__ row_hits) {
  constexpr bool kSoft = kKind == TargetKind::soft;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x / 32;
  if (n >= p.N) return;  // the whole warp: no shuffle below misses a lane
  const int lane = threadIdx.x % 32;
  const int64_t K = p.K;
  const T* z = logits + n * K;
  const T* y = kSoft ? static_cast<const T*>(target) + n * K : nullptr;
  T* dz = dlogits != nullptr ? dlogits + n * K : nullptr;

  float m = -INFINITY, ybest = -INFINITY;
  int64_t t = K;
  for (int64_t k = lane; k < K; k += 32) {
    m = fmaxf(m, to_float(z[k]));
    if (kSoft && want_hits && to_float(y[k]) > ybest) {
      ybest = to_float(y[k]);
      t = k;
    }
  }
  m = warp_max(m);
  if constexpr (kSoft) {
    t = want_hits ? warp_argmax(ybest, t, K) : 0;
  } else {
    t = kKind == TargetKind::i32 ? static_cast<const int32_t*>(target)[n] : static_cast<const int64_t*>(target)[n];
    if (!class_in_range(t, K)) {
      if (dz != nullptr)
        for (int64_t k = lane; k < K; k += 32) dz[k] = from_float<T>(NAN);
      if (lane == 0) {
        row_loss[n] = NAN;
        row_hits[n] = 0;
      }
      return;
    }
  }

  const float zt = to_float(z[t]);
  float s = 0.0f, sum_q = 0.0f, sum_qz = 0.0f;
  long long greater = 0;
  for (int64_t k = lane; k < K; k += 32) {
    const float zk = to_float(z[k]);
    const float d = zk - m;
    s += expf(d);
    const float q = kSoft ? __fadd_rn(__fmul_rn(p.on, to_float(y[k])), p.off) : p.off;
    sum_q += q;
    sum_qz += loss_qz(q, d);
    greater += zk > zt ? 1 : 0;
  }
  s = warp_sum(s);
  sum_qz = warp_sum(sum_qz);
  sum_q = kSoft ? warp_sum(sum_q) : 1.0f;  // one-hot rows sum to 1 by definition
  if (!kSoft) sum_qz += loss_qz(p.on, zt - m);
  if (want_hits)
#pragma unroll
    for (int off = 16; off > 0; off /= 2) greater += __shfl_xor_sync(0xffffffffu, greater, off);
  if (lane == 0) {
    row_loss[n] = loss_row(logf(s), sum_q, sum_qz);
    row_hits[n] = want_hits ? loss_hits(greater, p.topk) : 0u;
  }
  if (dz == nullptr) return;
  const float inv_s = 1.0f / s;
  for (int64_t k = lane; k < K; k += 32) {
    const float q = kSoft ? __fadd_rn(__fmul_rn(p.on, to_float(y[k])), p.off) : p.off + (k == t ? p.on : 0.0f);
    dz[k] = from_float<T>(loss_grad(expf(to_float(z[k]) - m), inv_s, sum_q, q, inv_n));
  }
}

// One block: the mean of the row losses into loss[0] (NaN for N = 0) and stats += the sums.
__global__ void __launch_bounds__(kFinalThreads)
xent_fold(const float* __restrict__ row_loss, const uint32_t* __restrict__ row_hits, int64_t N, float* loss,
          float* stats) {
  __shared__ float warp_loss[kFinalThreads / 32];
  __shared__ long long warp_top1[kFinalThreads / 32], warp_topk[kFinalThreads / 32];
  float acc = 0.0f;
  long long top1 = 0, topk = 0;
  for (int64_t i = threadIdx.x; i < N; i += kFinalThreads) {
    acc += row_loss[i];
    top1 += row_hits[i] & 1u;
    topk += row_hits[i] >> 1;
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    acc += __shfl_down_sync(0xffffffffu, acc, off);
    top1 += __shfl_down_sync(0xffffffffu, top1, off);
    topk += __shfl_down_sync(0xffffffffu, topk, off);
  }
  if (threadIdx.x % 32 == 0) {
    warp_loss[threadIdx.x / 32] = acc;
    warp_top1[threadIdx.x / 32] = top1;
    warp_topk[threadIdx.x / 32] = topk;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kFinalThreads / 32; ++w) {
    acc += warp_loss[w];
    top1 += warp_top1[w];
    topk += warp_topk[w];
  }
  loss[0] = N > 0 ? acc / static_cast<float>(N) : NAN;
  if (stats != nullptr) {
    stats[0] += acc;
    stats[1] += static_cast<float>(top1);
    stats[2] += static_cast<float>(topk);
  }
}

template <TargetKind kKind, class T>
void launch_rows(const T* logits, const void* target, const LossParams& p, bool want_hits, T* dlogits,
                 float* row_loss, uint32_t* row_hits, cudaStream_t st) {
  const int64_t grid = (p.N + kRows - 1) / kRows;
  if (grid > INT_MAX) throw std::runtime_error("fastopt softmax_cross_entropy: too many rows for one launch");
  const float inv_n = 1.0f / static_cast<float>(p.N);
  xent_rows<kKind, T><<<static_cast<int>(grid), kThreads, 0, st>>>(logits, target, p, inv_n, want_hits, dlogits,
                                                                row_loss, row_hits);
  check(cudaGetLastError(), "xent_rows launch");
}

template <class T>
void xent(const T* logits, const void* target, TargetKind kind, const LossParams& p, float* loss, T* dlogits,
          float* stats, void* stream) {
  const cudaStream_t st = detail::as_stream(stream);
  detail::Scratch scratch(static_cast<size_t>(p.N) * 8, st);  // [row loss float x N][hits uint32 x N]
  float* row_loss = reinterpret_cast<float*>(scratch.bytes());
  uint32_t* row_hits = reinterpret_cast<uint32_t*>(scratch.bytes() + static_cast<size_t>(p.N) * 4);
  const bool want_hits = stats != nullptr;
  if (p.N > 0) {
    auto rows = [&](auto kind_tag) {
      launch_rows<decltype(kind_tag)::value, T>(logits, target, p, want_hits, dlogits, row_loss, row_hits, st);
    };
    if (kind == TargetKind::i32) rows(std::integral_constant<TargetKind, TargetKind::i32>{});
    if (kind == TargetKind::i64) rows(std::integral_constant<TargetKind, TargetKind::i64>{});
    if (kind == TargetKind::soft) rows(std::integral_constant<TargetKind, TargetKind::soft>{});
  }
  xent_fold<<<1, kFinalThreads, 0, st>>>(row_loss, row_hits, p.N, loss, stats);
  check(cudaGetLastError(), "xent_fold launch");
}

}  // namespace

void softmax_cross_entropy(const float* logits, const void* target, TargetKind kind, const LossParams& p,
                           float* loss, float* dlogits, float* stats, void* stream) {
  xent(logits, target, kind, p, loss, dlogits, stats, stream);
}

void softmax_cross_entropy(const bf16* logits, const void* target, TargetKind kind, const LossParams& p,
                           float* loss, bf16* dlogits, float* stats, void* stream) {
  xent(logits, target, kind, p, loss, dlogits, stats, stream);
}

}  // namespace fastopt::cuda

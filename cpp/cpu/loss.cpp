// Softmax cross-entropy forward + backward on the CPU (math: fastopt/loss.h).
//
// Traffic per logit (fp32; bf16 logits and dlogits halve it): three reads of the row (max; exp-sum and target sums; gradient), the last
// two from L1/L2 for rows up to ~100k classes, soft targets read twice, dlogits written once:
// about 8 B (hard) or 12 B (soft) from memory per element.
//
// Shape: OpenMP over rows, one row per iteration, each row summed sequentially in double (exp in
// float, as on the GPU) into its own slot; the row losses and hit flags are then folded in row
// order on one thread. No sum depends on the thread count or the ISA copy, so the loss is bitwise
// reproducible.
#include <cmath>
#include <limits>
#include <vector>

#include "fastopt/loss.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void softmax_cross_entropy(const float* logits, const void* target, TargetKind kind,
                                                const LossParams& p, float* loss, float* dlogits, float* stats);
                     void softmax_cross_entropy(const bf16* logits, const void* target, TargetKind kind,
                                                const LossParams& p, float* loss, bf16* dlogits, float* stats);)

namespace FASTOPT_ISA {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The row's target class: the index, or the first argmax of the soft row (only needed for stats).
// T: the soft targets' storage type (the logits').
template <class T>
int64_t target_class(const void* target, TargetKind kind, int64_t n, int64_t K) {
  if (kind == TargetKind::i32) return static_cast<const int32_t*>(target)[n];
  if (kind == TargetKind::i64) return static_cast<const int64_t*>(target)[n];
  const T* y = static_cast<const T*>(target) + n * K;
  int64_t t = 0;
  for (int64_t k = 1; k < K; ++k)
    if (to_float(y[k]) > to_float(y[t])) t = k;
  return t;
}

// Row n's loss, its hits into *hits, and its gradient row when dz is non-null; logits, soft
// targets and dz stored as T, everything else fp32/double.
template <class T>
double row_loss(const T* __restrict z, const T* __restrict y, int64_t t, const LossParams& p, bool want_hits,
                float inv_n, T* __restrict dz, uint8_t* hits) {
  const int64_t K = p.K;
  if (!class_in_range(t, K)) {
    if (dz != nullptr)
      for (int64_t k = 0; k < K; ++k) dz[k] = from_float<T>(kNaN);
    *hits = 0;
    return kNaN;
  }
  float m = to_float(z[0]);
  for (int64_t k = 1; k < K; ++k) m = to_float(z[k]) > m ? to_float(z[k]) : m;
  const float zt = to_float(z[t]);
  double s = 0.0, sum_q = 0.0, sum_qz = 0.0;
  int64_t greater = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float zk = to_float(z[k]);
    const float d = zk - m;
    s += std::exp(d);
    const float q = y != nullptr ? p.on * to_float(y[k]) + p.off : p.off;
    sum_q += q;
    sum_qz += loss_qz<double>(q, d);
    greater += zk > zt ? 1 : 0;
  }
  if (y == nullptr) {  // the one-hot term; q sums to 1 by definition
    sum_q = 1.0;
    sum_qz += loss_qz<double>(p.on, zt - m);
  }
  *hits = want_hits ? static_cast<uint8_t>(loss_hits(greater, p.topk)) : 0;
  if (dz != nullptr) {
    const float inv_s = static_cast<float>(1.0 / s), Q = static_cast<float>(sum_q);
    for (int64_t k = 0; k < K; ++k) {
      const float q = y != nullptr ? p.on * to_float(y[k]) + p.off : p.off + (k == t ? p.on : 0.0f);
      dz[k] = from_float<T>(loss_grad(std::exp(to_float(z[k]) - m), inv_s, Q, q, inv_n));
    }
  }
  return loss_row(std::log(s), sum_q, sum_qz);
}

template <class T>
void cross_entropy(const T* logits, const void* target, TargetKind kind, const LossParams& p, float* loss, T* dlogits,
                   float* stats) {
  const int64_t N = p.N, K = p.K;
  const bool soft = kind == TargetKind::soft;
  const bool want_hits = stats != nullptr;
  const float inv_n = N > 0 ? 1.0f / static_cast<float>(N) : 0.0f;
  std::vector<double> rows(static_cast<size_t>(N));
  std::vector<uint8_t> hits(static_cast<size_t>(N));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = soft && !want_hits ? 0 : target_class<T>(target, kind, n, K);
    const T* y = soft ? static_cast<const T*>(target) + n * K : nullptr;
    rows[n] = row_loss(logits + n * K, y, t, p, want_hits, inv_n, dlogits != nullptr ? dlogits + n * K : nullptr,
                       &hits[n]);
  }
  double total = 0.0;
  int64_t top1 = 0, topk = 0;
  for (int64_t n = 0; n < N; ++n) {
    total += rows[n];
    top1 += hits[n] & 1u;
    topk += hits[n] >> 1;
  }
  loss[0] = N > 0 ? static_cast<float>(total / static_cast<double>(N)) : kNaN;
  if (stats != nullptr) {
    stats[0] = static_cast<float>(stats[0] + total);
    stats[1] = static_cast<float>(stats[1] + static_cast<double>(top1));
    stats[2] = static_cast<float>(stats[2] + static_cast<double>(topk));
  }
}

}  // namespace

void softmax_cross_entropy(const float* logits, const void* target, TargetKind kind, const LossParams& p, float* loss,
                           float* dlogits, float* stats) {
  cross_entropy(logits, target, kind, p, loss, dlogits, stats);
}
void softmax_cross_entropy(const bf16* logits, const void* target, TargetKind kind, const LossParams& p, float* loss,
                           bf16* dlogits, float* stats) {
  cross_entropy(logits, target, kind, p, loss, dlogits, stats);
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void softmax_cross_entropy(const float* logits, const void* target, TargetKind kind, const LossParams& p, float* loss,
                           float* dlogits, float* stats) {
  FASTOPT_CPU_DISPATCH(softmax_cross_entropy(logits, target, kind, p, loss, dlogits, stats))
}
void softmax_cross_entropy(const bf16* logits, const void* target, TargetKind kind, const LossParams& p, float* loss,
                           bf16* dlogits, float* stats) {
  FASTOPT_CPU_DISPATCH(softmax_cross_entropy(logits, target, kind, p, loss, dlogits, stats))
}
#endif

}  // namespace fastopt::cpu

// Softmax cross-entropy with label smoothing (torch.nn.functional.cross_entropy, reduction
// 'mean'), forward and backward fused, float32 logits z (N, K):
//   q_k  = on * y_k + off,   on = 1 - eps, off = eps / K      (y: one-hot of the class index, or
//                                                               the caller's soft-target row)
//   m    = max_k z_k,   s = sum_k exp(z_k - m)
//   row  = sum_k q_k (log s - (z_k - m))  =  Q log s - sum_k q_k (z_k - m),   Q = sum_k q_k
//   loss = (1 / N) sum_n row_n
//   dz_k = (Q softmax(z)_k - q_k) / N
// Non-finite logits, as torch: a -Inf logit has probability 0 (gradient 0 - q_k / N); its term
// counts 0 where q_k = 0 (loss_qz), so the loss stays finite, and +Inf where q_k > 0 (the
// target, or any class under label smoothing). A NaN or +Inf logit makes its row NaN.
// The shift by m keeps every exp() <= 1 and every log-prob exact for logits of +-1e4. Q is 1 for
// class indices; for soft targets it is summed, so dz is the exact gradient of `row` even when a
// row of y does not sum to 1 (torch's autograd agrees), and is softmax - q when it does.
//
// Metrics (the optional stats vector): the target class t (the index, or the first argmax of
// the soft row) is within the top k iff fewer than k classes have a strictly larger logit, so
// ties count in the target's favour; top-1 is the case k = 1.
//
// A class index outside [0, K) makes its row NaN (row loss, and dz when wanted) instead of
// reading out of bounds: the GPU cannot raise without a sync, and a NaN loss stops a trainer's
// NaN check. The CPU binding raises before it gets here.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastopt/bf16.h"
#include "fastopt/common.h"

namespace fastopt {

enum class TargetKind : uint8_t { i32, i64, soft };

struct LossParams {
  int64_t N, K;
  float on, off;  // q = on * y + off
  int64_t topk;   // min(topk, K), >= 1
};

// A hit: bit 0 top-1, bit 1 top-k, from the number of classes with a larger logit.
FASTOPT_HD uint32_t loss_hits(int64_t greater, int64_t topk) {
  return (greater < 1 ? 1u : 0u) | (greater < topk ? 2u : 0u);
}

// One term q_k (z_k - m) of sum_qz; 0 when q_k = 0, the limit of q log p, so that a class with
// no target mass adds nothing even at z_k = -Inf (0 * -Inf would make the loss NaN where the
// true loss, and torch's for class indices, is finite). With q_k > 0 a -Inf logit gives +Inf.
template <class T>
FASTOPT_HD T loss_qz(T q, T d) {
  return q == T(0) ? T(0) : q * d;
}

template <class T>
FASTOPT_HD T loss_row(T log_s, T sum_q, T sum_qz) {
  return sum_q * log_s - sum_qz;
}

// dz_k from e = exp(z_k - m), the row's 1 / s, and q_k.
FASTOPT_HD float loss_grad(float e, float inv_s, float sum_q, float q, float inv_n) {
  return (sum_q * (e * inv_s) - q) * inv_n;
}

template <class Index>
FASTOPT_HD bool class_in_range(Index t, int64_t K) {
  return t >= 0 && static_cast<int64_t>(t) < K;
}

namespace cpu {
// target: int32/int64 (N,) class indices in [0, K), or float32 (N, K) soft targets (kind).
// loss: 1 float (the mean; NaN for N = 0). dlogits: (N, K) or null. stats: 3 floats or null,
// accumulated: += [sum of row losses, top-1 hits, top-k hits].
void softmax_cross_entropy(const float* logits, const void* target, TargetKind kind, const LossParams& p,
                           float* loss, float* dlogits, float* stats);
// bf16 logits (and soft targets, when kind is soft) and dlogits: the same fp32/double math on the
// upcast values, dlogits rounded once; loss and stats stay fp32.
void softmax_cross_entropy(const bf16* logits, const void* target, TargetKind kind, const LossParams& p,
                           float* loss, bf16* dlogits, float* stats);
}  // namespace cpu

namespace cuda {
// Same contract on device pointers, queued on `stream`; never waits for the host.
void softmax_cross_entropy(const float* logits, const void* target, TargetKind kind, const LossParams& p,
                           float* loss, float* dlogits, float* stats, void* stream);
// bf16 logits, soft targets and dlogits (the CPU's bf16 contract); the loss and stats stay fp32.
void softmax_cross_entropy(const bf16* logits, const void* target, TargetKind kind, const LossParams& p,
                           float* loss, bf16* dlogits, float* stats, void* stream);
}  // namespace cuda

}  // namespace fastopt

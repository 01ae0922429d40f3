// The per-element optimizer update rules, written once and called by both the CPU loops
// (cpp/cpu/optim.cpp) and the CUDA kernels (cuda/optim.cu), so the backends cannot drift.
//
// Formulas follow torch.optim's documented single-tensor implementations operation by operation
// (same order of float32 operations where it matters: lerp for the first moment, sqrt(v)/bc2 + eps
// for Adam's denominator), so a trajectory matches torch to float32 rounding.
//
//   g  <- clip * g, negated when maximize; g <- g + wd * p (L2 weight decay, not AdamW);
//   g  <- g + l1 * sign(p) (L1 regularization's subgradient, 0 at p = 0; a group option)
//   SGD:       p -= lr * g
//   momentum:  b = g on the first step, else b = mu * b + (1 - dampening) * g;
//              p -= lr * b            (nesterov: p -= lr * (g + mu * b))
//   Adagrad:   s += g^2;  p -= clr * g / (sqrt(s) + eps),  clr = lr / (1 + (t - 1) lr_decay)
//   RMSprop:   v = alpha v + (1 - alpha) g^2;  centered: a = lerp(a, g, 1 - alpha), v~ = v - a^2
//              d = sqrt(v~) + eps;  momentum: b = mu b + g / d, p -= lr b;  else p -= lr g / d
//   Adam:      p *= 1 - lr wd (AdamW only);  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2
//              (AMSGrad: vmax = max(vmax, v), used in place of v)
//              p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// Low-precision parameters (bf16/f16, fastopt/bf16.h) run the same rule on an fp32 value w and
// store it (update_stored): with fp32 master weights w is the master (read and written in fp32;
// the bf16/f16 param only written, rounded to nearest even, in the same pass), so the master's
// trajectory is the fp32 optimizer's fed the upcast gradients, bit for bit. Without them w is
// the upcast param, written back rounded to nearest even, or stochastically (bf16): the update's
// rounding is unbiased there, so updates below half an ulp are not all lost. State is fp32, or bf16
// on the CPU (store_state).
#pragma once
#include <cmath>
#include <cstdint>

#include "fastopt/bf16.h"
#include "fastopt/common.h"

namespace fastopt {

// One kind per distinct state layout / inner loop. AdamW is ADAM with a decoupled decay.
enum class OptKind : int {
  SGD = 0,
  SGD_MOMENTUM = 1,
  SGD_NESTEROV = 2,
  ADAGRAD = 3,
  RMSPROP = 4,
  RMSPROP_MOMENTUM = 5,
  RMSPROP_CENTERED = 6,
  RMSPROP_CENTERED_MOMENTUM = 7,
  ADAM = 8,
  ADAM_AMSGRAD = 9,
};
constexpr int kNumOptKinds = 10;

// State buffers per parameter, in order:
//   SGD_MOMENTUM/NESTEROV: momentum_buffer      ADAGRAD: sum
//   RMSPROP: square_avg [, momentum_buffer] [, grad_avg]     ADAM: exp_avg, exp_avg_sq [, max_exp_avg_sq]
FASTOPT_HD constexpr int num_states(OptKind k) {
  return k == OptKind::SGD                         ? 0
         : k == OptKind::SGD_MOMENTUM              ? 1
         : k == OptKind::SGD_NESTEROV              ? 1
         : k == OptKind::ADAGRAD                   ? 1
         : k == OptKind::RMSPROP                   ? 1
         : k == OptKind::RMSPROP_MOMENTUM          ? 2
         : k == OptKind::RMSPROP_CENTERED          ? 2
         : k == OptKind::RMSPROP_CENTERED_MOMENTUM ? 3
         : k == OptKind::ADAM                      ? 2
                                                   : 3;
}

// A parameter group's hyper-parameters for one step, as the user gave them (double, like
// torch's Python scalars).
struct Hyper {
  OptKind kind = OptKind::SGD;  // groups of one optimizer may differ (momentum 0 in one, 0.9 in another)
  double lr = 1e-3;
  double weight_decay = 0.0;
  double momentum = 0.0;
  double dampening = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double alpha = 0.99;
  double lr_decay = 0.0;
  double l1 = 0.0;                      // L1 regularization strength (every rule)
  bool decoupled_weight_decay = false;  // AdamW
  bool maximize = false;
  bool stochastic_rounding = false;     // bf16 params without a master: Rounding::stochastic
  uint64_t seed = 0;                    // its Philox key (see Rounding)
};

// The float32 scalars one tensor's update needs at step t (t counts from 1). Derived in double
// and rounded once, as torch does when it passes Python floats into float32 kernels.
struct StepScalars {
  float sign;         // -1 when maximizing
  float l2;           // added as g += l2 * p
  float l1;           // added as g += l1 * sign(p)
  float decay;        // p *= decay before the update (AdamW)
  float lr;           // SGD/RMSprop lr, Adagrad's decayed lr, Adam's lr / (1 - beta1^t)
  float eps;
  float momentum;     // SGD and RMSprop momentum
  float one_minus_dampening;
  float one_minus_beta1;
  float beta2;        // Adam beta2, RMSprop alpha
  float one_minus_beta2;
  float bc2_sqrt;     // sqrt(1 - beta2^t)
  int first;          // t == 1: SGD's momentum buffer starts as g
};

FASTOPT_HD StepScalars prepare_step(const Hyper& h, OptKind k, int64_t t) {
  StepScalars s;
  const bool adam = k == OptKind::ADAM || k == OptKind::ADAM_AMSGRAD;
  const bool rms = k >= OptKind::RMSPROP && k <= OptKind::RMSPROP_CENTERED_MOMENTUM;
  const double td = static_cast<double>(t);
  s.sign = h.maximize ? -1.0f : 1.0f;
  s.l2 = h.decoupled_weight_decay ? 0.0f : static_cast<float>(h.weight_decay);
  s.l1 = static_cast<float>(h.l1);
  s.decay = h.decoupled_weight_decay ? static_cast<float>(1.0 - h.lr * h.weight_decay) : 1.0f;
  s.eps = static_cast<float>(h.eps);
  s.momentum = static_cast<float>(h.momentum);
  s.one_minus_dampening = static_cast<float>(1.0 - h.dampening);
  s.one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
  s.beta2 = static_cast<float>(rms ? h.alpha : h.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - (rms ? h.alpha : h.beta2));
  s.bc2_sqrt = 1.0f;
  s.first = t == 1;
  if (adam) {
    s.lr = static_cast<float>(h.lr / (1.0 - pow(h.beta1, td)));
    s.bc2_sqrt = static_cast<float>(sqrt(1.0 - pow(h.beta2, td)));
  } else if (k == OptKind::ADAGRAD) {
    s.lr = static_cast<float>(h.lr / (1.0 + (td - 1.0) * h.lr_decay));
  } else {
    s.lr = static_cast<float>(h.lr);
  }
  return s;
}

// torch.lerp's two-sided form (exact at both ends).
FASTOPT_HD_INLINE float lerp(float a, float b, float w) {
  return fabsf(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

// One element's update. g arrives already multiplied by the clip coefficient and the sign.
// s0..s2 are the element's state values in num_states(K) order (unused ones are ignored).
// kPenalty = false promises l2 = l1 = 0, so a vector loop carries no per-element test for them
// (the tests cannot be dropped in general: 0 * p is NaN for an infinite p).
template <OptKind K, bool kPenalty = true>
FASTOPT_HD_INLINE void update(const StepScalars& s, float g, float& p, float& s0, float& s1, float& s2) {
  if constexpr (kPenalty) {
    if (s.l2 != 0.0f) g = g + s.l2 * p;
    if (s.l1 != 0.0f) g = g + s.l1 * (p > 0.0f ? 1.0f : p < 0.0f ? -1.0f : 0.0f);
  }
  if constexpr (K == OptKind::SGD) {
    p = p - s.lr * g;
  } else if constexpr (K == OptKind::SGD_MOMENTUM || K == OptKind::SGD_NESTEROV) {
    s0 = s.first ? g : s.momentum * s0 + s.one_minus_dampening * g;
    const float d = K == OptKind::SGD_NESTEROV ? g + s.momentum * s0 : s0;
    p = p - s.lr * d;
  } else if constexpr (K == OptKind::ADAGRAD) {
    s0 = s0 + g * g;
    p = p - s.lr * g / (sqrtf(s0) + s.eps);
  } else if constexpr (K == OptKind::ADAM || K == OptKind::ADAM_AMSGRAD) {
    p = p * s.decay;
    s0 = lerp(s0, g, s.one_minus_beta1);
    s1 = s.beta2 * s1 + s.one_minus_beta2 * g * g;
    float v = s1;
    if constexpr (K == OptKind::ADAM_AMSGRAD) {
      s2 = fmaxf(s2, s1);
      v = s2;
    }
    p = p - s.lr * s0 / (sqrtf(v) / s.bc2_sqrt + s.eps);
  } else {  // RMSprop family: s0 square_avg, then momentum_buffer, then grad_avg
    constexpr bool kMomentum = K == OptKind::RMSPROP_MOMENTUM || K == OptKind::RMSPROP_CENTERED_MOMENTUM;
    constexpr bool kCentered = K == OptKind::RMSPROP_CENTERED || K == OptKind::RMSPROP_CENTERED_MOMENTUM;
    s0 = s.beta2 * s0 + s.one_minus_beta2 * g * g;
    float v = s0;
    if constexpr (kCentered) {
      float& a = kMomentum ? s2 : s1;
      a = lerp(a, g, s.one_minus_beta2);
      v = s0 - a * a;
    }
    const float d = sqrtf(v) + s.eps;
    if constexpr (kMomentum) {
      s1 = s.momentum * s1 + g / d;
      p = p - s.lr * s1;
    } else {
      p = p - s.lr * g / d;
    }
  }
}

// How a step stores a parameter's new value.
enum class Rounding : uint8_t {
  nearest = 0,     // to the param's own type, nearest even (exact for fp32)
  master = 1,      // fp32 master copy updated; the bf16/f16 param written from it, nearest even
  stochastic = 2,  // bf16 only: stochastic rounding with the element's random word
};
// The random word of element i of the tensor at flat index `tensor` at step t (t counts from 1)
// is word i mod 4 of Philox4x32-10 with counter (low and high 32 bits of i / 4, tensor, low 32
// bits of t) under the group's 64-bit seed (philox.h's philox_blocks with c2 = tensor, c3 = t).
// Dropout's stream has counter words 2 and 3 zero and t >= 1 here, so the two never share a
// word; a step's words depend on (seed, tensor, t, i) only, never on threads or chunking.

// One element's step on a parameter stored as T (float, bf16, f16): the rule on the fp32 value
// w, then the store R says. `random` is the element's random word (stochastic only).
template <OptKind K, Rounding R, bool kPenalty, class T>
FASTOPT_HD_INLINE void update_stored(const StepScalars& s, float g, T& p, float& master, float& s0, float& s1, float& s2,
                              uint32_t random) {
  float w = R == Rounding::master ? master : to_float(p);
  update<K, kPenalty>(s, g, w, s0, s1, s2);
  if constexpr (R == Rounding::master) master = w;
  if constexpr (R == Rounding::stochastic) {
    static_assert(StorageOf<T>::value == Storage::bf16, "stochastic rounding stores bf16");
    p = bf16_stochastic(w, random);
  } else {
    p = from_float<T>(w);
  }
}

// A state value as stored: fp32 as it is; bf16 (state_dtype="bfloat16") rounded stochastically
// with 16 random bits, so that small increments (an Adam second moment moves by (1 - beta2) =
// 0.1% of itself a step, under half a bf16 ulp) survive on average instead of rounding away
// every time, as they would with round-to-nearest.
template <class S>
FASTOPT_HD_INLINE S store_state(float v, uint32_t random) {
  if constexpr (StorageOf<S>::value == Storage::bf16) return bf16_stochastic(v, random);
  else return v;
}

// The random bits of state rounding come from a 32-bit integer hash (lowbias32, C. Wellons: full
// avalanche in 5 operations) rather than Philox: 16 uniform bits per rounding is all that
// unbiasedness asks, and two Philox streams per element made AdamW's step 3x slower. An element's
// word is hash32(key + i * 0x9E3779B9) with key = state_key(seed, tensor, step, i / 2^32); its
// low 16 bits round state 0, its high 16 bits state 1, and hash32(word ^ 0xA511E9B3) state 2.
FASTOPT_HD_INLINE uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

FASTOPT_HD uint32_t state_key(uint64_t seed, uint32_t tensor, uint32_t step, uint32_t high) {
  uint32_t k = hash32(static_cast<uint32_t>(seed) ^ 0x5BD1E995u);
  k = hash32(k ^ static_cast<uint32_t>(seed >> 32));
  k = hash32(k ^ tensor);
  k = hash32(k ^ step);
  return hash32(k ^ high);
}

FASTOPT_HD_INLINE uint32_t state_word(uint32_t key, uint32_t index) { return hash32(key + index * 0x9E3779B9u); }

// Rounding bits of state j (0, 1, 2) from the element's word.
FASTOPT_HD_INLINE uint32_t state_bits(uint32_t word, int j) {
  return j == 0 ? word : j == 1 ? word >> 16 : hash32(word ^ 0xA511E9B3u);
}

// Runs f(std::integral_constant<OptKind, k>) for the run-time kind k: the one switch both
// backends use to instantiate their loops.
template <OptKind K>
struct KindTag {
  static constexpr OptKind value = K;
};

template <class F>
void dispatch_kind(OptKind k, F&& f) {
  switch (k) {
    case OptKind::SGD: f(KindTag<OptKind::SGD>{}); break;
    case OptKind::SGD_MOMENTUM: f(KindTag<OptKind::SGD_MOMENTUM>{}); break;
    case OptKind::SGD_NESTEROV: f(KindTag<OptKind::SGD_NESTEROV>{}); break;
    case OptKind::ADAGRAD: f(KindTag<OptKind::ADAGRAD>{}); break;
    case OptKind::RMSPROP: f(KindTag<OptKind::RMSPROP>{}); break;
    case OptKind::RMSPROP_MOMENTUM: f(KindTag<OptKind::RMSPROP_MOMENTUM>{}); break;
    case OptKind::RMSPROP_CENTERED: f(KindTag<OptKind::RMSPROP_CENTERED>{}); break;
    case OptKind::RMSPROP_CENTERED_MOMENTUM: f(KindTag<OptKind::RMSPROP_CENTERED_MOMENTUM>{}); break;
    case OptKind::ADAM: f(KindTag<OptKind::ADAM>{}); break;
    case OptKind::ADAM_AMSGRAD: f(KindTag<OptKind::ADAM_AMSGRAD>{}); break;
  }
}

}  // namespace fastopt

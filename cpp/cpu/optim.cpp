// The fused optimizer step on the CPU: one parallel loop over fixed chunks of all tensors.
//
// Per element, the rule from fastopt/optim_rules.h, with the gradient scaled by the clip
// coefficient (and the sign, for maximize) in registers. Traffic per parameter (fp32): SGD 12 B,
// momentum/Nesterov/Adagrad/RMSprop 20 B, RMSprop with momentum or centered 28 B, centered with
// momentum 36 B, Adam/AdamW 28 B, AMSGrad 36 B; clipping adds one 4 B read of the gradients (the
// norm pass), so clipped AdamW moves 32 B instead of the 40 B of clip-then-step.
// bf16/f16 params (update_stored): the param and grad move 2 B each instead of 4, so AdamW with
// fp32 master weights moves 2 (grad) + 8 (master) + 16 (state) + 2 (param written) = 28 B, and
// without a master 20 B; stochastic rounding adds a quarter Philox evaluation per element,
// generated 64 words at a time in vector lanes (philox_blocks). bf16 state (state_dtype) halves
// the state's bytes (AdamW on fp32 params: 28 -> 20 B) for one integer hash per element (state_word).
#include <cmath>
#include <type_traits>
#include <vector>

#include "clip.h"
#include "fastopt/backend.h"
#include "fastopt/philox.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(StepOutcome optim_step(const StepRequest& req);)

namespace FASTOPT_ISA {
namespace {

constexpr int kSrBlocks = 16;              // Philox blocks per batch of stochastic rounding
constexpr int64_t kSrWords = 4 * kSrBlocks;
static_assert(kChunk % kSrWords == 0, "batches never straddle chunks");

// Elements [b, b + n) of one tensor; `at` is the element index b within the tensor, which picks
// stochastic rounding's words. S: the state's storage (float, or bf16 rounded stochastically
// with bits of its own, state_word).
template <OptKind K, Rounding R, class T, class S>
void update_range(const StepScalars& s, float gmul, T* __restrict p, const T* __restrict g, float* __restrict m,
                  S* __restrict s0, S* __restrict s1, S* __restrict s2, int64_t n, uint64_t seed, uint32_t tensor,
                  int64_t t, int64_t at) {
  constexpr int ns = num_states(K);
  constexpr bool sr_state = std::is_same_v<S, bf16> && ns > 0;
  // A local copy of the scalars: through the reference, GCC reloads every field each iteration
  // (it cannot prove the stores to p and the state miss it), and the loop ran about 2x slower.
  const StepScalars sc = s;
  // Chunks never straddle a multiple of 2^32 elements (kChunk divides it): one key per range.
  const uint32_t key = sr_state ? state_key(seed, tensor, static_cast<uint32_t>(t), static_cast<uint32_t>(at >> 32))
                                : 0u;
  const auto low = static_cast<uint32_t>(at);
  auto run = [&](auto penalty, int64_t i0, int64_t count, const uint32_t* __restrict words) {
#pragma omp simd
    for (int64_t i = i0; i < i0 + count; ++i) {
      float a = 0.0f, b = 0.0f, c = 0.0f, w = 0.0f;
      if constexpr (ns > 0) a = to_float(s0[i]);
      if constexpr (ns > 1) b = to_float(s1[i]);
      if constexpr (ns > 2) c = to_float(s2[i]);
      if constexpr (R == Rounding::master) w = m[i];
      update_stored<K, R, decltype(penalty)::value>(sc, to_float(g[i]) * gmul, p[i], w, a, b, c,
                                                    words ? words[i - i0] : 0u);
      if constexpr (sr_state) {
        const uint32_t word = state_word(key, low + static_cast<uint32_t>(i));
        s0[i] = store_state<S>(a, word);
        if constexpr (ns > 1) s1[i] = store_state<S>(b, state_bits(word, 1));
        if constexpr (ns > 2) s2[i] = store_state<S>(c, state_bits(word, 2));
      } else {  // fp32 state: the loop body as it was (GCC stopped inlining the rule when it grew)
        if constexpr (ns > 0) s0[i] = a;
        if constexpr (ns > 1) s1[i] = b;
        if constexpr (ns > 2) s2[i] = c;
      }
      if constexpr (R == Rounding::master) m[i] = w;
    }
  };
  if constexpr (R != Rounding::stochastic) {
    if (sc.l2 != 0.0f || sc.l1 != 0.0f) run(std::true_type{}, 0, n, nullptr);
    else run(std::false_type{}, 0, n, nullptr);
  } else {
    alignas(64) uint32_t words[kSrWords];
    for (int64_t i0 = 0; i0 < n; i0 += kSrWords) {
      philox_blocks<kSrBlocks>(static_cast<uint64_t>(at + i0) >> 2, tensor, static_cast<uint32_t>(t), seed, words);
      run(std::true_type{}, i0, n - i0 < kSrWords ? n - i0 : kSrWords, words);
    }
  }
}

// The instantiations a tensor needs: its rule, its storage types and how it stores.
template <OptKind K>
void update_chunk(const TensorRef& tr, const StepScalars& s, float gmul, int64_t b, int64_t e, uint64_t seed,
                  uint32_t tensor, int64_t t) {
  auto at = [b](auto* base) { return base ? base + b : nullptr; };
  dispatch_storage(tr.type, [&](auto tag) {
    using T = decltype(tag);
    T* p = static_cast<T*>(tr.param) + b;
    const T* g = static_cast<const T*>(tr.grad) + b;
    auto go = [&](auto rounding) {
      auto with_state = [&](auto state_tag) {
        auto st = [&](int j) { return at(static_cast<decltype(state_tag)*>(tr.state[j])); };
        update_range<K, decltype(rounding)::value>(s, gmul, p, g, at(tr.master), st(0), st(1), st(2), e - b, seed,
                                                   tensor, t, b);
      };
      if (tr.state_type == Storage::bf16) with_state(bf16{});
      else with_state(0.0f);
    };
    if constexpr (std::is_same_v<T, float>) {
      go(std::integral_constant<Rounding, Rounding::nearest>{});
    } else {
      if (tr.rounding == Rounding::master) go(std::integral_constant<Rounding, Rounding::master>{});
      else if constexpr (std::is_same_v<T, bf16>) {
        if (tr.rounding == Rounding::stochastic) go(std::integral_constant<Rounding, Rounding::stochastic>{});
        else go(std::integral_constant<Rounding, Rounding::nearest>{});
      } else {
        go(std::integral_constant<Rounding, Rounding::nearest>{});
      }
    }
  });
}

}  // namespace

StepOutcome optim_step(const StepRequest& req) {
  StepOutcome out{false, 0.0, false};
  float coef = 1.0f;
  if (req.clip || req.check_finite) {
    std::vector<TypedSpan> grads(req.num_tensors);
    for (int64_t t = 0; t < req.num_tensors; ++t)
      grads[t] = TypedSpan{req.tensors[t].grad, req.tensors[t].numel, req.tensors[t].type};
    out.has_norm = true;
    out.norm = std::sqrt(sum_squares(grads.data(), req.num_tensors)) * req.inv_scale;
    if (!std::isfinite(out.norm) && req.check_finite) {
      out.skipped = true;
      return out;
    }
    if (req.clip) coef = static_cast<float>(clip_coefficient(req.max_norm, out.norm));
  }

  // Neighbouring tensors nearly always share group and step: derive their scalars (two pows)
  // once per run of equal (group, step), not once per tensor.
  std::vector<StepScalars> scalars(req.num_tensors);
  for (int64_t t = 0; t < req.num_tensors; ++t) {
    const int32_t g = req.tensors[t].group;
    if (t > 0 && g == req.tensors[t - 1].group && req.steps[t] == req.steps[t - 1]) scalars[t] = scalars[t - 1];
    else scalars[t] = prepare_step(req.groups[g], req.groups[g].kind, req.steps[t] + 1);
  }

  const std::vector<Chunk> chunks = make_chunks(req.num_tensors, [&](int64_t t) { return req.tensors[t].numel; });
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& ch = chunks[c];
    const TensorRef& tr = req.tensors[ch.tensor];
    const StepScalars& s = scalars[ch.tensor];
    // One switch per chunk of 32K elements: groups may use different rules in one step.
    dispatch_kind(req.groups[tr.group].kind, [&](auto tag) {
      // GradScaler's scales are powers of two, so folding 1/scale into the multiplier rounds
      // exactly as unscaling the gradients first would.
      update_chunk<decltype(tag)::value>(tr, s, coef * s.sign * req.inv_scale, ch.begin, ch.end,
                                         req.groups[tr.group].seed, static_cast<uint32_t>(ch.tensor),
                                         req.steps[ch.tensor] + 1);
    });
  }
  for (int64_t t = 0; t < req.num_tensors; ++t) ++req.steps[t];
  return out;
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
StepOutcome optim_step(const StepRequest& req) { FASTOPT_CPU_DISPATCH(optim_step(req)) }
#endif

}  // namespace fastopt::cpu

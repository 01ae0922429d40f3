// The fused optimizer step on the CPU: one parallel loop over fixed chunks of all tensors.
//
// Per element, the rule from fastopt/optim_rules.h, with the gradient scaled by the clip
// coefficient (and the sign, for maximize) in registers. Traffic per parameter (fp32): SGD 12 B,
// momentum/Nesterov/Adagrad/RMSprop 20 B, RMSprop with momentum or centered 28 B, centered with
// momentum 36 B, Adam/AdamW 28 B, AMSGrad 36 B; clipping adds one 4 B read of the gradients (the
// norm pass), so clipped AdamW moves 32 B instead of the 40 B of clip-then-step.
#include <cmath>
#include <vector>

#include "fastopt/backend.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(StepOutcome optim_step(const StepRequest& req); double sum_squares(const Span* grads, int64_t n);)

namespace FASTOPT_ISA {
namespace {

template <OptKind K>
void update_range(const StepScalars& s, float gmul, float* __restrict p, const float* __restrict g,
                  float* __restrict s0, float* __restrict s1, float* __restrict s2, int64_t n) {
  constexpr int ns = num_states(K);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float a = 0.0f, b = 0.0f, c = 0.0f;
    if constexpr (ns > 0) a = s0[i];
    if constexpr (ns > 1) b = s1[i];
    if constexpr (ns > 2) c = s2[i];
    update<K>(s, g[i] * gmul, p[i], a, b, c);
    if constexpr (ns > 0) s0[i] = a;
    if constexpr (ns > 1) s1[i] = b;
    if constexpr (ns > 2) s2[i] = c;
  }
}

}  // namespace

StepOutcome optim_step(const StepRequest& req) {
  StepOutcome out{false, 0.0, false};
  float coef = 1.0f;
  if (req.clip || req.check_finite) {
    std::vector<Span> grads(req.num_tensors);
    for (int64_t t = 0; t < req.num_tensors; ++t)
      grads[t] = Span{const_cast<float*>(req.tensors[t].grad), req.tensors[t].numel};
    out.has_norm = true;
    out.norm = std::sqrt(sum_squares(grads.data(), req.num_tensors));
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
    if (t > 0 && g == req.tensors[t - 1].group && req.steps[t] == req.steps[t - 1])
      scalars[t] = scalars[t - 1];
    else
      scalars[t] = prepare_step(req.groups[g], req.groups[g].kind, req.steps[t] + 1);
  }

  const std::vector<Chunk> chunks = make_chunks(req.num_tensors, [&](int64_t t) { return req.tensors[t].numel; });
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& ch = chunks[c];
    const TensorRef& tr = req.tensors[ch.tensor];
    const StepScalars& s = scalars[ch.tensor];
    const int64_t b = ch.begin;
    auto at = [b](float* base) { return base ? base + b : nullptr; };
    // One switch per chunk of 32K elements: groups may use different rules in one step.
    dispatch_kind(req.groups[tr.group].kind, [&](auto tag) {
      update_range<decltype(tag)::value>(s, coef * s.sign, tr.param + b, tr.grad + b, at(tr.state[0]),
                                         at(tr.state[1]), at(tr.state[2]), ch.end - b);
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

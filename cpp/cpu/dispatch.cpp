// Picks the best compiled instruction set for this CPU once, at import time.
#include <string>

#include "kernels.h"

#ifdef FASTOPT_OPENMP
#include <omp.h>
#endif

namespace fastopt::cpu {
namespace {

#define FASTOPT_TABLE(ns) KernelTable{#ns, ns::optim_step, ns::grad_norm, ns::scale, ns::clamp}

KernelTable choose() {
#if defined(FASTOPT_HAVE_ISA_avx512) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return FASTOPT_TABLE(avx512);
#endif
#if defined(FASTOPT_HAVE_ISA_avx2) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return FASTOPT_TABLE(avx2);
#endif
  return FASTOPT_TABLE(baseline);
}

const KernelTable& table() {
  static const KernelTable t = choose();
  return t;
}

}  // namespace

StepOutcome optim_step(const StepRequest& req) { return table().optim_step(req); }
double grad_norm(const Span* grads, int64_t n, double p) { return table().grad_norm(grads, n, p); }
void scale(const Span* grads, int64_t n, float coef) { table().scale(grads, n, coef); }
void clamp(const Span* grads, int64_t n, float lo, float hi) { table().clamp(grads, n, lo, hi); }
std::string isa() { return table().isa; }

int num_threads() {
#ifdef FASTOPT_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace fastopt::cpu

// Which compiled copy of the CPU kernels this machine runs (see isa.h); compiled once.
#include "isa.h"

#include <cstdlib>
#include <string>

#include "fastopt/backend.h"

#ifdef FASTOPT_OPENMP
#include <omp.h>
#endif

namespace fastopt::cpu {

static Isa detect() {
#if defined(__GNUC__) || defined(__clang__)
#if defined(FASTOPT_HAVE_ISA_avx512)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return Isa::avx512;
#endif
#if defined(FASTOPT_HAVE_ISA_avx2)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
#endif
  return Isa::baseline;
}

// FASTOPT_CPU_ISA=baseline|avx2 caps the choice, so the tests can run the narrower copies on a
// wider machine (it never raises it past what the CPU runs).
Isa best_isa() {
  static const Isa isa = [] {
    const Isa best = detect();
    const char* v = std::getenv("FASTOPT_CPU_ISA");
    const std::string cap = v ? v : "";
    if (cap == "baseline") return Isa::baseline;
    if (cap == "avx2" && best == Isa::avx512) {
#if defined(FASTOPT_HAVE_ISA_avx2)
      return Isa::avx2;
#else
      return Isa::baseline;
#endif
    }
    return best;
  }();
  return isa;
}

std::string isa() {
  switch (best_isa()) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "baseline";
  }
}

int num_threads() {
#ifdef FASTOPT_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace fastopt::cpu

// Which compiled copy of the CPU kernels this machine runs (see isa.h); compiled once.
#include "isa.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "fastopt/backend.h"
#include "fastopt/switches.h"

#ifdef FASTOPT_OPENMP
#include <omp.h>
#endif

namespace fastopt::cpu {

// Whether this build holds the copy for `isa`.
static bool compiled(Isa isa) {
  switch (isa) {
#if defined(FASTOPT_HAVE_ISA_avx512bf16)
    case Isa::avx512bf16: return true;
#endif
#if defined(FASTOPT_HAVE_ISA_avx512)
    case Isa::avx512: return true;
#endif
#if defined(FASTOPT_HAVE_ISA_avx2)
    case Isa::avx2: return true;
#endif
    case Isa::baseline: return true;
    default: return false;
  }
}

// The highest level this CPU runs (compiled in or not).
static Isa cpu_level() {
#if defined(__GNUC__) || defined(__clang__)
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return Isa::avx512bf16;
  if (avx512) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::baseline;
}

static const char* name(Isa isa) {
  switch (isa) {
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "baseline";
  }
}

// FASTOPT_CPU_ISA=baseline|avx2|avx512|avx512bf16 caps the choice, so the tests can run the
// narrower copies on a wider machine (it never raises it past what the CPU runs); the copy run
// is the highest compiled-in level at or below both. Other values cap nothing.
Isa best_isa() {
  static const Isa isa = [] {
    int level = static_cast<int>(cpu_level());
    const char* v = switch_value(switches::cpu_isa);
    for (int cap = 0; v && cap <= static_cast<int>(Isa::avx512bf16); ++cap)
      if (std::string(v) == name(static_cast<Isa>(cap))) level = std::min(level, cap);
    while (!compiled(static_cast<Isa>(level))) --level;
    return static_cast<Isa>(level);
  }();
  return isa;
}

std::string isa() { return name(best_isa()); }

int num_threads() {
#ifdef FASTOPT_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace fastopt::cpu

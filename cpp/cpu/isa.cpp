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
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
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

FASTOPT_FOR_EACH_ISA(bool amx_self_check(std::string* why);)

// CPUID.(EAX=7, ECX=0):EDX bit 24 AMX-TILE, bit 22 AMX-BF16.
static bool cpu_has_amx_bf16() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  unsigned a, b, c, d;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1u) && (d >> 22 & 1u);
#else
  return false;
#endif
}

// Linux hands a process the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); without it the first tile instruction raises SIGILL.
static bool os_grants_tiles() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return false;
#endif
}

struct AmxDecision {
  AmxMode mode;
  std::string status;
};

// FASTOPT_CPU_AMX=auto (default): the CPU's tiles where it has them, the OS grants them and they
// pass the self-check (amx.cpp); off: never; emulate: the software tiles, for tests.
static const AmxDecision& amx_decision() {
  static const AmxDecision d = []() -> AmxDecision {
    const char* v = switch_value(switches::cpu_amx);
    const std::string want = v ? v : "auto";
    if (want != "auto" && want != "off" && want != "emulate")
      return {AmxMode::off, "off (FASTOPT_CPU_AMX=" + want + " is none of auto, off, emulate)"};
    if (want == "off") return {AmxMode::off, "off (FASTOPT_CPU_AMX=off)"};
#if defined(FASTOPT_HAVE_ISA_avx512bf16)
    if (best_isa() != Isa::avx512bf16)
      return {AmxMode::off, "off (the AVX512-BF16 copy, which holds it, is not in use)"};
    if (want == "emulate") return {AmxMode::emulated, "emulated (FASTOPT_CPU_AMX=emulate)"};
    if (!cpu_has_amx_bf16()) return {AmxMode::off, "off (this CPU has no AMX-BF16)"};
#if defined(FASTOPT_AMX_ASM)
    if (!os_grants_tiles())
      return {AmxMode::off, "off (the OS refused the tile state: arch_prctl ARCH_REQ_XCOMP_PERM)"};
    std::string why;
    if (!avx512bf16::amx_self_check(&why)) return {AmxMode::off, "off (failed its self-check: " + why + ")"};
    return {AmxMode::tiles, "tiles"};
#else
    (void)os_grants_tiles;
    return {AmxMode::off, "off (this build's assembler has no AMX instructions)"};
#endif
#else
    (void)cpu_has_amx_bf16;
    (void)os_grants_tiles;
    return {AmxMode::off, "off (this build has no AVX512-BF16 copy)"};
#endif
  }();
  return d;
}

AmxMode amx_mode() { return amx_decision().mode; }
std::string amx() { return amx_decision().status; }

int num_threads() {
#ifdef FASTOPT_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace fastopt::cpu

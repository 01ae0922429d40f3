// The switchboard's table (see fastopt/switches.h). One definition per switch; the README table
// and `fastopt info` show these same strings.
#include "fastopt/switches.h"

#include <cstdlib>

namespace fastopt {
namespace switches {

const Switch
    cpu_isa{"FASTOPT_CPU_ISA",
            nullptr,
            "cpu",
            "the CPU's best",
            "once",
            "baseline|avx2|avx512|avx512bf16: caps the CPU kernels' instruction-set copy (never raises it past "
            "what the CPU runs), so tests can run the narrower copies on a wider machine"};
const Switch
    cpu_amx{"FASTOPT_CPU_AMX",
            nullptr,
            "cpu",
            "auto",
            "once",
            "auto: the bf16 GEMMs use AMX tiles where the CPU has amx_bf16 (and the OS grants them); off: never; "
            "emulate: the AMX copy's tile instructions run in software, for testing on machines without AMX"};
const Switch cpu_conv2d_winograd{
    "FASTOPT_CPU_CONV2D_WINOGRAD",
    "FASTOPT_CONV2D_WINOGRAD",
    "cpu",
    "1",
    "per call",
    "Winograd F(2x2, 3x3) for 3x3 unit-stride conv2d layers of >= 8 channels (weight-grad >= 128; the "
    "AVX2 copy >= 32, forward and data-grad only); a value starting with 0 turns it off"};
const Switch host_cache_mb{"FASTOPT_HOST_CACHE_MB",
                           nullptr,
                           "host",
                           "1024",
                           "once",
                           "MiB of freed host output blocks (>= 4 MiB each) kept for reuse; 0 turns the cache off"};
const Switch cuda_conv2d_winograd{
    "FASTOPT_CUDA_CONV2D_WINOGRAD",
    "FASTOPT_CONV2D_WINOGRAD",
    "cuda",
    "0",
    "per call",
    "1: Winograd F(2x2, 3x3) for 3x3 unit-stride layers of >= 32 channels, all three passes (opt-in "
    "until timed on a GPU)"};
const Switch
    cuda_conv2d_gather{"FASTOPT_CUDA_CONV2D_GATHER",
                       "FASTOPT_CONV2D_GATHER",
                       "cuda",
                       "0",
                       "once",
                       "1: every conv2d pass takes the gather kernels (one output per thread, fixed summation order), "
                       "to cross-check the tiled ones"};
const Switch cuda_conv2d_strips{
    "FASTOPT_CUDA_CONV2D_STRIPS",
    "FASTOPT_CONV2D_STRIPS",
    "cuda",
    "0",
    "per call",
    "1: the strips kernel for the data-grad of few-channel layers (Cg < 16, the RGB stem; opt-in until "
    "timed on a GPU)"};
const Switch cuda_conv2d_dw_taps{
    "FASTOPT_CUDA_CONV2D_DW_TAPS",
    "FASTOPT_CONV2D_DW_TAPS",
    "cuda",
    "0",
    "per call",
    "1: the all-taps depthwise weight-grad kernel for 3x3, 5x5 and 7x7 (opt-in until timed on a GPU)"};
const Switch cuda_conv2d_dw_loads{
    "FASTOPT_CUDA_CONV2D_DW_LOADS",
    "FASTOPT_CONV2D_DW_LOADS",
    "cuda",
    "0",
    "per call",
    "1: the depthwise tiles issue 8 loads per thread before any store (opt-in until timed on a GPU)"};
const Switch
    cuda_emulation_guard_host{"FASTOPT_CUDA_EMULATION_GUARD_HOST",
                              nullptr,
                              "cuda emulation",
                              "1",
                              "once",
                              "FASTOPT_CUDA=EMULATE builds: device memory is protected from host access between device "
                              "operations while <= 512 allocations live; 0 turns the guard off"};
const Switch cuda_emulation_seed{
    "FASTOPT_CUDA_EMULATION_SEED",
    nullptr,
    "cuda emulation",
    "0x5eed",
    "once",
    "FASTOPT_CUDA=EMULATE builds: seed of the order in which emulated threads interleave; other values "
    "explore other orders"};

const std::vector<const Switch*>& all() {
  static const std::vector<const Switch*> table{&cpu_isa,
                                                &cpu_amx,
                                                &cpu_conv2d_winograd,
                                                &host_cache_mb,
                                                &cuda_conv2d_winograd,
                                                &cuda_conv2d_gather,
                                                &cuda_conv2d_strips,
                                                &cuda_conv2d_dw_taps,
                                                &cuda_conv2d_dw_loads,
                                                &cuda_emulation_guard_host,
                                                &cuda_emulation_seed};
  return table;
}

}  // namespace switches

const char* switch_value(const Switch& s) {
  const char* v = std::getenv(s.name);
  if (v == nullptr && s.alias != nullptr) v = std::getenv(s.alias);
  return v;
}

bool switch_on(const Switch& s) {
  const char* v = switch_value(s);
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

}  // namespace fastopt

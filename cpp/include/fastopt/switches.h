// The switchboard: every environment variable fastopt reads, declared once with its default and
// meaning (README "Environment switches" lists the same table; `fastopt info` prints it). Code
// reads a switch through switch_value / switch_on, never std::getenv, so that no variable is read
// that this table does not name. CPU and GPU switches carry their backend in the name
// (FASTOPT_CPU_*, FASTOPT_CUDA_*), since the same kernel choice can have different defaults there.
//
// Each switch says when it is read: "once" ones are fixed at first use (a cached static at the
// call site), "per call" ones are read at every call so that a benchmark or test can flip them in
// one process (the GPU's opt-in kernels, the CPU Winograd path).
#pragma once

#include <vector>

namespace fastopt {

struct Switch {
  const char* name;           // FASTOPT_...
  const char* alias;          // an older name still honoured (deprecated), or nullptr
  const char* backend;        // "cpu", "cuda", "host" (both), "cuda emulation"
  const char* default_value;  // what an unset variable means
  const char* read;           // "once" or "per call"
  const char* meaning;
};

namespace switches {
extern const Switch cpu_isa, cpu_amx, cpu_conv2d_winograd, host_cache_mb;
extern const Switch cuda_conv2d_winograd, cuda_conv2d_gather, cuda_conv2d_strips, cuda_conv2d_dw_taps,
    cuda_conv2d_dw_loads;
// Read by the emulator itself (cuda/emulation/emulator.cpp), which the emulator's own test builds
// without the module; declared here for the table.
extern const Switch cuda_emulation_guard_host, cuda_emulation_seed;

// Every switch, in the README table's order.
const std::vector<const Switch*>& all();
}  // namespace switches

// The environment's value of `s` (its name, else its deprecated alias), or nullptr when neither is set.
const char* switch_value(const Switch& s);

// Whether `s` is set to something other than "" or "0": the GPU's opt-in kernels.
bool switch_on(const Switch& s);

}  // namespace fastopt

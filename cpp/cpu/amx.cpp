// The AMX self-check (isa.cpp runs it once before the bf16 GEMMs may use the CPU's tiles): one
// MR x NR tile over two k steps through the real instructions and through their software copy
// (gemm_amx.h), on small integers, whose products and sums are exact in any order, so the two
// must agree bit for bit. A wrong tile configuration, operand order or stride cannot pass it.
#include <cstdint>
#include <string>
#include <vector>

#include "gemm_bf16.h"

namespace fastopt::cpu {
FASTOPT_FOR_EACH_ISA(bool amx_self_check(std::string* why);)

namespace FASTOPT_ISA {

bool amx_self_check(std::string* why) {
#if defined(__AVX512BF16__) && defined(FASTOPT_AMX_ASM)
  using namespace gemm;
  constexpr int64_t kc = 2 * kAmxK;
  std::vector<float> a_strip(kc * MR), b_rows(kc * NR);
  for (int64_t p = 0; p < kc; ++p) {
    for (int i = 0; i < MR; ++i) a_strip[p * MR + i] = static_cast<float>((3 * p + 5 * i) % 9 - 4);
    for (int j = 0; j < NR; ++j) b_rows[p * NR + j] = static_cast<float>((7 * p + 2 * j) % 9 - 4);
  }
  PanelOf<bf16> a(kc * MR), b(kc * NR);
  amx_rows_from_strip(a_strip.data(), kc, a.data());
  pairs_from_rows<NR>(b_rows.data(), kc, b.data());
  Panel hw(MR * NR), sw(MR * NR);
  for (int64_t k = 0; k < MR * NR; ++k) hw.data()[k] = sw.data()[k] = static_cast<float>(k % 7);
  for (bool acc : {false, true}) {
    AmxKern<Tiles>::begin();
    AmxKern<Tiles>::micro(NR, kc, a.data(), b.data(), hw.data(), acc);
    AmxKern<Tiles>::end();
    AmxKern<Emulated>::begin();
    AmxKern<Emulated>::micro(NR, kc, a.data(), b.data(), sw.data(), acc);
    AmxKern<Emulated>::end();
    for (int64_t k = 0; k < MR * NR; ++k) {
      if (hw.data()[k] != sw.data()[k]) {
        *why = "tile output " + std::to_string(k) + " is " + std::to_string(hw.data()[k]) + ", the software copy's " +
               std::to_string(sw.data()[k]);
        return false;
      }
    }
  }
  return true;
#else
  *why = "not compiled in this copy";
  return false;
#endif
}

}  // namespace FASTOPT_ISA
}  // namespace fastopt::cpu

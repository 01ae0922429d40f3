// The CPU kernels are compiled once per instruction set (CMakeLists.txt: baseline, avx2,
// avx512, avx512bf16 = avx512 plus the bf16 dot product VDPBF16PS, which only the bf16 GEMMs
// use: gemm_bf16.h), each copy in its own namespace fastopt::cpu::<isa>. A family's public entry points
// are compiled with the baseline copy only (FASTOPT_ISA_BASELINE) and forward to the best copy
// this CPU runs (FASTOPT_CPU_DISPATCH), so one portable build still uses wide vectors.
//
// A family file looks like:
//   FASTOPT_FOR_EACH_ISA(void foo_impl(const float*, int64_t);)   // declare every copy
//   namespace FASTOPT_ISA { void foo_impl(...) { ...loops... } }  // this copy
//   #ifdef FASTOPT_ISA_BASELINE
//   void foo(const float* x, int64_t n) { FASTOPT_CPU_DISPATCH(foo_impl(x, n)); }
//   #endif
#pragma once
#include <cstdint>
#include <vector>

#ifndef FASTOPT_ISA
#define FASTOPT_ISA baseline
#define FASTOPT_ISA_BASELINE 1
#endif

namespace fastopt::cpu {

enum class Isa { baseline, avx2, avx512, avx512bf16 };  // in order: each runs where the next does
Isa best_isa();  // the widest compiled-in copy this CPU runs; decided once (isa.cpp)

// Whether the bf16 GEMMs of the AVX512-BF16 copy run on AMX tiles (gemm_amx.h): the CPU's own
// (tiles), their software copy (emulated: FASTOPT_CPU_AMX=emulate, for tests), or not at all.
// Decided once (isa.cpp); cpu::amx() (backend.h) says which and why, for build_info and `fastopt info`.
enum class AmxMode { off, tiles, emulated };
AmxMode amx_mode();

#define FASTOPT_FOR_EACH_ISA(decl) \
  namespace baseline {             \
  decl                             \
  }                                \
  namespace avx2 {                 \
  decl                             \
  }                                \
  namespace avx512 {               \
  decl                             \
  }                                \
  namespace avx512bf16 {           \
  decl                             \
  }

#ifdef FASTOPT_HAVE_ISA_avx512bf16
#define FASTOPT_ISA_CASE_avx512bf16(call) \
  case ::fastopt::cpu::Isa::avx512bf16: return avx512bf16::call;
#else
#define FASTOPT_ISA_CASE_avx512bf16(call)
#endif
#ifdef FASTOPT_HAVE_ISA_avx512
#define FASTOPT_ISA_CASE_avx512(call) \
  case ::fastopt::cpu::Isa::avx512: return avx512::call;
#else
#define FASTOPT_ISA_CASE_avx512(call)
#endif
#ifdef FASTOPT_HAVE_ISA_avx2
#define FASTOPT_ISA_CASE_avx2(call) \
  case ::fastopt::cpu::Isa::avx2: return avx2::call;
#else
#define FASTOPT_ISA_CASE_avx2(call)
#endif

// Returns call(...) from the best copy; use inside namespace fastopt::cpu.
#define FASTOPT_CPU_DISPATCH(call)                                                                      \
  switch (::fastopt::cpu::best_isa()) {                                                                 \
    FASTOPT_ISA_CASE_avx512bf16(call) FASTOPT_ISA_CASE_avx512(call) FASTOPT_ISA_CASE_avx2(call) default \
        : return baseline::call;                                                                        \
  }

// Work is cut into fixed chunks of one tensor each, so a parallel loop over chunks balances
// thousands of small tensors and a few huge ones alike, and per-chunk partial sums combined in
// chunk order make every reduction independent of the thread count.
constexpr int64_t kChunk = 1 << 15;

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

template <class NumelOf>
std::vector<Chunk> make_chunks(int64_t num_tensors, NumelOf numel_of) {
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < num_tensors; ++t) {
    const int64_t n = numel_of(t);
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({t, b, b + kChunk < n ? b + kChunk : n});
  }
  return chunks;
}

}  // namespace fastopt::cpu

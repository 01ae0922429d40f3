// The CPU kernels are compiled once per instruction set (CMakeLists.txt: baseline, avx2,
// avx512), each copy in its own namespace; dispatch.cpp picks one at import time.
#pragma once
#include <cstdint>
#include <vector>

#include "fastopt/backend.h"

#ifndef FASTOPT_ISA
#define FASTOPT_ISA baseline
#endif

namespace fastopt::cpu {

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

struct KernelTable {
  const char* isa;
  StepOutcome (*optim_step)(const StepRequest&);
  double (*grad_norm)(const Span*, int64_t, double);
  void (*scale)(const Span*, int64_t, float);
  void (*clamp)(const Span*, int64_t, float, float);
};

#define FASTOPT_DECLARE_CPU_KERNELS(ns)                                   \
  namespace ns {                                                         \
  StepOutcome optim_step(const StepRequest& req);                        \
  double grad_norm(const Span* grads, int64_t n, double p);              \
  double sum_squares(const Span* grads, int64_t n);                      \
  void scale(const Span* grads, int64_t n, float coef);                  \
  void clamp(const Span* grads, int64_t n, float lo, float hi);          \
  }

FASTOPT_DECLARE_CPU_KERNELS(baseline)
FASTOPT_DECLARE_CPU_KERNELS(avx2)
FASTOPT_DECLARE_CPU_KERNELS(avx512)

}  // namespace fastopt::cpu

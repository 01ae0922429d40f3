// Global gradient norms and in-place clipping on the CPU.
//
//   ||g||_p = (sum over all tensors and elements |g_i|^p)^(1/p);  p = inf: max |g_i|
//   clip by norm: g *= min(1, max_norm / (||g|| + 1e-6));  clip by value: g = min(max(g, lo), hi)
//
// Traffic: a norm reads 4 B/element; scale and clamp read and write 8 B/element.
// Sums accumulate in double over 16 fixed lanes per chunk, and chunks are combined in order, so
// the result is the same for any thread count and any ISA level. In double a sum of float
// squares cannot overflow, so a non-finite sum means a non-finite gradient.
#include <cmath>
#include <limits>
#include <vector>

#include "clip.h"
#include "fastopt/backend.h"
#include "isa.h"

namespace fastopt::cpu {

namespace FASTOPT_ISA {
namespace {

constexpr int kLanes = 16;

// acc_of_range(x, count) for elements [begin, end) of every chunk; x points at the chunk's first
// element, typed as the span's storage (float for Span, any of bf16.h's for TypedSpan).
template <class Acc>
double chunk_value(const Span& g, int64_t begin, int64_t count, Acc& acc) {
  return acc(g.data + begin, count);
}
template <class Acc>
double chunk_value(const TypedSpan& g, int64_t begin, int64_t count, Acc& acc) {
  double r = 0.0;
  dispatch_storage(g.type, [&](auto tag) { r = acc(static_cast<const decltype(tag)*>(g.data) + begin, count); });
  return r;
}

template <class SpanT, class Acc, class Combine>
double reduce_chunks(const SpanT* grads, int64_t n, Acc acc_of_range, Combine combine, double init) {
  const std::vector<Chunk> chunks = make_chunks(n, [&](int64_t t) { return grads[t].numel; });
  const int64_t nc = static_cast<int64_t>(chunks.size());
  std::vector<double> partial(nc);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& ch = chunks[c];
    partial[c] = chunk_value(grads[ch.tensor], ch.begin, ch.end - ch.begin, acc_of_range);
  }
  double total = init;
  for (double v : partial) total = combine(total, v);
  return total;
}

template <class T, class F>
double lane_sum(const T* __restrict x, int64_t n, F f) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += f(static_cast<double>(to_float(x[i + j])));
  for (int j = 0; i < n; ++i, ++j) acc[j] += f(static_cast<double>(to_float(x[i])));
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

// max |x| that propagates NaN, as torch's inf-norm does.
double nan_max_abs(const float* __restrict x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float a = std::fabs(x[i + j]);
      acc[j] = (a > acc[j] || a != a) ? a : acc[j];
    }
  for (int j = 0; i < n; ++i, ++j) {
    const float a = std::fabs(x[i]);
    acc[j] = (a > acc[j] || a != a) ? a : acc[j];
  }
  float m = 0.0f;
  for (float a : acc) m = (a > m || a != a) ? a : m;
  return m;
}

double plus(double a, double b) { return a + b; }
double nan_max(double a, double b) {
  if (a != a || b != b) return std::numeric_limits<double>::quiet_NaN();
  return a > b ? a : b;
}

// Of fp32, bf16 and f16 elements alike: the same lanes and order, so bf16 values summed here give
// the bits their fp32 upcast would.
struct SumSquares {
  template <class T>
  double operator()(const T* x, int64_t m) const {
    return lane_sum(x, m, [](double v) { return v * v; });
  }
};

}  // namespace

double sum_squares(const TypedSpan* grads, int64_t n) { return reduce_chunks(grads, n, SumSquares{}, plus, 0.0); }

double grad_norm(const Span* grads, int64_t n, double p) {
  if (p == 2.0) return std::sqrt(reduce_chunks(grads, n, SumSquares{}, plus, 0.0));
  if (std::isinf(p)) return reduce_chunks(grads, n, nan_max_abs, nan_max, 0.0);
  if (p == 1.0)
    return reduce_chunks(
        grads, n, [](const float* x, int64_t m) { return lane_sum(x, m, [](double v) { return std::fabs(v); }); }, plus,
        0.0);
  const double s = reduce_chunks(
      grads, n,
      [p](const float* x, int64_t m) { return lane_sum(x, m, [p](double v) { return std::pow(std::fabs(v), p); }); },
      plus, 0.0);
  return std::pow(s, 1.0 / p);
}

// Applies f to every element of every tensor in place, chunks spread over the threads.
template <class F>
void map_inplace(const Span* grads, int64_t n, F f) {
  const std::vector<Chunk> chunks = make_chunks(n, [&](int64_t t) { return grads[t].numel; });
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nc; ++c) {
    float* __restrict x = grads[chunks[c].tensor].data;
#pragma omp simd
    for (int64_t i = chunks[c].begin; i < chunks[c].end; ++i) x[i] = f(x[i]);
  }
}

void scale(const Span* grads, int64_t n, float coef) {
  map_inplace(grads, n, [coef](float v) { return v * coef; });
}

void clamp(const Span* grads, int64_t n, float lo, float hi) {
  // NaN stays NaN, as torch.clamp does.
  map_inplace(grads, n, [lo, hi](float v) { return v < lo ? lo : (v > hi ? hi : v); });
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
double grad_norm(const Span* grads, int64_t n, double p) { FASTOPT_CPU_DISPATCH(grad_norm(grads, n, p)) }
void scale(const Span* grads, int64_t n, float coef) { FASTOPT_CPU_DISPATCH(scale(grads, n, coef)) }
void clamp(const Span* grads, int64_t n, float lo, float hi) { FASTOPT_CPU_DISPATCH(clamp(grads, n, lo, hi)) }

// A coefficient of 1 leaves the gradients as they are, so they are not rewritten; a NaN one (a
// NaN norm) is applied, making them NaN as torch's clip_grad_norm_ does.
void clip_scale(const Span* grads, int64_t n, double norm, double max_norm) {
  const double coef = clip_coefficient(max_norm, norm);
  if (coef < 1.0 || std::isnan(coef)) scale(grads, n, static_cast<float>(coef));
}
#endif

}  // namespace fastopt::cpu

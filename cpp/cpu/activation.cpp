// ReLU and LeakyReLU on the CPU, forward and backward (element math: fastopt/activation.h).
//
// Traffic: forward reads x and writes y, 8 B/element; backward reads dy and x and writes dx,
// 12 B/element. One compare and one select (and a multiply for leaky) per element: memory-bound.
//
// Shape: OpenMP over fixed chunks of kChunk elements, each a vectorized loop (compare + blend);
// small arrays stay on the calling thread, where waking the team would cost more than the loop.
#include "fastopt/activation.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void relu_forward(const float* x, float* y, int64_t n);
                     void relu_backward(const float* dy, const float* x, float* dx, int64_t n);
                     void leaky_relu_forward(const float* x, float* y, int64_t n, float slope);
                     void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope);)

namespace FASTOPT_ISA {
namespace {

// y[i] = op(a[i], b[i]) for i < n; a unary op ignores b.
template <class Op>
void map(const float* a, const float* b, float* y, int64_t n, Op op) {
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (num_chunks > 1)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t begin = c * kChunk, end = begin + kChunk < n ? begin + kChunk : n;
    const float* __restrict ai = a + begin;
    const float* __restrict bi = b + begin;
    float* __restrict yi = y + begin;
#pragma omp simd
    for (int64_t k = 0; k < end - begin; ++k) yi[k] = op(ai[k], bi[k]);
  }
}

}  // namespace

void relu_forward(const float* x, float* y, int64_t n) {
  map(x, x, y, n, [](float a, float) { return relu(a); });
}

void relu_backward(const float* dy, const float* x, float* dx, int64_t n) {
  map(dy, x, dx, n, [](float g, float a) { return relu_grad(g, a); });
}

void leaky_relu_forward(const float* x, float* y, int64_t n, float slope) {
  map(x, x, y, n, [slope](float a, float) { return leaky_relu(a, slope); });
}

void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope) {
  map(dy, x, dx, n, [slope](float g, float a) { return leaky_relu_grad(g, a, slope); });
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void relu_forward(const float* x, float* y, int64_t n) { FASTOPT_CPU_DISPATCH(relu_forward(x, y, n)) }
void relu_backward(const float* dy, const float* x, float* dx, int64_t n) {
  FASTOPT_CPU_DISPATCH(relu_backward(dy, x, dx, n))
}
void leaky_relu_forward(const float* x, float* y, int64_t n, float slope) {
  FASTOPT_CPU_DISPATCH(leaky_relu_forward(x, y, n, slope))
}
void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope) {
  FASTOPT_CPU_DISPATCH(leaky_relu_backward(dy, x, dx, n, slope))
}
#endif

}  // namespace fastopt::cpu

// Pointwise maps on the CPU (element math: fastopt/activation.h): ReLU and LeakyReLU, the smooth
// activations (tanh, sigmoid, ELU, GELU), forward and backward; the residual add with drop path;
// axpby, and the fp32 <-> bf16 cast. All but axpby and cast (which updates fp32 gradient buffers) also take bf16 arrays: fp32 math,
// one rounding to nearest even per result, half the bytes.
//
// Traffic: forward reads x and writes y, 8 B/element; backward reads dy and x and writes dx,
// 12 B/element; the residual add 12 (8 for the body gradient), axpby 12. ReLU is one compare and
// one select (and a multiply for leaky) per element: memory-bound. The smooth activations call
// libm's scalar tanhf/expf/expm1f/erff (GCC vectorizes those only under -ffast-math, which would
// change results per ISA): about 10-20 ns per element, compute-bound; fine where they are used
// (small networks, experiments), ReLU remains the fast path.
//
// Shape: OpenMP over fixed chunks of kChunk elements, each a vectorized loop (compare + blend);
// small arrays stay on the calling thread, where waking the team would cost more than the loop.
#include "fastopt/activation.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void relu_forward(const float* x, float* y, int64_t n);
                     void relu_backward(const float* dy, const float* x, float* dx, int64_t n);
                     void leaky_relu_forward(const float* x, float* y, int64_t n, float slope);
                     void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope);
                     void relu_forward(const bf16* x, bf16* y, int64_t n);
                     void relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n);
                     void leaky_relu_forward(const bf16* x, bf16* y, int64_t n, float slope);
                     void leaky_relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n, float slope);
                     void smooth_forward(Smooth op, const float* x, float* y, int64_t n, float alpha);
                     void smooth_backward(Smooth op, const float* dy, const float* x, float* dx, int64_t n,
                                          float alpha);
                     void smooth_forward(Smooth op, const bf16* x, bf16* y, int64_t n, float alpha);
                     void smooth_backward(Smooth op, const bf16* dy, const bf16* x, bf16* dx, int64_t n, float alpha);
                     void residual_add(const float* b, const float* s, float* y, int64_t rows, int64_t inner,
                                       const DropoutParams& d);
                     void residual_add(const bf16* b, const bf16* s, bf16* y, int64_t rows, int64_t inner,
                                       const DropoutParams& d);
                     void axpby(const float* x, float* y, int64_t n, float a, float b);
                     void cast(const float* x, bf16* y, int64_t n); void cast(const bf16* x, float* y, int64_t n);)

namespace FASTOPT_ISA {
namespace {

// y[i] = op(a[i], b[i]) for i < n; a unary op ignores b. T is the storage type (fastopt/bf16.h):
// op runs in fp32, its result rounded once to T.
template <class T, class Op>
void map(const T* a, const T* b, T* y, int64_t n, Op op) {
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (num_chunks > 1)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t begin = c * kChunk, end = begin + kChunk < n ? begin + kChunk : n;
    const T* __restrict ai = a + begin;
    const T* __restrict bi = b + begin;
    T* __restrict yi = y + begin;
#pragma omp simd
    for (int64_t k = 0; k < end - begin; ++k) yi[k] = from_float<T>(op(to_float(ai[k]), to_float(bi[k])));
  }
}

}  // namespace

namespace {

template <class T>
void relu_fwd(const T* x, T* y, int64_t n) {
  map(x, x, y, n, [](float a, float) { return relu(a); });
}
template <class T>
void relu_bwd(const T* dy, const T* x, T* dx, int64_t n) {
  map(dy, x, dx, n, [](float g, float a) { return relu_grad(g, a); });
}
template <class T>
void leaky_fwd(const T* x, T* y, int64_t n, float slope) {
  map(x, x, y, n, [slope](float a, float) { return leaky_relu(a, slope); });
}
template <class T>
void leaky_bwd(const T* dy, const T* x, T* dx, int64_t n, float slope) {
  map(dy, x, dx, n, [slope](float g, float a) { return leaky_relu_grad(g, a, slope); });
}

}  // namespace

void relu_forward(const float* x, float* y, int64_t n) { relu_fwd(x, y, n); }
void relu_forward(const bf16* x, bf16* y, int64_t n) { relu_fwd(x, y, n); }
void relu_backward(const float* dy, const float* x, float* dx, int64_t n) { relu_bwd(dy, x, dx, n); }
void relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n) { relu_bwd(dy, x, dx, n); }
void leaky_relu_forward(const float* x, float* y, int64_t n, float slope) { leaky_fwd(x, y, n, slope); }
void leaky_relu_forward(const bf16* x, bf16* y, int64_t n, float slope) { leaky_fwd(x, y, n, slope); }
void leaky_relu_backward(const float* dy, const float* x, float* dx, int64_t n, float slope) {
  leaky_bwd(dy, x, dx, n, slope);
}
void leaky_relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n, float slope) {
  leaky_bwd(dy, x, dx, n, slope);
}

namespace {

template <Smooth op, class T>
void smooth_map(const T* dy, const T* x, T* y, int64_t n, float alpha) {
  if (dy == nullptr) map(x, x, y, n, [alpha](float a, float) { return smooth_forward(op, a, alpha); });
  else map(dy, x, y, n, [alpha](float g, float a) { return smooth_backward(op, g, a, alpha); });
}

template <class T>
void smooth(Smooth op, const T* dy, const T* x, T* y, int64_t n, float alpha) {
  switch (op) {
    case Smooth::tanh: return smooth_map<Smooth::tanh>(dy, x, y, n, alpha);
    case Smooth::sigmoid: return smooth_map<Smooth::sigmoid>(dy, x, y, n, alpha);
    case Smooth::elu: return smooth_map<Smooth::elu>(dy, x, y, n, alpha);
    default: return smooth_map<Smooth::gelu>(dy, x, y, n, alpha);
  }
}

// Tasks are (row, chunk of the row), so one huge sample and many small ones both spread over
// the threads; each task draws its row's factor once.
template <class T>
void residual(const T* b, const T* s, T* y, int64_t rows, int64_t inner, const DropoutParams& d) {
  const bool drop = d.threshold < (uint64_t{1} << 32);
  const int64_t per_row = (inner + kChunk - 1) / kChunk;
  const int64_t tasks = rows * per_row;
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t row = t / per_row, begin = (t % per_row) * kChunk;
    const int64_t end = begin + kChunk < inner ? begin + kChunk : inner;
    const float f = drop ? drop_path_factor(d, row) : 1.0f;
    const int64_t at = row * inner + begin;
    const T* __restrict bi = b + at;
    T* __restrict yi = y + at;
    if (s == nullptr) {
#pragma omp simd
      for (int64_t k = 0; k < end - begin; ++k) yi[k] = from_float<T>(to_float(bi[k]) * f);
    } else {
      const T* __restrict si = s + at;
#pragma omp simd
      for (int64_t k = 0; k < end - begin; ++k)
        yi[k] = from_float<T>(fastopt::residual_add(to_float(bi[k]), to_float(si[k]), f));
    }
  }
}

}  // namespace

void smooth_forward(Smooth op, const float* x, float* y, int64_t n, float alpha) {
  smooth<float>(op, nullptr, x, y, n, alpha);
}
void smooth_forward(Smooth op, const bf16* x, bf16* y, int64_t n, float alpha) {
  smooth<bf16>(op, nullptr, x, y, n, alpha);
}
void smooth_backward(Smooth op, const float* dy, const float* x, float* dx, int64_t n, float alpha) {
  smooth(op, dy, x, dx, n, alpha);
}
void smooth_backward(Smooth op, const bf16* dy, const bf16* x, bf16* dx, int64_t n, float alpha) {
  smooth(op, dy, x, dx, n, alpha);
}
void residual_add(const float* b, const float* s, float* y, int64_t rows, int64_t inner, const DropoutParams& d) {
  residual(b, s, y, rows, inner, d);
}
void residual_add(const bf16* b, const bf16* s, bf16* y, int64_t rows, int64_t inner, const DropoutParams& d) {
  residual(b, s, y, rows, inner, d);
}

// Not map(): x may be y, and y is read and written, so no __restrict (same-index aliasing only,
// which `omp simd` allows).
void axpby(const float* x, float* y, int64_t n, float a, float b) {
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (num_chunks > 1)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t begin = c * kChunk, end = begin + kChunk < n ? begin + kChunk : n;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = fastopt::axpby(x[i], y[i], a, b);
  }
}

template <class S, class D>
void cast_loop(const S* x, D* y, int64_t n) {
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (num_chunks > 1)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t begin = c * kChunk, end = begin + kChunk < n ? begin + kChunk : n;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = from_float<D>(to_float(x[i]));
  }
}
void cast(const float* x, bf16* y, int64_t n) { cast_loop(x, y, n); }
void cast(const bf16* x, float* y, int64_t n) { cast_loop(x, y, n); }

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
void relu_forward(const bf16* x, bf16* y, int64_t n) { FASTOPT_CPU_DISPATCH(relu_forward(x, y, n)) }
void relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n) {
  FASTOPT_CPU_DISPATCH(relu_backward(dy, x, dx, n))
}
void leaky_relu_forward(const bf16* x, bf16* y, int64_t n, float slope) {
  FASTOPT_CPU_DISPATCH(leaky_relu_forward(x, y, n, slope))
}
void leaky_relu_backward(const bf16* dy, const bf16* x, bf16* dx, int64_t n, float slope) {
  FASTOPT_CPU_DISPATCH(leaky_relu_backward(dy, x, dx, n, slope))
}
void smooth_forward(Smooth op, const float* x, float* y, int64_t n, float alpha) {
  FASTOPT_CPU_DISPATCH(smooth_forward(op, x, y, n, alpha))
}
void smooth_backward(Smooth op, const float* dy, const float* x, float* dx, int64_t n, float alpha) {
  FASTOPT_CPU_DISPATCH(smooth_backward(op, dy, x, dx, n, alpha))
}
void smooth_forward(Smooth op, const bf16* x, bf16* y, int64_t n, float alpha) {
  FASTOPT_CPU_DISPATCH(smooth_forward(op, x, y, n, alpha))
}
void smooth_backward(Smooth op, const bf16* dy, const bf16* x, bf16* dx, int64_t n, float alpha) {
  FASTOPT_CPU_DISPATCH(smooth_backward(op, dy, x, dx, n, alpha))
}
void residual_add(const float* b, const float* s, float* y, int64_t rows, int64_t inner, const DropoutParams& d) {
  FASTOPT_CPU_DISPATCH(residual_add(b, s, y, rows, inner, d))
}
void residual_add(const bf16* b, const bf16* s, bf16* y, int64_t rows, int64_t inner, const DropoutParams& d) {
  FASTOPT_CPU_DISPATCH(residual_add(b, s, y, rows, inner, d))
}
void axpby(const float* x, float* y, int64_t n, float a, float b) { FASTOPT_CPU_DISPATCH(axpby(x, y, n, a, b)) }
void cast(const float* x, bf16* y, int64_t n) { FASTOPT_CPU_DISPATCH(cast(x, y, n)) }
void cast(const bf16* x, float* y, int64_t n) { FASTOPT_CPU_DISPATCH(cast(x, y, n)) }
#endif

}  // namespace fastopt::cpu

/*
Global gradient norms and in-place clipping over a list of device tensors.

Math:
  ||g||_p = (sum over all tensors and elements |g_i|^p)^(1/p);  p = 2: sqrt(sum g^2);  p = inf: max |g_i|
  clip by norm:  g *= min(1, max_norm / (||g|| + 1e-6)), the norm read from device memory
  clip by value: g = min(max(g, lo), hi)

Bytes per element (fp32): norm 4 (read); clip_scale 8 (read + write, 0 when the coefficient is
>= 1: blocks then return before touching the gradients); clamp 8.

Launch shape (cuda/launch.cuh): 256 threads per 16384-element chunk, <= 256 tensors per launch.
The norm is a deterministic two-stage reduction: each chunk block writes its fold (float) to its
own slot of a stream-ordered scratch buffer, then one 1024-thread block folds the slots in a fixed
order and writes the norm to device memory. No atomics, no host sync.
*/
#include <cmath>

#include "fastopt/backend.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using namespace detail;

template <NormKind kNorm>
__global__ void __launch_bounds__(kThreads)
norm_partials_kernel(const __grid_constant__ TensorList<1> list, float p, float* partial) {
  norm_partials<kNorm, false>(list, p, partial, nullptr);
}

template <NormKind kNorm>
__global__ void __launch_bounds__(kFinalThreads)
norm_finalize_kernel(const float* partial, int64_t count, float inv_p, float* norm_out) {
  const float acc = fold_partials<kNorm, kFinalThreads>(partial, count);
  if (threadIdx.x == 0) {
    if constexpr (kNorm == NormKind::L2) *norm_out = sqrtf(acc);
    else if constexpr (kNorm == NormKind::LP) *norm_out = powf(acc, inv_p);
    else *norm_out = acc;
  }
}

// Skipping when coef >= 1 writes nothing instead of multiplying by 1 (bit-identical); a NaN
// norm fails the test and scales by NaN, as torch's clip_grad_norm_ does.
__global__ void __launch_bounds__(kThreads)
scale_kernel(const __grid_constant__ TensorList<1> list, const float* norm, float max_norm) {
  const float coef = clip_coefficient(max_norm, *norm);
  if (coef >= 1.0f) return;
  const Chunk c = locate(list);
  float* const ptr[1] = {list.ptr[0][c.t]};
  chunk_apply<1, 1u>(ptr, c.begin, c.end, [&](float (&x)[1]) { x[0] *= coef; });
}

// NaN stays NaN (torch.clamp); lo > hi gives hi, as min(max(g, lo), hi) does.
__global__ void __launch_bounds__(kThreads)
clamp_kernel(const __grid_constant__ TensorList<1> list, float lo, float hi) {
  const Chunk c = locate(list);
  float* const ptr[1] = {list.ptr[0][c.t]};
  chunk_apply<1, 1u>(ptr, c.begin, c.end, [&](float (&x)[1]) {
    if (x[0] == x[0]) x[0] = fminf(fmaxf(x[0], lo), hi);
  });
}

auto span_getter(const Span* grads) {
  return [grads](int64_t i, float* (&ptrs)[1]) {
    ptrs[0] = grads[i].data;
    return grads[i].numel;
  };
}

template <NormKind kNorm>
void run_norm(const Span* grads, int64_t n, double p, float* norm_out, cudaStream_t stream) {
  int64_t total_blocks = 0;
  for (int64_t i = 0; i < n; ++i) total_blocks += num_blocks(grads[i].numel);
  Scratch scratch(4 * static_cast<size_t>(total_blocks), stream);
  float* partial = reinterpret_cast<float*>(scratch.bytes());
  for_each_batch<1>(n, span_getter(grads), [&](const TensorList<1>& list, int grid) {
    norm_partials_kernel<kNorm><<<grid, kThreads, 0, stream>>>(list, static_cast<float>(p), partial);
    check(cudaGetLastError(), "grad_norm (partials)");
  });
  norm_finalize_kernel<kNorm><<<1, kFinalThreads, 0, stream>>>(partial, total_blocks,
                                                               static_cast<float>(1.0 / p), norm_out);
  check(cudaGetLastError(), "grad_norm (finalize)");
}

}  // namespace

void grad_norm(const Span* grads, int64_t n, double p, float* norm_out, void* stream) {
  const cudaStream_t s = as_stream(stream);
  if (p == 2.0) run_norm<NormKind::L2>(grads, n, p, norm_out, s);
  else if (p == 1.0) run_norm<NormKind::L1>(grads, n, p, norm_out, s);
  else if (std::isinf(p)) run_norm<NormKind::LINF>(grads, n, p, norm_out, s);
  else run_norm<NormKind::LP>(grads, n, p, norm_out, s);
}

void clip_scale(const Span* grads, int64_t n, const float* norm, double max_norm, void* stream) {
  const cudaStream_t s = as_stream(stream);
  for_each_batch<1>(n, span_getter(grads), [&](const TensorList<1>& list, int grid) {
    scale_kernel<<<grid, kThreads, 0, s>>>(list, norm, static_cast<float>(max_norm));
    check(cudaGetLastError(), "clip_scale");
  });
}

void clamp(const Span* grads, int64_t n, float lo, float hi, void* stream) {
  const cudaStream_t s = as_stream(stream);
  for_each_batch<1>(n, span_getter(grads), [&](const TensorList<1>& list, int grid) {
    clamp_kernel<<<grid, kThreads, 0, s>>>(list, lo, hi);
    check(cudaGetLastError(), "clamp");
  });
}

}  // namespace fastopt::cuda

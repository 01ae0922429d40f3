/*
Fused multi-tensor optimizer step: every tensor of every parameter group in one native call, with
gradient clipping and the skip-on-non-finite check folded in, never waiting for the host.

Math per element (the rules live in fastopt/optim_rules.h, shared with the CPU backend):
  g = grad * (coef * sign),  coef = min(1, max_norm / (||all grads||_2 + 1e-6)) or 1 without clip
  then SGD / momentum / Nesterov / Adagrad / RMSprop (+momentum, centered) / Adam(W) / AMSGrad.

Bytes per parameter and step (fp32), the floor the timings are measured against:
  SGD 12 (read p, g; write p); momentum, Nesterov, Adagrad, RMSprop 20; RMSprop with momentum or
  centered 28, both 36; Adam/AdamW 28; AMSGrad 36. A norm pass (clip or check_finite) reads the
  grads once more: +4, e.g. AdamW with clipping 32 (torch's clip then step: 40).

Launch shape (cuda/launch.cuh: 256 threads per 16384-element chunk, <= 256 tensors per launch):
  1. norm pass, only with clip or check_finite: chunk blocks over all grads, each writing its sum
     of squares and a non-finite flag to its own slot; one 1024-thread block folds the slots in
     a fixed order into norm, skip flag and clip coefficient, all left in device memory.
  2. update: per parameter group (one Hyper, hence one update rule, per launch), chunk blocks over
     that group's tensors. Thread 0 reads skip/coef/steps[i] and derives the StepScalars once per block (two double
     pows for Adam), broadcast through shared memory.
  3. steps[i] += 1 for every tensor unless skipped, in its own kernel: all blocks of a tensor read
     steps[i] during step 2, so no block of step 2 may write it.
*/
#include "fastopt/backend.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using namespace detail;

__global__ void __launch_bounds__(kThreads)
grad_norm_partials(const __grid_constant__ TensorList<1> list, float* partial, int32_t* flag) {
  norm_partials<NormKind::L2, true>(list, 0.0f, partial, flag);
}

// coef is computed in float as torch's clip_grad_norm_ does (a NaN norm gives a NaN coefficient).
__global__ void __launch_bounds__(kFinalThreads)
grad_norm_finalize(const float* partial, const int32_t* flag, int64_t count, bool clip, float max_norm,
                   bool check_finite, float* norm_out, int32_t* skipped_out, float* coef, int32_t* skip) {
  int bad = 0;
  for (int64_t i = threadIdx.x; i < count; i += kFinalThreads) bad |= flag[i];
  bad = __syncthreads_or(bad);
  const float sum = fold_partials<NormKind::L2, kFinalThreads>(partial, count);
  if (threadIdx.x == 0) {
    const float norm = sqrtf(sum);
    const int32_t skipped = check_finite && bad ? 1 : 0;
    *coef = clip ? clip_coefficient(max_norm, norm) : 1.0f;
    *skip = skipped;
    if (norm_out != nullptr) *norm_out = norm;
    if (skipped_out != nullptr) *skipped_out = skipped;
  }
}

// The state slot I of an element, or a dummy for kinds with fewer states (update() ignores it).
template <int I, int N>
__device__ __forceinline__ float& state_slot(float (&x)[N], float& dummy) {
  if constexpr (I < N) return x[I];
  else return dummy;
}

// x[0] param, x[1] grad (never stored), x[2..] states in num_states(K) order.
template <OptKind K>
__global__ void __launch_bounds__(kThreads)
step_kernel(const __grid_constant__ TensorList<2 + num_states(K)> list, const __grid_constant__ Hyper hyper,
            const int64_t* steps, const float* coef, const int32_t* skip) {
  constexpr int N = 2 + num_states(K);
  constexpr unsigned kStore = ((1u << N) - 1u) & ~2u;
  __shared__ StepScalars shared_scalars;
  __shared__ float shared_scale;
  if (skip != nullptr && *skip != 0) return;
  const Chunk c = locate(list);
  if (threadIdx.x == 0) {
    shared_scalars = prepare_step(hyper, K, steps[list.index[c.t]] + 1);
    shared_scale = (coef != nullptr ? *coef : 1.0f) * shared_scalars.sign;
  }
  __syncthreads();
  const StepScalars s = shared_scalars;
  const float scale = shared_scale;
  float* ptr[N];
#pragma unroll
  for (int a = 0; a < N; ++a) ptr[a] = list.ptr[a][c.t];
  float dummy = 0.0f;
  chunk_apply<N, kStore>(ptr, c.begin, c.end, [&](float (&x)[N]) {
    update<K>(s, x[1] * scale, x[0], state_slot<2>(x, dummy), state_slot<3>(x, dummy), state_slot<4>(x, dummy));
  });
}

__global__ void __launch_bounds__(kThreads) count_step(int64_t* steps, int64_t n, const int32_t* skip) {
  if (skip != nullptr && *skip != 0) return;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) steps[i] += 1;
}

}  // namespace

void optim_step(const StepRequest& req, float* norm_out, int32_t* skipped_out, void* stream_handle) {
  const cudaStream_t stream = as_stream(stream_handle);
  const bool norm_pass = req.clip || req.check_finite;

  // Scratch: [coef float][skip int32][pad to 16][partial float x B][flag int32 x B].
  int64_t total_blocks = 0;
  if (norm_pass) {
    for (int64_t i = 0; i < req.num_tensors; ++i) total_blocks += num_blocks(req.tensors[i].numel);
  }
  Scratch scratch(norm_pass ? 16 + 8 * static_cast<size_t>(total_blocks) : 0, stream);
  float* coef = nullptr;
  int32_t* skip = nullptr;
  if (norm_pass) {
    float* partial = reinterpret_cast<float*>(scratch.bytes() + 16);
    int32_t* flag = reinterpret_cast<int32_t*>(scratch.bytes() + 16 + 4 * total_blocks);
    for_each_batch<1>(
        req.num_tensors,
        [&](int64_t i, float* (&ptrs)[1]) {
          ptrs[0] = static_cast<float*>(const_cast<void*>(req.tensors[i].grad));
          return req.tensors[i].numel;
        },
        [&](const TensorList<1>& list, int grid) {
          grad_norm_partials<<<grid, kThreads, 0, stream>>>(list, partial, flag);
          check(cudaGetLastError(), "optim_step (norm pass)");
        });
    coef = reinterpret_cast<float*>(scratch.bytes());
    skip = reinterpret_cast<int32_t*>(scratch.bytes() + 4);
    grad_norm_finalize<<<1, kFinalThreads, 0, stream>>>(partial, flag, total_blocks, req.clip,
                                                        static_cast<float>(req.max_norm), req.check_finite,
                                                        norm_out, skipped_out, coef, skip);
    check(cudaGetLastError(), "optim_step (norm finalize)");
  }
  const float* update_coef = req.clip ? coef : nullptr;
  const int32_t* update_skip = req.check_finite ? skip : nullptr;

  for (int32_t g = 0; g < req.num_groups; ++g) {
    const Hyper& hyper = req.groups[g];
    dispatch_kind(hyper.kind, [&](auto tag) {
      constexpr OptKind K = decltype(tag)::value;
      constexpr int N = 2 + num_states(K);
      for_each_batch<N>(
          req.num_tensors,
          [&](int64_t i, float* (&ptrs)[N]) -> int64_t {
            const TensorRef& t = req.tensors[i];
            if (t.group != g) return 0;
            ptrs[0] = static_cast<float*>(t.param);  // fp32: the bindings refuse bf16/f16 on the GPU
            ptrs[1] = static_cast<float*>(const_cast<void*>(t.grad));
            for (int a = 0; a < num_states(K); ++a) ptrs[2 + a] = t.state[a];
            return t.numel;
          },
          [&](const TensorList<N>& list, int grid) {
            step_kernel<K><<<grid, kThreads, 0, stream>>>(list, hyper, req.steps, update_coef, update_skip);
            check(cudaGetLastError(), "optim_step (update)");
          });
    });
  }

  if (req.num_tensors > 0) {
    const int64_t grid = (req.num_tensors + kThreads - 1) / kThreads;
    count_step<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(req.steps, req.num_tensors, update_skip);
    check(cudaGetLastError(), "optim_step (step count)");
  }
}

}  // namespace fastopt::cuda

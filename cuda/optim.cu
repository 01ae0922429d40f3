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
     a fixed order into norm, skip flag and clip coefficient, all left in device memory. With
     GradScaler's device scalars (grad_scale, found_inf) that block also folds 1/scale into the
     coefficient and found_inf into the skip flag (alone, without a norm pass, if neither is on).
  2. update: per parameter group (one Hyper, hence one update rule, per launch), chunk blocks over
     that group's tensors. Thread 0 reads skip/coef/steps[i] and derives the StepScalars once per block (two double
     pows for Adam), broadcast through shared memory.
  3. steps[i] += 1 for every tensor unless skipped, in its own kernel: all blocks of a tensor read
     steps[i] during step 2, so no block of step 2 may write it.

bf16 parameters (and grads), the CPU's contract (cpp/cpu/optim.cpp, optim_rules.h update_stored):
the rule runs in fp32 on the fp32 master (Rounding::master: master and state read and written in
fp32, the bf16 param only written, rounded to nearest even, in the same pass), or on the upcast
param rounded back to nearest or stochastically with the element's Philox word (counter: i / 4,
the tensor's index, t; key: the group's seed), so the master follows the fp32 optimizer fed the
upcast gradients bit for bit. Their launches are separate from the fp32 ones (one per rounding);
a thread takes 4 consecutive elements (one Philox block, one 8-byte bf16 access per array when
aligned). The norm pass reads bf16 gradients through their own chunk blocks, into the same
partial slots after the fp32 ones. TensorList carries every array as float*: bf16 pointers are
cast back in the bf16 kernels.
*/
#include "fastopt/backend.h"
#include "fastopt/philox.h"
#include "launch.cuh"
#include "pack.cuh"

namespace fastopt::cuda {
namespace {

using namespace detail;

__global__ void __launch_bounds__(kThreads)
grad_norm_partials(const __grid_constant__ TensorList<1> list, float* partial, int32_t* flag) {
  norm_partials<NormKind::L2, true>(list, 0.0f, partial, flag);
}

// The same partials over bf16 gradients, each thread summing its quads in chunk_apply's order,
// so that the norm of bf16 gradients is the fp32 pass's on their upcast values, bit for bit.
__global__ void __launch_bounds__(kThreads)
grad_norm_partials_bf16(const __grid_constant__ TensorList<1> list, float* partial, int32_t* flag) {
  const Chunk c = locate(list);
  const bf16* g = reinterpret_cast<const bf16*>(list.ptr[0][c.t]);
  float acc = 0.0f;
  bool bad = false;
  for (int64_t i0 = c.begin + 4 * static_cast<int64_t>(threadIdx.x); i0 < c.end; i0 += 4 * kThreads)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (i0 + e < c.end) {
        const float v = to_float(g[i0 + e]);
        acc += v * v;
        bad = bad || !isfinite(v);
      }
  acc = block_fold<NormKind::L2, kThreads>(acc);
  const int64_t slot = list.first_block + blockIdx.x;
  const int any = __syncthreads_or(bad);
  if (threadIdx.x == 0) {
    flag[slot] = any;
    partial[slot] = acc;
  }
}

// coef is computed in float as torch's clip_grad_norm_ does (a NaN norm gives a NaN coefficient).
// GradScaler's fused path folds in here too: the norm is that of the unscaled gradients, the
// update multiplier carries 1 / grad_scale (exact for GradScaler's power-of-two scales, as on the
// CPU), and found_inf skips the step. count is 0 when only the AMP scalars are wanted.
__global__ void __launch_bounds__(kFinalThreads)
grad_norm_finalize(const float* partial, const int32_t* flag, int64_t count, bool clip, float max_norm,
                   bool check_finite, const float* grad_scale, const float* found_inf, float* norm_out,
                   int32_t* skipped_out, float* coef, int32_t* skip) {
  int bad = 0;
  for (int64_t i = threadIdx.x; i < count; i += kFinalThreads) bad |= flag[i];
  bad = __syncthreads_or(bad);
  const float sum = fold_partials<NormKind::L2, kFinalThreads>(partial, count);
  if (threadIdx.x == 0) {
    const float inv = grad_scale != nullptr ? 1.0f / *grad_scale : 1.0f;
    const float norm = sqrtf(sum) * inv;
    const int32_t skipped = (check_finite && bad) || (found_inf != nullptr && *found_inf != 0.0f) ? 1 : 0;
    *coef = (clip ? clip_coefficient(max_norm, norm) : 1.0f) * inv;
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

// 4 values of T at p + i0 (those below end), as floats; one access when vec and the quad is whole.
template <class T>
__device__ __forceinline__ void load4(const T* p, int64_t i0, int64_t end, bool vec, float (&x)[4]) {
  if (vec && i0 + 4 <= end) return detail::load_pack(p + i0, x);
#pragma unroll
  for (int e = 0; e < 4; ++e) x[e] = i0 + e < end ? to_float(p[i0 + e]) : 0.0f;
}

template <class T>
__device__ __forceinline__ void store4(T* p, int64_t i0, int64_t end, bool vec, const T (&x)[4]) {
  if (vec && i0 + 4 <= end) {
    *reinterpret_cast<detail::Pack<T, 4>*>(p + i0) = detail::Pack<T, 4>{{x[0], x[1], x[2], x[3]}};
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e)
    if (i0 + e < end) p[i0 + e] = x[e];
}

// bf16 params: x[0] param, x[1] grad (both bf16), x[2] the fp32 master (R == master, else
// unused), x[3..] the fp32 states.
template <OptKind K, Rounding R>
__global__ void __launch_bounds__(kThreads)
step_bf16_kernel(const __grid_constant__ TensorList<3 + num_states(K)> list, const __grid_constant__ Hyper hyper,
                 const int64_t* steps, const float* coef, const int32_t* skip) {
  constexpr int NS = num_states(K);
  __shared__ StepScalars shared_scalars;
  __shared__ float shared_scale;
  __shared__ int64_t shared_t;
  if (skip != nullptr && *skip != 0) return;
  const Chunk c = locate(list);
  const int64_t tensor = list.index[c.t];
  if (threadIdx.x == 0) {
    shared_t = steps[tensor] + 1;
    shared_scalars = prepare_step(hyper, K, shared_t);
    shared_scale = (coef != nullptr ? *coef : 1.0f) * shared_scalars.sign;
  }
  __syncthreads();
  const StepScalars s = shared_scalars;
  const float scale = shared_scale;
  const uint32_t t = static_cast<uint32_t>(shared_t);
  bf16* p = reinterpret_cast<bf16*>(list.ptr[0][c.t]);
  const bf16* g = reinterpret_cast<const bf16*>(list.ptr[1][c.t]);
  float* m = list.ptr[2][c.t];
  float* st[3] = {nullptr, nullptr, nullptr};
#pragma unroll
  for (int a = 0; a < NS; ++a) st[a] = list.ptr[3 + a][c.t];
  bool vec = detail::pack_aligned<bf16, 4>(p) && detail::pack_aligned<bf16, 4>(g) &&
             (R != Rounding::master || detail::pack_aligned<float, 4>(m));
#pragma unroll
  for (int a = 0; a < NS; ++a) vec = vec && detail::pack_aligned<float, 4>(st[a]);
  // c.begin is a multiple of kChunk, so i0 is a multiple of 4: the quad is one Philox block.
  for (int64_t i0 = c.begin + 4 * static_cast<int64_t>(threadIdx.x); i0 < c.end; i0 += 4 * kThreads) {
    float gv[4], mv[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sv[3][4] = {};
    bf16 pv[4];
    load4(g, i0, c.end, vec, gv);
    if constexpr (R == Rounding::master) load4(m, i0, c.end, vec, mv);
#pragma unroll
    for (int a = 0; a < NS; ++a) load4(st[a], i0, c.end, vec, sv[a]);
#pragma unroll
    for (int e = 0; e < 4; ++e) pv[e] = i0 + e < c.end ? p[i0 + e] : bf16{0};
    Philox4 words{};
    if constexpr (R == Rounding::stochastic) {
      const uint64_t j = static_cast<uint64_t>(i0) >> 2;
      words = philox4x32_10(static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32), static_cast<uint32_t>(tensor), t,
                            static_cast<uint32_t>(hyper.seed), static_cast<uint32_t>(hyper.seed >> 32));
    }
#pragma unroll
    for (int e = 0; e < 4; ++e)
      update_stored<K, R, true>(s, gv[e] * scale, pv[e], mv[e], sv[0][e], sv[1][e], sv[2][e], words.v[e]);
    store4(p, i0, c.end, vec, pv);
    if constexpr (R == Rounding::master) store4(m, i0, c.end, vec, mv);
#pragma unroll
    for (int a = 0; a < NS; ++a) store4(st[a], i0, c.end, vec, sv[a]);
  }
}

__global__ void __launch_bounds__(kThreads) count_step(int64_t* steps, int64_t n, const int32_t* skip) {
  if (skip != nullptr && *skip != 0) return;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) steps[i] += 1;
}

// Group g's bf16 tensors that store by rounding R (the bindings give the GPU no float16).
template <OptKind K, Rounding R>
void step_bf16(const StepRequest& req, int32_t g, const float* coef, const int32_t* skip, cudaStream_t stream) {
  constexpr int N = 3 + num_states(K);
  for_each_batch<N>(
      req.num_tensors,
      [&](int64_t i, float* (&ptrs)[N]) -> int64_t {
        const TensorRef& t = req.tensors[i];
        if (t.group != g || t.type != Storage::bf16 || t.rounding != R) return 0;
        ptrs[0] = static_cast<float*>(t.param);
        ptrs[1] = static_cast<float*>(const_cast<void*>(t.grad));
        ptrs[2] = t.master;
        for (int a = 0; a < num_states(K); ++a) ptrs[3 + a] = static_cast<float*>(t.state[a]);
        return t.numel;
      },
      [&](const TensorList<N>& list, int grid) {
        step_bf16_kernel<K, R><<<grid, kThreads, 0, stream>>>(list, req.groups[g], req.steps, coef, skip);
        check(cudaGetLastError(), "optim_step (bf16 update)");
      });
}

}  // namespace

void optim_step(const StepRequest& req, float* norm_out, int32_t* skipped_out, void* stream_handle) {
  const cudaStream_t stream = as_stream(stream_handle);
  const bool norm_pass = req.clip || req.check_finite;
  const bool amp = req.grad_scale != nullptr || req.found_inf != nullptr;

  // Scratch: [coef float][skip int32][pad to 16][partial float x B][flag int32 x B].
  int64_t total_blocks = 0;
  if (norm_pass) {
    for (int64_t i = 0; i < req.num_tensors; ++i) total_blocks += num_blocks(req.tensors[i].numel);
  }
  Scratch scratch(norm_pass || amp ? 16 + 8 * static_cast<size_t>(total_blocks) : 0, stream);
  float* coef = nullptr;
  int32_t* skip = nullptr;
  if (norm_pass || amp) {
    float* partial = reinterpret_cast<float*>(scratch.bytes() + 16);
    int32_t* flag = reinterpret_cast<int32_t*>(scratch.bytes() + 16 + 4 * total_blocks);
    int64_t base = 0;  // partial slots taken by the fp32 pass
    for (const Storage type : {Storage::f32, Storage::bf16}) {
      if (!norm_pass) break;  // the AMP scalars alone
      int64_t blocks = 0;
      for_each_batch<1>(
          req.num_tensors,
          [&](int64_t i, float* (&ptrs)[1]) -> int64_t {
            if (req.tensors[i].type != type) return 0;
            ptrs[0] = static_cast<float*>(const_cast<void*>(req.tensors[i].grad));
            blocks += num_blocks(req.tensors[i].numel);
            return req.tensors[i].numel;
          },
          [&](const TensorList<1>& list, int grid) {
            float* part = partial + base;
            int32_t* bad = flag + base;
            if (type == Storage::f32) grad_norm_partials<<<grid, kThreads, 0, stream>>>(list, part, bad);
            else grad_norm_partials_bf16<<<grid, kThreads, 0, stream>>>(list, part, bad);
            check(cudaGetLastError(), "optim_step (norm pass)");
          });
      base += blocks;
    }
    coef = reinterpret_cast<float*>(scratch.bytes());
    skip = reinterpret_cast<int32_t*>(scratch.bytes() + 4);
    grad_norm_finalize<<<1, kFinalThreads, 0, stream>>>(partial, flag, total_blocks, req.clip,
                                                        static_cast<float>(req.max_norm), req.check_finite,
                                                        req.grad_scale, req.found_inf, norm_out, skipped_out, coef,
                                                        skip);
    check(cudaGetLastError(), "optim_step (norm finalize)");
  }
  const float* update_coef = req.clip || amp ? coef : nullptr;
  const int32_t* update_skip = req.check_finite || amp ? skip : nullptr;

  for (int32_t g = 0; g < req.num_groups; ++g) {
    const Hyper& hyper = req.groups[g];
    dispatch_kind(hyper.kind, [&](auto tag) {
      constexpr OptKind K = decltype(tag)::value;
      constexpr int N = 2 + num_states(K);
      for_each_batch<N>(
          req.num_tensors,
          [&](int64_t i, float* (&ptrs)[N]) -> int64_t {
            const TensorRef& t = req.tensors[i];
            if (t.group != g || t.type != Storage::f32) return 0;
            ptrs[0] = static_cast<float*>(t.param);
            ptrs[1] = static_cast<float*>(const_cast<void*>(t.grad));
            for (int a = 0; a < num_states(K); ++a) ptrs[2 + a] = static_cast<float*>(t.state[a]);
            return t.numel;
          },
          [&](const TensorList<N>& list, int grid) {
            step_kernel<K><<<grid, kThreads, 0, stream>>>(list, hyper, req.steps, update_coef, update_skip);
            check(cudaGetLastError(), "optim_step (update)");
          });
      step_bf16<K, Rounding::master>(req, g, update_coef, update_skip, stream);
      step_bf16<K, Rounding::nearest>(req, g, update_coef, update_skip, stream);
      step_bf16<K, Rounding::stochastic>(req, g, update_coef, update_skip, stream);
    });
  }

  if (req.num_tensors > 0) {
    const int64_t grid = (req.num_tensors + kThreads - 1) / kThreads;
    count_step<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(req.steps, req.num_tensors, update_skip);
    check(cudaGetLastError(), "optim_step (step count)");
  }
}

}  // namespace fastopt::cuda

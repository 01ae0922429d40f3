// The optimizer-step and gradient-clipping interface between the Python bindings and the two
// backends (cpp/cpu, cuda/); the CUDA runtime calls are fastopt/device.h. Bindings validate every
// argument before calling in here; backends trust what they are given.
#pragma once
#include <cstdint>
#include <string>

#include "fastopt/bf16.h"
#include "fastopt/common.h"
#include "fastopt/optim_rules.h"

namespace fastopt {

// One parameter tensor in an optimizer step: all pointers address `numel` elements on the same
// device, none aliases another. param and grad hold `type` (fp32, bf16 or f16; the GPU takes
// fp32 and bf16); state and master are fp32.
struct TensorRef {
  void* param;
  const void* grad;
  void* state[3];  // num_states(groups[group].kind) of them are used, each of state_type
  float* master;    // the fp32 master copy of a bf16/f16 param (Rounding::master), else null
  int64_t numel;
  int32_t group;    // index into StepRequest::groups
  Storage type;
  Rounding rounding;                // how the new value is stored (optim_rules.h); nearest for fp32
  Storage state_type = Storage::f32;  // bf16: the CPU step rounds each state stochastically (optim_rules.h)
};

// A read-only buffer of `numel` elements of `type`, host memory.
struct TypedSpan {
  const void* data;
  int64_t numel;
  Storage type;
};

// The update rule is per group (Hyper::kind), so one call steps every group of an optimizer
// and the clipping norm is global over all of them.
struct StepRequest {
  const Hyper* groups;
  int32_t num_groups;
  const TensorRef* tensors;
  int64_t num_tensors;
  int64_t* steps;       // per tensor, same device as the tensors; incremented unless skipped
  bool clip;            // scale gradients by min(1, max_norm / (||g||_2 + 1e-6))
  double max_norm;
  bool check_finite;    // skip the whole step (nothing written) if any gradient is NaN/Inf
  float inv_scale = 1.0f;  // CPU: gradients are g * inv_scale (GradScaler's unscale, fused; the norm too)
  // GPU, GradScaler's fused path without a host sync: 0-d fp32 device scalars or null. Gradients
  // are g / *grad_scale (the norm too); a nonzero *found_inf skips the step like check_finite.
  const float* grad_scale = nullptr;
  const float* found_inf = nullptr;
};

namespace cpu {

struct StepOutcome {
  bool has_norm;  // a norm pass ran (clip or check_finite)
  double norm;    // global L2 norm of the gradients before clipping
  bool skipped;
};

StepOutcome optim_step(const StepRequest& req);
double grad_norm(const Span* grads, int64_t n, double p);   // sum over all tensors
void scale(const Span* grads, int64_t n, float coef);
// grads *= min(1, max_norm / (norm + 1e-6)) (clip_coefficient, common.h).
void clip_scale(const Span* grads, int64_t n, double norm, double max_norm);
void clamp(const Span* grads, int64_t n, float lo, float hi);

std::string isa();    // the instruction set the kernels were dispatched to
std::string amx();    // whether the bf16 GEMMs run on AMX tiles, and why (cpu/isa.h)
int num_threads();

}  // namespace cpu

namespace cuda {

// The fused multi-tensor step. All pointers are device memory. norm_out (float) and
// skipped_out (int32) receive the pre-clip L2 norm and the skip flag when a norm pass runs
// (req.clip or req.check_finite); they may be null otherwise. Never waits for the host.
void optim_step(const StepRequest& req, float* norm_out, int32_t* skipped_out, void* stream);

// Standalone reductions and in-place updates over a list of device tensors.
void grad_norm(const Span* grads, int64_t n, double p, float* norm_out, void* stream);
// grads *= min(1, max_norm / (norm + 1e-6)), reading norm from device memory.
void clip_scale(const Span* grads, int64_t n, const float* norm, double max_norm, void* stream);
void clamp(const Span* grads, int64_t n, float lo, float hi, void* stream);

}  // namespace cuda
}  // namespace fastopt

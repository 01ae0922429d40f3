/*
Conv2d on CUDA, NCHW float32: forward, data-grad, weight-grad and bias-grad.

Math (fastopt/conv2d.h): y[n,k,p,q] = b[k] + sum_{c in group(k), r, s} x[n,c,p sh-ph+r dh, q sw-pw+s dw] w[k,c',r,s];
the two gradients are the adjoints; cuda/conv2d_tiles.cuh writes all three as implicit GEMMs.

Work each pass must do: 2 N K (C/groups) R S P Q flops (forward, data-grad, weight-grad alike);
bytes at least 4 (|x| + |w| + |y|). The 3x3 layers are compute-bound (e.g. N=128, C=K=64, 56x56:
29.6 GFLOP vs 206 MB); depthwise (groups = C) is bandwidth-bound: 4 (|x| + |y|) bytes for forward
and data-grad.

Paths, chosen per call by shape (forward_path & co. in conv2d_tiles.cuh):
  Winograd             (opt-in: FASTOPT_CUDA_CONV2D_WINOGRAD=1) 3x3, unit stride and dilation, >= 32
                       channels per group, fp32: cuda/opt_in/conv2d_winograd.cu, all three passes.
  tiled implicit GEMM  (stage 2) 256 threads, a BM x BN tile per block: 128x128, 64x128 for
                       M <= 64, or 64x64 when the grid would not fill the SMs (gemm_tiles);
                       weight-grad 128x64 or 64x64, split so that the grid fills whole waves. 8-deep
                       k steps double-buffered through shared memory, the next step's global loads
                       in flight during the FMAs; grid (N tiles, M tiles, groups x splits). 1x1
                       stride-1 unpadded convs take the plain-GEMM variant (no im2col index math).
                       Weight-grad splits the (n,p,q) reduction: each split stores its own
                       dw-shaped partial in stream-ordered scratch, then one thread per dw element
                       sums the splits in order.
  depthwise direct     groups = C (Cg = 1): a block per plane and band of rows, grid (planes,
                       bands): the band's input rows (halo included) staged in shared memory with
                       coalesced loads (opt-in: FASTOPT_CUDA_CONV2D_DW_LOADS=1, 8 in flight per
                       thread), then one thread per output; x (or dy) read once from DRAM.
                       Weight-grad: one block per dw element, int32 plane-wise sums, a fixed tree;
                       or (opt-in: FASTOPT_CUDA_CONV2D_DW_TAPS=1) for 3x3, 5x5 and 7x7, a block per
                       filter and chunk of images summing all taps at once from the forward's
                       tiles (x and dy read once, not R S times), the chunks then summed in order.
  few channels         data-grad with Cg < 16 (the GEMM's M), e.g. the C = 3 stem: cuda/conv2d_small_c.cu,
                       pixels grouped by stride phase, one thread per pixel (or, opt-in with
                       FASTOPT_CUDA_CONV2D_STRIPS=1, per strip of 8 rows) for all its Cg channels.
  gather               (stage 1) one thread per output element (grid-stride, int64 indices), or
                       for weight- and bias-grad one 256-thread block per output element; the
                       reference path on the GPU and the fallback for what the others do not
                       take (extents past int32, tiny GEMMs, grids past
                       CUDA's y/z limits). FASTOPT_CUDA_CONV2D_GATHER=1 forces it, to cross-check the
                       fast paths on a GPU.
  TF32 (stage 3)       allow_tf32 runs the implicit-GEMM tiles through mma.sync.m16n8k8 tensor
                       cores (inputs rounded to TF32, float32 accumulation); the depthwise and
                       gather paths, which do not do GEMM math, stay exact float32.
  bf16                 x, w, b, dy in bf16 (y and dx rounded to bf16 once, dw and db fp32, as on the
                       CPU): the implicit-GEMM passes run the same problems on the engine's bf16
                       stage (gemm_bf16.cuh: bf16 tiles, mma.sync.m16n8k16, fp32 accumulators;
                       allow_tf32 has no effect); bias-grad reads bf16 directly. The passes that
                       are not GEMMs (depthwise, few channels, gathers) widen their bf16 inputs
                       to fp32 scratch, run the fp32 kernel and round the output once: exact fp32
                       math at 2x+ their fp32 bytes, until they are templated on the storage type.
Every output is written exactly once, every sum runs in a fixed order (no atomics): results are
bitwise reproducible run to run.
*/
#include <algorithm>
#include <type_traits>

#include "conv2d_small_c.h"
#include "conv2d_tiles.cuh"
#include "opt_in/conv2d_winograd.h"
#include "fastopt/backend.h"
#include "fastopt/conv2d.h"
#include "launch.cuh"

namespace fastopt::cuda {
namespace {

using detail::as_stream;
using detail::check;
using detail::grid_stride_grid;
using detail::kMaxGridX;
using detail::sm_count;
using namespace conv;

// ------------------------------------------------------------------ kernels

// Tiles past 64x64: at most 128 registers, so that two blocks (16 warps) share an SM; 64x64: at
// most 85, three blocks.
template <class Prob, int BM, int BN, Math kMath>
__global__ void __launch_bounds__(kThreads, BM == 128 || BN == 128 ? 2 : 3) gemm_kernel(const Prob pb) {
  using T = TileFor<BM, BN, kMath>;
  __shared__ T tiles[2];
  const int tid = static_cast<int>(threadIdx.x);
  const int split = static_cast<int>(blockIdx.z) % pb.splits;
  const int g = static_cast<int>(blockIdx.z) / pb.splits;
  const int m0 = static_cast<int>(blockIdx.y) * BM;
  const int n0 = static_cast<int>(blockIdx.x) * BN;
  int k_begin, k_end;
  split_range(pb.Kd, pb.splits, split, k_begin, k_end, T::BK);
  float acc[T::TM][T::TN];
  gemm_mainloop<Prob, BM, BN, kMath>(pb, g, tid, m0, n0, k_begin, k_end, tiles, acc);
  store_tile<Prob, BM, BN, kMath>(pb, g, split, tid, m0, n0, acc);
}

// dst[i] = src[i] converted (bf16 to fp32: exact; fp32 to bf16: rounded once).
template <class From, class To>
__global__ void __launch_bounds__(kThreads) convert_kernel(const From* src, To* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n; i += int64_t{gridDim.x} * kThreads)
    dst[i] = from_float<To>(to_float(src[i]));
}

// Every weight-grad kernel's final store goes through store_grad: with accumulate it adds into dw.
__global__ void __launch_bounds__(kThreads) split_sum_kernel(const float* part, int64_t numel, int splits,
                                                             float* dw, bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < numel; i += int64_t{gridDim.x} * kThreads)
    store_grad(dw + i, split_sum_at(part, numel, splits, i), accumulate);
}

__global__ void __launch_bounds__(kThreads) forward_gather(const Dims d, const float* x, const float* w,
                                                           const float* b, float* y, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads)
    y[i] = forward_at(d, x, w, b, i);
}

__global__ void __launch_bounds__(kThreads) backward_data_gather(const Dims d, const float* dy, const float* w,
                                                                 float* dx, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads)
    dx[i] = backward_data_at(d, dy, w, i);
}

// Sum of v over the block in a fixed shuffle tree, valid in thread 0. Every thread must call it;
// it leaves `warp_sums` free for the next call.
__device__ __forceinline__ float block_sum(float v, float* warp_sums) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  v = 0.0f;
  if (threadIdx.x < 32) {
    if (threadIdx.x < kThreads / 32) v = warp_sums[threadIdx.x];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  __syncthreads();
  return v;
}

// One block per dw element (block-stride over elements).
__global__ void __launch_bounds__(kThreads) backward_weight_gather(const Dims d, const float* dy, const float* x,
                                                                   float* dw, int64_t total, bool accumulate) {
  __shared__ float warp_sums[kThreads / 32];
  for (int64_t e = blockIdx.x; e < total; e += gridDim.x) {
    const float v = block_sum(backward_weight_part(d, dy, x, e, threadIdx.x, kThreads), warp_sums);
    if (threadIdx.x == 0) store_grad(dw + e, v, accumulate);
  }
}

// One block per dw element (k, 0, r, s), Cg = 1; grid K R S.
__global__ void __launch_bounds__(kThreads) depthwise_backward_weight(const Dims32 d, const float* dy, const float* x,
                                                                      float* dw, bool accumulate) {
  __shared__ float warp_sums[kThreads / 32];
  const int e = static_cast<int>(blockIdx.x);
  const int k = e / d.RS, rs = e - k * d.RS;
  const float v = block_sum(depthwise_backward_weight_part(d, dy, x, k, rs, threadIdx.x, kThreads), warp_sums);
  if (threadIdx.x == 0) store_grad(dw + e, v, accumulate);
}

// Depthwise taps kernel: grid (K, image chunks); block (k, chunk) writes part[chunk][k][r][s], the
// sum over its images ascending, each output's taps in a fixed order, then the warps in order
// (part = dw when there is one chunk, which adds into dw with accumulate).
template <int KR, int KS>
__global__ void __launch_bounds__(kThreads) depthwise_backward_weight_taps(const Dims32 d, const DwPlan pl,
                                                                           const float* dy, const float* x,
                                                                           int per_chunk, float* part,
                                                                           bool accumulate) {
  constexpr int RS = KR * KS;
  __shared__ float tile[kDwTileFloats];
  __shared__ float warp_sums[kThreads / 32][RS];
  const int k = static_cast<int>(blockIdx.x), chunk = static_cast<int>(blockIdx.y), t = static_cast<int>(threadIdx.x);
  const int n0 = chunk * per_chunk, n1 = min(d.N, n0 + per_chunk), bands = (d.P + pl.band - 1) / pl.band;
  float acc[RS];
#pragma unroll
  for (int i = 0; i < RS; ++i) acc[i] = 0.0f;
  for (int n = n0; n < n1; ++n) {
    for (int band = 0; band < bands; ++band) {
      __syncthreads();  // the last band's tile is read
      dw_forward_load<kDwLoadBatch>(d, pl, x, n * d.K + k, band, tile, t, kThreads);
      __syncthreads();
      dw_weight_grad_accumulate<KR, KS>(d, pl, tile, dy, n * d.K + k, band, acc, t, kThreads);
    }
  }
#pragma unroll
  for (int i = 0; i < RS; ++i) {
    float v = acc[i];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    if (t % 32 == 0) warp_sums[t / 32][i] = v;
  }
  __syncthreads();
  if (t < RS) {
    float v = 0.0f;
#pragma unroll
    for (int wp = 0; wp < kThreads / 32; ++wp) v += warp_sums[wp][t];
    store_grad(part + (int64_t(chunk) * d.K + k) * RS + t, v, accumulate);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) backward_bias_kernel(const Dims d, const T* dy, float* db,
                                                                 bool accumulate) {
  __shared__ float warp_sums[kThreads / 32];
  for (int64_t k = blockIdx.x; k < d.K; k += gridDim.x) {
    const float v = block_sum(backward_bias_part(d, dy, k, threadIdx.x, kThreads), warp_sums);
    if (threadIdx.x == 0) store_grad(db + k, v, accumulate);
  }
}

// Depthwise (Cg = 1): grid (planes, bands); see conv2d_depthwise.cuh. KR x KS:
// the kernel size when fixed at compile time (3 x 3), else 0 x 0; U: the tile loads' batch.
template <int KR, int KS, int U>
__global__ void __launch_bounds__(kThreads) depthwise_forward(const Dims32 d, const DwPlan pl, const float* x,
                                                              const float* w, const float* b, float* y) {
  __shared__ float tile[kDwTileFloats];
  const int plane = static_cast<int>(blockIdx.x), band = static_cast<int>(blockIdx.y), t = static_cast<int>(threadIdx.x);
  dw_forward_load<U>(d, pl, x, plane, band, tile, t, kThreads);
  __syncthreads();
  dw_forward_compute<KR, KS>(d, pl, tile, w, b, y, plane, band, t, kThreads);
}

template <int KR, int KS, bool kUnitStride, int U>
__global__ void __launch_bounds__(kThreads) depthwise_backward_data(const Dims32 d, const DwPlan pl, const float* dy,
                                                                    const float* w, float* dx) {
  __shared__ float tile[kDwTileFloats];
  const int plane = static_cast<int>(blockIdx.x), band = static_cast<int>(blockIdx.y), t = static_cast<int>(threadIdx.x);
  for (int kl = 0; kl < d.Kg; ++kl) {
    if (kl > 0) __syncthreads();  // the last plane's tile is read
    dw_backward_data_load<U>(d, pl, dy, plane, band, kl, tile, t, kThreads);
    __syncthreads();
    dw_backward_data_compute<KR, KS, kUnitStride>(d, pl, tile, w, dx, plane, band, kl, t, kThreads);
  }
}

// ------------------------------------------------------------------ host side

bool force_gather() {
  static const bool forced = switch_on(switches::cuda_conv2d_gather);
  return forced;
}

// What a problem's tiles run: bf16 problems the bf16 stage, fp32 ones FMAs or (allow_tf32) TF32.
template <class Prob, class F>
void with_math(bool tf32, F&& f) {
  if constexpr (std::is_same_v<typename Prob::Elem, bf16>)
    f(std::integral_constant<Math, Math::kBf16>{});
  else if (tf32)
    f(std::integral_constant<Math, Math::kTf32>{});
  else
    f(std::integral_constant<Math, Math::kFma>{});
}

// Blocks of gemm_kernel<Prob, BM, BN, ...> resident on all SMs at once: one wave of the grid.
template <class Prob, int BM, int BN>
int64_t gemm_wave(bool tf32) {
  int per_sm = 0;
  with_math<Prob>(tf32, [&](auto math) {
    constexpr Math m = decltype(math)::value;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemm_kernel<Prob, BM, BN, m>, kThreads, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  });
  return int64_t{std::max(per_sm, 1)} * sm_count();
}

template <class Prob, int BM, int BN>
void launch_gemm(const Prob& pb, int64_t z, bool tf32, cudaStream_t st, const char* what) {
  const dim3 grid(static_cast<unsigned>(ceil_div(pb.N, BN)), static_cast<unsigned>(ceil_div(pb.M, BM)),
                  static_cast<unsigned>(z));
  with_math<Prob>(tf32, [&](auto math) {
    constexpr Math m = decltype(math)::value;
    gemm_kernel<Prob, BM, BN, m><<<grid, kThreads, 0, st>>>(pb);
  });
  check(cudaGetLastError(), what);
}

// A bf16 array widened to fp32 in stream-ordered scratch (null stays null), for the passes that
// have no bf16 kernel yet.
class Widened {
 public:
  Widened(const bf16* src, int64_t n, cudaStream_t st)
      : scratch_(src != nullptr ? static_cast<size_t>(n) * sizeof(float) : 0, st), present_(src != nullptr) {
    if (present_ && n > 0) {
      convert_kernel<<<grid_stride_grid(n), kThreads, 0, st>>>(src, data(), n);
      check(cudaGetLastError(), "conv2d (bf16 widening)");
    }
  }
  float* data() const { return present_ ? reinterpret_cast<float*>(scratch_.bytes()) : nullptr; }

 private:
  detail::Scratch scratch_;
  bool present_;
};

void round_to_bf16(const float* src, bf16* dst, int64_t n, cudaStream_t st) {
  convert_kernel<<<grid_stride_grid(n), kThreads, 0, st>>>(src, dst, n);
  check(cudaGetLastError(), "conv2d (bf16 rounding)");
}

bool dw_taps_enabled() { return switch_on(switches::cuda_conv2d_dw_taps); }
bool dw_loads_enabled() { return switch_on(switches::cuda_conv2d_dw_loads); }

template <int U>
void launch_depthwise_forward(const Dims& d, const float* x, const float* w, const float* b, float* y,
                              cudaStream_t st) {
  const DwPlan pl = dw_forward_plan(d);
  const dim3 grid(static_cast<unsigned>(d.N * d.K), static_cast<unsigned>(ceil_div(d.P, pl.band)));
  if (d.R == 3 && d.S == 3)
    depthwise_forward<3, 3, U><<<grid, kThreads, 0, st>>>(to_dims32(d), pl, x, w, b, y);
  else
    depthwise_forward<0, 0, U><<<grid, kThreads, 0, st>>>(to_dims32(d), pl, x, w, b, y);
  check(cudaGetLastError(), "conv2d_forward (depthwise)");
}

template <int U>
void launch_depthwise_backward_data(const Dims& d, const float* dy, const float* w, float* dx, cudaStream_t st) {
  const DwPlan pl = dw_backward_data_plan(d);
  const dim3 grid(static_cast<unsigned>(d.N * d.C), static_cast<unsigned>(ceil_div(d.H, pl.band)));
  const Dims32 e = to_dims32(d);
  const bool k3 = d.R == 3 && d.S == 3, unit = d.sh == 1 && d.sw == 1;
  if (k3 && unit)
    depthwise_backward_data<3, 3, true, U><<<grid, kThreads, 0, st>>>(e, pl, dy, w, dx);
  else if (k3)
    depthwise_backward_data<3, 3, false, U><<<grid, kThreads, 0, st>>>(e, pl, dy, w, dx);
  else if (unit)
    depthwise_backward_data<0, 0, true, U><<<grid, kThreads, 0, st>>>(e, pl, dy, w, dx);
  else
    depthwise_backward_data<0, 0, false, U><<<grid, kThreads, 0, st>>>(e, pl, dy, w, dx);
  check(cudaGetLastError(), "conv2d_backward_data (depthwise)");
}

template <int KR>
void launch_dw_taps(const Dims& d, const DwPlan& pl, int per_chunk, int chunks, const float* dy, const float* x,
                    float* out, bool accumulate, cudaStream_t st) {
  depthwise_backward_weight_taps<KR, KR><<<dim3(static_cast<unsigned>(d.K), static_cast<unsigned>(chunks)), kThreads,
                                           0, st>>>(to_dims32(d), pl, dy, x, per_chunk, out, accumulate);
  check(cudaGetLastError(), "conv2d_backward_weight (depthwise taps)");
}

void launch_depthwise_backward_weight_taps(const Dims& d, const float* dy, const float* x, float* dw,
                                           bool accumulate, cudaStream_t st) {
  const int64_t per_chunk = dw_taps_images_per_chunk(d, sm_count()), chunks = ceil_div(d.N, per_chunk);
  const int64_t numel = d.K * d.R * d.S;
  const detail::Scratch scratch(chunks > 1 ? static_cast<size_t>(chunks * numel) * sizeof(float) : 0, st);
  float* out = chunks > 1 ? reinterpret_cast<float*>(scratch.bytes()) : dw;
  const DwPlan pl = dw_forward_plan(d);
  const int pc = static_cast<int>(per_chunk), nc = static_cast<int>(chunks);
  const bool direct = accumulate && chunks == 1;
  switch (d.R) {
    case 3: launch_dw_taps<3>(d, pl, pc, nc, dy, x, out, direct, st); break;
    case 5: launch_dw_taps<5>(d, pl, pc, nc, dy, x, out, direct, st); break;
    default: launch_dw_taps<7>(d, pl, pc, nc, dy, x, out, direct, st); break;
  }
  if (chunks > 1) {
    split_sum_kernel<<<grid_stride_grid(numel), kThreads, 0, st>>>(out, numel, nc, dw, accumulate);
    check(cudaGetLastError(), "conv2d_backward_weight (depthwise taps, chunk sum)");
  }
}

template <class Prob>
void launch_gemm_sized(const Prob& pb, int64_t z, bool tf32, cudaStream_t st, const char* what) {
  switch (gemm_tiles(pb.M, pb.N, z, sm_count())) {
    case Tiles::k128x128: launch_gemm<Prob, 128, 128>(pb, z, tf32, st, what); break;
    case Tiles::k64x128: launch_gemm<Prob, 64, 128>(pb, z, tf32, st, what); break;
    default: launch_gemm<Prob, 64, 64>(pb, z, tf32, st, what); break;
  }
}

// The GEMM passes for storage type T, once the path is Gemm or UnitGemm (weight-grad: Gemm).
template <class T>
void forward_gemm(const Dims& d, Path path, const T* x, const T* w, const T* b, T* y, bool tf32, cudaStream_t st) {
  const Dims32 e = to_dims32(d);
  if (path == Path::UnitGemm) {
    const ForwardProblem<true, T> pb{e, e.Kg, e.N * e.PQ, e.Cg, 1, x, w, b, y};
    launch_gemm_sized(pb, d.G, tf32, st, "conv2d_forward (1x1 GEMM)");
  } else {
    const ForwardProblem<false, T> pb{e, e.Kg, e.N * e.PQ, e.Cg * e.RS, 1, x, w, b, y};
    launch_gemm_sized(pb, d.G, tf32, st, "conv2d_forward (implicit GEMM)");
  }
}

template <class T>
void backward_data_gemm(const Dims& d, Path path, const T* dy, const T* w, T* dx, bool tf32, cudaStream_t st) {
  const Dims32 e = to_dims32(d);
  if (path == Path::UnitGemm) {
    const BackwardDataProblem<true, T> pb{e, e.Cg, e.N * e.HW, e.Kg, 1, dy, w, dx};
    launch_gemm_sized(pb, d.G, tf32, st, "conv2d_backward_data (1x1 GEMM)");
  } else {
    const BackwardDataProblem<false, T> pb{e, e.Cg, e.N * e.HW, e.Kg * e.RS, 1, dy, w, dx};
    launch_gemm_sized(pb, d.G, tf32, st, "conv2d_backward_data (implicit GEMM)");
  }
}

template <class T>
void backward_weight_gemm(const Dims& d, const T* dy, const T* x, float* dw, bool accumulate, bool tf32,
                          cudaStream_t st) {
  using Prob = BackwardWeightProblemOf<T>;
  const int64_t M = d.Kg, N = d.Cg * d.R * d.S, Kd = d.N * d.P * d.Q, numel = d.K * N;
  const Dims32 e = to_dims32(d);
  const bool big = big_weight_tiles(M, N);
  const int64_t wave = big ? gemm_wave<Prob, 128, 64>(tf32) : gemm_wave<Prob, 64, 64>(tf32);
  const int64_t splits = weight_grad_splits(M, N, Kd, d.G, numel, big, wave);
  const detail::Scratch scratch(splits > 1 ? static_cast<size_t>(splits * numel) * sizeof(float) : 0, st);
  float* out = splits > 1 ? reinterpret_cast<float*>(scratch.bytes()) : dw;
  const Prob pb{e, e.Kg, e.Cg * e.RS, e.N * e.PQ, static_cast<int>(splits), dy, x, out, accumulate && splits == 1};
  const char* what = "conv2d_backward_weight (implicit GEMM)";
  if (big)
    launch_gemm<Prob, 128, 64>(pb, d.G * splits, tf32, st, what);
  else
    launch_gemm<Prob, 64, 64>(pb, d.G * splits, tf32, st, what);
  if (splits > 1) {
    split_sum_kernel<<<grid_stride_grid(numel), kThreads, 0, st>>>(out, numel, static_cast<int>(splits), dw,
                                                                   accumulate);
    check(cudaGetLastError(), "conv2d_backward_weight (split sum)");
  }
}

template <class T>
void backward_bias(const Conv2dShape& s, const T* dy, float* db, bool accumulate, void* stream) {
  const Dims d = make_dims(s);
  if (d.K == 0) return;
  backward_bias_kernel<<<dim3(static_cast<unsigned>(std::min(d.K, kMaxGridX))), kThreads, 0, as_stream(stream)>>>(
      d, dy, db, accumulate);
  check(cudaGetLastError(), "conv2d_backward_bias");
}

}  // namespace

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    bool allow_tf32, void* stream) {
  const Dims d = make_dims(s);
  const int64_t total = d.N * d.K * d.P * d.Q;
  if (total == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (!force_gather() && winograd_applies(s, allow_tf32)) return winograd_forward(s, x, w, b, y, stream);
  const Path path = force_gather() ? Path::Gather : forward_path(d);
  if (path == Path::Depthwise) {
    if (dw_loads_enabled())
      launch_depthwise_forward<kDwLoadBatch>(d, x, w, b, y, st);
    else
      launch_depthwise_forward<1>(d, x, w, b, y, st);
  } else if (path != Path::Gather) {
    forward_gemm(d, path, x, w, b, y, allow_tf32, st);
  } else {
    forward_gather<<<grid_stride_grid(total), kThreads, 0, st>>>(d, x, w, b, y, total);
    check(cudaGetLastError(), "conv2d_forward (gather)");
  }
}

void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx,
                          bool allow_tf32, void* stream) {
  const Dims d = make_dims(s);
  const int64_t total = d.N * d.C * d.H * d.W;
  if (total == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (!force_gather() && winograd_applies(s, allow_tf32)) return winograd_backward_data(s, dy, w, dx, stream);
  const Path path = force_gather() ? Path::Gather : backward_data_path(d);
  if (path == Path::Depthwise) {
    if (dw_loads_enabled())
      launch_depthwise_backward_data<kDwLoadBatch>(d, dy, w, dx, st);
    else
      launch_depthwise_backward_data<1>(d, dy, w, dx, st);
  } else if (path == Path::SmallC) {
    conv2d_backward_data_small_c(d, dy, w, dx, st);
  } else if (path != Path::Gather) {
    backward_data_gemm(d, path, dy, w, dx, allow_tf32, st);
  } else {
    backward_data_gather<<<grid_stride_grid(total), kThreads, 0, st>>>(d, dy, w, dx, total);
    check(cudaGetLastError(), "conv2d_backward_data (gather)");
  }
}

void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dw, bool accumulate,
                            bool allow_tf32, void* stream) {
  const Dims d = make_dims(s);
  const int64_t numel = d.K * d.Cg * d.R * d.S;
  if (numel == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (!force_gather() && winograd_applies(s, allow_tf32)) return winograd_backward_weight(s, dy, x, dw, accumulate, stream);
  const Path path = force_gather() ? Path::Gather : backward_weight_path(d);
  if (path == Path::Depthwise && dw_taps_enabled() && dw_taps_fit(d)) {
    launch_depthwise_backward_weight_taps(d, dy, x, dw, accumulate, st);
  } else if (path == Path::Depthwise) {
    depthwise_backward_weight<<<dim3(static_cast<unsigned>(numel)), kThreads, 0, st>>>(to_dims32(d), dy, x, dw,
                                                                                       accumulate);
    check(cudaGetLastError(), "conv2d_backward_weight (depthwise)");
  } else if (path == Path::Gemm) {
    backward_weight_gemm(d, dy, x, dw, accumulate, allow_tf32, st);
  } else {
    backward_weight_gather<<<dim3(static_cast<unsigned>(std::min(numel, kMaxGridX))), kThreads, 0, st>>>(
        d, dy, x, dw, numel, accumulate);
    check(cudaGetLastError(), "conv2d_backward_weight (gather)");
  }
}

void conv2d_backward_bias(const Conv2dShape& s, const float* dy, float* db, bool accumulate, void* stream) {
  backward_bias(s, dy, db, accumulate, stream);
}

// ------------------------------------------------------------------ bf16
// The GEMM paths run bf16 problems; the others widen their inputs, run the fp32 pass (exact fp32
// math: allow_tf32 off) and round the output once.

void conv2d_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const bf16* b, bf16* y, bool,
                    void* stream) {
  const Dims d = make_dims(s);
  const int64_t total = d.N * d.K * d.P * d.Q;
  if (total == 0) return;
  const cudaStream_t st = as_stream(stream);
  const Path path = force_gather() ? Path::Gather : forward_path(d);
  if (path == Path::Gemm || path == Path::UnitGemm) return forward_gemm(d, path, x, w, b, y, false, st);
  const Widened xf(x, d.N * d.C * d.H * d.W, st), wf(w, d.K * d.Cg * d.R * d.S, st), bf(b, d.K, st);
  const detail::Scratch yf(static_cast<size_t>(total) * sizeof(float), st);
  float* yp = reinterpret_cast<float*>(yf.bytes());
  conv2d_forward(s, xf.data(), wf.data(), bf.data(), yp, false, stream);
  round_to_bf16(yp, y, total, st);
}

void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx, bool, void* stream) {
  const Dims d = make_dims(s);
  const int64_t total = d.N * d.C * d.H * d.W;
  if (total == 0) return;
  const cudaStream_t st = as_stream(stream);
  const Path path = force_gather() ? Path::Gather : backward_data_path(d);
  if (path == Path::Gemm || path == Path::UnitGemm) return backward_data_gemm(d, path, dy, w, dx, false, st);
  const Widened dyf(dy, d.N * d.K * d.P * d.Q, st), wf(w, d.K * d.Cg * d.R * d.S, st);
  const detail::Scratch dxf(static_cast<size_t>(total) * sizeof(float), st);
  float* dxp = reinterpret_cast<float*>(dxf.bytes());
  conv2d_backward_data(s, dyf.data(), wf.data(), dxp, false, stream);
  round_to_bf16(dxp, dx, total, st);
}

void conv2d_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dw, bool accumulate, bool,
                            void* stream) {
  const Dims d = make_dims(s);
  if (d.K * d.Cg * d.R * d.S == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (!force_gather() && backward_weight_path(d) == Path::Gemm)
    return backward_weight_gemm(d, dy, x, dw, accumulate, false, st);
  const Widened dyf(dy, d.N * d.K * d.P * d.Q, st), xf(x, d.N * d.C * d.H * d.W, st);
  conv2d_backward_weight(s, dyf.data(), xf.data(), dw, accumulate, false, stream);
}

void conv2d_backward_bias(const Conv2dShape& s, const bf16* dy, float* db, bool accumulate, void* stream) {
  backward_bias(s, dy, db, accumulate, stream);
}

}  // namespace fastopt::cuda

/*
Private to the CUDA conv2d files: the conv2d shape (Dims in int64 for the host's planning, Dims32 in
int32 for the kernels' index math), the multiply-high divider that index math divides with, and
fits_int32, the check that lets a pass run in int32. Included by conv2d_depthwise.cuh and
conv2d_tiles.cuh; FASTOPT_HD throughout, so the host replay (tests/native) runs the same code.
*/
#pragma once

#include <cstdint>

#include "fastopt/common.h"
#include "fastopt/conv2d.h"

namespace fastopt::cuda::conv {

// The shape in int64, with the group extents the kernels need.
struct Dims {
  int64_t N, C, H, W, K, R, S, P, Q;
  int64_t sh, sw, ph, pw, dh, dw, G, Cg, Kg;
};

inline Dims make_dims(const Conv2dShape& s) {
  return {s.N,
          s.C,
          s.H,
          s.W,
          s.K,
          s.R,
          s.S,
          s.P,
          s.Q,
          s.stride_h,
          s.stride_w,
          s.pad_h,
          s.pad_w,
          s.dil_h,
          s.dil_w,
          s.groups,
          s.C / s.groups,
          s.K / s.groups};
}

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 by a multiply-high and a shift (Granlund and
// Montgomery; PyTorch's IntDivider): a run-time integer division costs ~20 instructions on the GPU,
// and the im2col gathers of the tiled kernels do several per loaded element.
// With l = ceil(log2 d) and mul = floor(2^32 (2^l - d) / d) + 1 (< 2^32 since 2^l - d < d),
// n / d = (mulhi(n, mul) + n) >> l, and mulhi(n, mul) + n <= 2n < 2^32 does not wrap.
struct Divider {
  uint32_t d, mul, shift;

  static Divider make(uint32_t d) {
    uint32_t l = 0;
    while ((uint64_t{1} << l) < d) ++l;
    const uint64_t mul = ((uint64_t{1} << 32) * ((uint64_t{1} << l) - d)) / d + 1;
    return {d, static_cast<uint32_t>(mul), l};
  }
  FASTOPT_HD int div(int n) const {
    const uint32_t u = static_cast<uint32_t>(n);
#if defined(__CUDA_ARCH__)
    const uint32_t t = __umulhi(u, mul);
#else
    const uint32_t t = static_cast<uint32_t>((uint64_t{u} * mul) >> 32);
#endif
    return static_cast<int>((t + u) >> shift);
  }
};

// The same in int32 for the tiled kernels; valid only when fits_int32(d). The dividers divide by
// the extents the GEMM coordinates are decomposed with.
struct Dims32 {
  int N, C, H, W, K, R, S, P, Q;
  int sh, sw, ph, pw, dh, dw, G, Cg, Kg;
  int RS, PQ, HW;
  Divider by_RS, by_S, by_PQ, by_Q, by_HW, by_W;
  Divider by_sh, by_sw;  // data-grad's dy row and column: a hardware division per tap cost ~20 instructions
};

// Every extent and product the tiled kernels form in int32 stays below 2^31 - 2^16, leaving room
// for a tile origin plus a tile (n0 + 127 and the like) without overflow.
inline bool fits_int32(const Dims& d) {
  const int64_t lim = (int64_t{1} << 31) - (int64_t{1} << 16);
  const int64_t v[] = {d.N * d.P * d.Q, d.N * d.H * d.W, d.Cg * d.R * d.S, d.Kg * d.R * d.S,
                       d.K,             d.C,             d.G,
                       // h = p sh - ph + r dh and its data-grad mirror h + ph - r dh
                       d.P * d.sh + d.ph + d.R * d.dh, d.Q * d.sw + d.pw + d.S * d.dw,
                       d.H + d.ph + d.R * d.dh,        d.W + d.pw + d.S * d.dw};
  for (int64_t x : v)
    if (x >= lim) return false;
  return true;
}

inline Dims32 to_dims32(const Dims& d) {
  Dims32 e{};
  e.N = int(d.N); e.C = int(d.C); e.H = int(d.H); e.W = int(d.W); e.K = int(d.K);
  e.R = int(d.R); e.S = int(d.S); e.P = int(d.P); e.Q = int(d.Q);
  e.sh = int(d.sh); e.sw = int(d.sw); e.ph = int(d.ph); e.pw = int(d.pw); e.dh = int(d.dh); e.dw = int(d.dw);
  e.G = int(d.G); e.Cg = int(d.Cg); e.Kg = int(d.Kg);
  e.RS = e.R * e.S; e.PQ = e.P * e.Q; e.HW = e.H * e.W;
  // A zero extent means an empty pass, which launches nothing: its divider is never used.
  auto div = [](int v) { return Divider::make(static_cast<uint32_t>(v > 0 ? v : 1)); };
  e.by_RS = div(e.RS); e.by_S = div(e.S); e.by_PQ = div(e.PQ);
  e.by_Q = div(e.Q); e.by_HW = div(e.HW); e.by_W = div(e.W);
  e.by_sh = div(e.sh); e.by_sw = div(e.sw);
  return e;
}

}  // namespace fastopt::cuda::conv

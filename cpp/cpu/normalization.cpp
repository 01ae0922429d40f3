// Batch, layer and group normalization on the CPU (math: fastopt/normalization.h).
//
// Traffic, fp32 elements of x: forward reads x once for the statistics and once more to
// normalize, and writes y; backward reads x and dy for the fused sums and again for dx, and
// writes dx. Only the first read of each must come from DRAM: both passes over a block of
// channels or a row run back to back while it sits in L2, so the floor is about 8 B forward
// and 12 B backward per element.
//
// Statistics are one pass: sums of d = x - k and d^2 in double around k, one of the values (a
// channel's or row's first; 0 if that is not finite, see norm_shift), then M2 = sum d^2 -
// (sum d)^2 / count, clamped at 0 without losing a NaN (clamp_m2). The shift bounds the
// cancellation ((k - mean)^2 <= M2) where the unshifted E[x^2] - E[x]^2 would lose every digit
// at mean 1e5, std 1e-2. It saves the two-pass method's second read of the data.
//
// Layout: batch norm with spatial dims runs OpenMP over blocks of channels (channel_block), a
// channel being N planes of S contiguous floats, vectorized along S. A block is walked sample by
// sample, so small planes (7x7) make one contiguous stream per sample rather than N strided
// ones, which the prefetchers could not follow. A 2-d (N, C) input (also channels_last
// activations, as (N H W, C)) walks tiles of kTile channels down fixed blocks of rows instead,
// vectorized along C, the blocks in parallel and their partials added in block order. The row family (layer/group norm) runs OpenMP over rows; its dw/db column sums go to
// per-block partials over fixed blocks of samples, added in the sums pass and folded in block
// order. Every sum therefore has a fixed order for any thread count and ISA (16 double lanes,
// lane i % 16 for element i of a run, folded by a fixed tree), so results are bitwise
// reproducible.
//
// Batch norm also runs on bf16 activations (x, y, dy, dx): the same loops read 2-byte elements
// (load_f8 widens them exactly), statistics, sums and coefficients stay fp32/double, and each
// output element is rounded once. Traffic halves: about 4 B forward and 6 B backward per element.
#include <cmath>
#include <cstring>
#include <vector>

#include "fastopt/normalization.h"
#include "isa.h"

namespace fastopt::cpu {

FASTOPT_FOR_EACH_ISA(void batch_norm_forward_train(const NormShape& s, const float* x, const float* w, const float* b,
                                                   float* y, float* mean, float* rstd, float* running_mean,
                                                   float* running_var, double factor, double eps);
                     void batch_norm_forward_eval(const NormShape& s, const float* x, const float* w, const float* b,
                                                  float* y, float* mean, float* rstd, const float* running_mean,
                                                  const float* running_var, double eps);
                     void batch_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w,
                                              const float* mean, const float* rstd, bool training, float* dx, float* dw,
                                              float* db, bool accumulate);
                     void batch_norm_forward_train(const NormShape& s, const bf16* x, const float* w, const float* b,
                                                   bf16* y, float* mean, float* rstd, float* running_mean,
                                                   float* running_var, double factor, double eps);
                     void batch_norm_forward_eval(const NormShape& s, const bf16* x, const float* w, const float* b,
                                                  bf16* y, float* mean, float* rstd, const float* running_mean,
                                                  const float* running_var, double eps);
                     void batch_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w,
                                              const float* mean, const float* rstd, bool training, bf16* dx, float* dw,
                                              float* db, bool accumulate);
                     void row_norm_forward(const NormShape& s, const float* x, const float* w, const float* b, float* y,
                                           float* mean, float* rstd, double eps);
                     void row_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w,
                                            const float* mean, const float* rstd, float* dx, float* dw, float* db,
                                            bool accumulate);
                     void row_norm_forward(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y,
                                           float* mean, float* rstd, double eps);
                     void row_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w,
                                            const float* mean, const float* rstd, bf16* dx, float* dw, float* db,
                                            bool accumulate);)

namespace FASTOPT_ISA {
namespace {

constexpr int kLanes = 16;
constexpr int64_t kTile = 64;  // channels per task of a 2-d batch norm
constexpr int64_t kRowBlock = 1024;  // rows per partial sum of a 2-d batch norm
constexpr int64_t kMaxBlocks = 64;  // sample blocks of the row family's dw/db partials

// GCC vector types: the same lane-wise double arithmetic on every ISA (baseline splits them into
// SSE2 halves), the accumulators kept in registers through a run.
typedef double d8 __attribute__((vector_size(64)));
typedef f32x8 f8;  // load_f8 (fastopt/bf16.h) reads float or bf16 runs into it

inline d8 wide(f8 v) { return __builtin_convertvector(v, d8); }

// Lane accumulators: element i of a run goes to lane i % kLanes, whatever the run length, so
// several runs (the planes of a channel) can be summed into the same lanes in a fixed order.
struct Lanes {
  d8 lo = {}, hi = {};  // lanes 0-7, 8-15
  double fold() const {
    double v[kLanes];
    std::memcpy(v, &lo, sizeof lo);
    std::memcpy(v + 8, &hi, sizeof hi);
    for (int w = kLanes / 2; w > 0; w /= 2)
      for (int j = 0; j < w; ++j) v[j] += v[j + w];
    return v[0];
  }
};

// The last n < 16 elements of a run, in fp32, padded with `pad` to a whole vector.
template <class T>
inline void tail16(float* t, const T* x, int64_t n, float pad) {
  for (int64_t j = 0; j < kLanes; ++j) t[j] = j < n ? to_float(x[j]) : pad;
}

// Sums of d = x - k and d^2 in double; k is a float, so padding with it adds exact zeros.
// T: float or bf16 storage (every run helper below reads either).
template <class T>
__attribute__((always_inline)) inline void shifted_run(Lanes& s, Lanes& q, const T* __restrict x, int64_t n, float k) {
  const double kd = k;
  auto step = [&](const auto* p) {
    const d8 a = wide(load_f8(p)) - kd, b = wide(load_f8(p + 8)) - kd;
    s.lo += a;
    s.hi += b;
    q.lo += a * a;
    q.hi += b * b;
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) step(x + i);
  if (i < n) {
    float t[kLanes];
    tail16(t, x + i, n - i, k);
    step(t);
  }
}

// sum dy and sum dy * (x - mean); x - mean in float is exact for x near the mean. Padding
// (dy 0, x mean) adds exact zeros.
template <class T>
__attribute__((always_inline)) inline void grad_run(Lanes& a, Lanes& c, const T* __restrict dy, const T* __restrict x,
                                                    float mean, int64_t n) {
  auto step = [&](const auto* g, const auto* xp) {
    const d8 g0 = wide(load_f8(g)), g1 = wide(load_f8(g + 8));
    a.lo += g0;
    a.hi += g1;
    c.lo += g0 * wide(load_f8(xp) - mean);
    c.hi += g1 * wide(load_f8(xp + 8) - mean);
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) step(dy + i, x + i);
  if (i < n) {
    float tg[kLanes], tx[kLanes];
    tail16(tg, dy + i, n - i, 0.0f);
    tail16(tx, x + i, n - i, mean);
    step(tg, tx);
  }
}

inline d8 load_d8(const double* p) {
  d8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_d8(double* p, d8 v) { std::memcpy(p, &v, sizeof v); }

// grad_run with dy scaled by w (when given): sum g and sum g * (x - mean), g = dy * w exact in
// double. With pw, also adds dy (x - mean) rstd and dy into the column partials pw[i], pb[i] in
// the same read of the row.
template <class T>
__attribute__((always_inline)) inline void weighted_grad_run(Lanes& a, Lanes& c, const T* __restrict dy,
                                                             const T* __restrict x, const float* __restrict w,
                                                             float mean, int64_t n, double* __restrict pw,
                                                             double* __restrict pb, double rstd) {
  auto half = [&](d8& al, d8& cl, const auto* g, const auto* xp, const float* wp, double* qw, double* qb) {
    const d8 d = wide(load_f8(g)), xm = wide(load_f8(xp) - mean);
    const d8 gw = wp ? d * wide(load_f8(wp)) : d;
    al += gw;
    cl += gw * xm;
    if (qw) {
      store_d8(qw, load_d8(qw) + d * xm * rstd);
      store_d8(qb, load_d8(qb) + d);
    }
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    half(a.lo, c.lo, dy + i, x + i, w ? w + i : nullptr, pw ? pw + i : nullptr, pb ? pb + i : nullptr);
    half(a.hi, c.hi, dy + i + 8, x + i + 8, w ? w + i + 8 : nullptr, pw ? pw + i + 8 : nullptr,
         pb ? pb + i + 8 : nullptr);
  }
  if (i < n) {
    float tg[kLanes], tx[kLanes], tw[kLanes];
    tail16(tg, dy + i, n - i, 0.0f);
    tail16(tx, x + i, n - i, mean);
    if (w) tail16(tw, w + i, n - i, 0.0f);
    half(a.lo, c.lo, tg, tx, w ? tw : nullptr, nullptr, nullptr);
    half(a.hi, c.hi, tg + 8, tx + 8, w ? tw + 8 : nullptr, nullptr, nullptr);
    for (; pw && i < n; ++i) {
      pw[i] += static_cast<double>(to_float(dy[i])) * static_cast<double>(to_float(x[i]) - mean) * rstd;
      pb[i] += to_float(dy[i]);
    }
  }
}

// Moments of n values from the sums of d = x - k and d^2 over them (shifted_run). As k is one
// of the values (norm_shift), (k - mean)^2 <= M2, so the cancellation in M2 = sum d^2 -
// (sum d)^2 / n costs at most a factor n of double precision, far below float's.
Moments<double> shifted_moments(const Lanes& s, const Lanes& q, int64_t n, float k) {
  const double count = static_cast<double>(n), sum = s.fold();
  return {count, k + sum / count, clamp_m2(q.fold() - sum * sum / count)};
}

template <class T>
Moments<double> row_moments(const T* x, int64_t n) {
  const float k = n > 0 ? norm_shift(to_float(x[0])) : 0.0f;
  Lanes s, q;
  shifted_run(s, q, x, n, k);
  return shifted_moments(s, q, n, k);
}

// Channels per batch-norm task: enough small planes that a sample's slice of the block is a
// run of about kBlockFloats, one prefetch stream instead of one per plane.
constexpr int64_t kBlockFloats = 1024, kMaxBlockChannels = 32;
int64_t channel_block(int64_t S, int64_t C) {
  const int64_t cb = kBlockFloats / S;
  return cb < 1 ? 1 : cb > kMaxBlockChannels ? kMaxBlockChannels : cb > C ? C : cb;
}

template <class T>
void plane_apply(const T* __restrict x, T* __restrict y, int64_t n, float hi, float lo, float scale, float shift) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = from_float<T>(norm_apply(to_float(x[i]), hi, lo, scale, shift));
}

template <class T>
void plane_dx(const T* __restrict dy, const T* __restrict x, T* __restrict dx, int64_t n, float mean, float k, float c2,
              float c3) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    dx[i] = from_float<T>(norm_backward_dx(to_float(dy[i]), to_float(x[i]) - mean, k, c2, c3));
}

// Column sums of a 2-d (N, C) input, rows cut into fixed blocks of kRowBlock (channels_last
// activations are (N H W, C): 10^5 rows of 32-64 channels, one tile): tiles of kTile channels
// walk down a block's rows, vectorized along C, the blocks run in parallel, and each channel's
// block partials are added in block order, so the sums do not depend on the thread count.
// add(n, c0, w, a, q) adds row n's terms for channels c0 .. c0 + w - 1 into their two accumulators.
template <class Add>
void column_sums(int64_t N, int64_t C, std::vector<double>& out0, std::vector<double>& out1, Add add) {
  const int64_t tiles = (C + kTile - 1) / kTile, blocks = (N + kRowBlock - 1) / kRowBlock;
  std::vector<double> part(static_cast<size_t>(blocks * C * 2), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < blocks * tiles; ++bt) {
    const int64_t blk = bt / tiles, c0 = bt % tiles * kTile, w = C - c0 < kTile ? C - c0 : kTile;
    const int64_t n1 = (blk + 1) * kRowBlock < N ? (blk + 1) * kRowBlock : N;
    double a[kTile] = {}, q[kTile] = {};
    for (int64_t n = blk * kRowBlock; n < n1; ++n) add(n, c0, w, a, q);
    for (int64_t j = 0; j < w; ++j) {
      part[(blk * C + c0 + j) * 2] = a[j];
      part[(blk * C + c0 + j) * 2 + 1] = q[j];
    }
  }
  out0.assign(static_cast<size_t>(C), 0.0);
  out1.assign(static_cast<size_t>(C), 0.0);
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t c = 0; c < C; ++c) {
      out0[c] += part[(blk * C + c) * 2];
      out1[c] += part[(blk * C + c) * 2 + 1];
    }
}

// Per-channel moments of a 2-d (N, C) batch norm input, into mom[C]: one pass of sums of d = x - k
// and d^2 around each channel's first value (norm_shift), as the channel path does.
template <class T>
void column_moments(const NormShape& s, const T* x, Moments<double>* mom) {
  const int64_t N = s.N, C = s.C;
  std::vector<float> k(static_cast<size_t>(C), 0.0f);
  for (int64_t c = 0; N > 0 && c < C; ++c) k[c] = norm_shift(to_float(x[c]));
  std::vector<double> sum, sq;
  column_sums(N, C, sum, sq, [&](int64_t n, int64_t c0, int64_t w, double* a, double* q) {
    const T* __restrict row = x + n * C + c0;
    const float* __restrict kk = k.data() + c0;
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) {
      const double d = static_cast<double>(to_float(row[j])) - kk[j];
      a[j] += d;
      q[j] += d * d;
    }
  });
  const double count = static_cast<double>(N);
  for (int64_t c = 0; c < C; ++c) mom[c] = {count, k[c] + sum[c] / count, clamp_m2(sq[c] - sum[c] * sum[c] / count)};
}

// y = norm_apply(x, hi[c], lo[c], scale[c], shift[c]) over every (n, c) plane.
template <class T>
void channel_apply(const NormShape& s, const T* x, T* y, const float* hi, const float* lo, const float* scale,
                   const float* shift) {
  const int64_t N = s.N, C = s.C, S = s.S;
  if (S > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < N * C; ++p)
      plane_apply(x + p * S, y + p * S, S, hi[p % C], lo[p % C], scale[p % C], shift[p % C]);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* __restrict xr = x + n * C;
    T* __restrict yr = y + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      yr[c] = from_float<T>(norm_apply(to_float(xr[c]), hi[c], lo[c], scale[c], shift[c]));
  }
}

// lo: the part of each channel's mean below the float mean[c] (see norm_apply).
template <class T>
void bn_normalize(const NormShape& s, const T* x, const float* w, const float* b, T* y, const float* mean,
                  const float* lo, const float* rstd) {
  std::vector<float> scale(s.C), shift(s.C);
  for (int64_t c = 0; c < s.C; ++c) {
    scale[c] = w ? w[c] * rstd[c] : rstd[c];
    shift[c] = b ? b[c] : 0.0f;
  }
  channel_apply(s, x, y, mean, lo, scale.data(), shift.data());
}

// Batch norm for activations stored as T (float or bf16); w, b, statistics and running
// statistics are fp32 always.
template <class T>
void bn_forward_train(const NormShape& s, const T* x, const float* w, const float* b, T* y, float* mean, float* rstd,
                      float* running_mean, float* running_var, double factor, double eps) {
  const int64_t N = s.N, C = s.C, S = s.S;
  // Channel c's statistics: float mean and rstd, the mean's float rounding in *lo.
  auto finish = [&](int64_t c, const Moments<double>& m, float* lo) {
    const double var = m.m2 / m.count;
    mean[c] = static_cast<float>(m.mean);
    *lo = static_cast<float>(m.mean - mean[c]);
    rstd[c] = static_cast<float>(norm_rstd(var, eps));
    if (running_mean != nullptr) update_running(running_mean + c, running_var + c, m.mean, var, m.count, factor);
  };
  if (S > 1) {
    // Statistics and normalization of a block of channels back to back, sample by sample: each
    // sample's slice of the block is contiguous, and the second read finds it in L2.
    const int64_t cb = channel_block(S, C), blocks = (C + cb - 1) / cb;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < blocks; ++t) {
      const int64_t c0 = t * cb, nc = C - c0 < cb ? C - c0 : cb;
      Lanes sum[kMaxBlockChannels], sq[kMaxBlockChannels];
      float k[kMaxBlockChannels];
      for (int64_t j = 0; j < nc; ++j) k[j] = norm_shift(to_float(x[(c0 + j) * S]));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < nc; ++j) shifted_run(sum[j], sq[j], x + (n * C + c0 + j) * S, S, k[j]);
      float lo[kMaxBlockChannels], scale[kMaxBlockChannels], shift[kMaxBlockChannels];
      for (int64_t j = 0, c = c0; j < nc; ++j, ++c) {
        finish(c, shifted_moments(sum[j], sq[j], N * S, k[j]), &lo[j]);
        scale[j] = w ? w[c] * rstd[c] : rstd[c];
        shift[j] = b ? b[c] : 0.0f;
      }
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0, c = c0; j < nc; ++j, ++c)
          plane_apply(x + (n * C + c) * S, y + (n * C + c) * S, S, mean[c], lo[j], scale[j], shift[j]);
    }
    return;
  }
  std::vector<Moments<double>> mom(C);
  std::vector<float> lo(C);
  column_moments(s, x, mom.data());
  for (int64_t c = 0; c < C; ++c) finish(c, mom[c], &lo[c]);
  bn_normalize(s, x, w, b, y, mean, lo.data(), rstd);
}

template <class T>
void bn_forward_eval(const NormShape& s, const T* x, const float* w, const float* b, T* y, float* mean, float* rstd,
                     const float* running_mean, const float* running_var, double eps) {
  for (int64_t c = 0; c < s.C; ++c) {
    mean[c] = running_mean[c];
    rstd[c] = static_cast<float>(norm_rstd(running_var[c], eps));
  }
  const std::vector<float> lo(s.C, 0.0f);
  bn_normalize(s, x, w, b, y, mean, lo.data(), rstd);
}

template <class T>
void bn_backward(const NormShape& s, const T* dy, const T* x, const float* w, const float* mean, const float* rstd,
                 bool training, T* dx, float* dw, float* db, bool accumulate) {
  const int64_t N = s.N, C = s.C, S = s.S;
  const bool sums = training || dw != nullptr || db != nullptr;
  const double M = static_cast<double>(N * S);
  // Channel c's dw, db and dx coefficients from its sums (zero in eval: dx = dy * k).
  auto finish = [&](int64_t c, double sdy, double sdyxmu, float* k, float* c2, float* c3) {
    const double r = rstd[c], wc = w ? w[c] : 1.0;
    *k = static_cast<float>(wc * r);
    *c2 = training ? static_cast<float>(-r * r * r * wc * sdyxmu / M) : 0.0f;
    *c3 = training ? static_cast<float>(-r * wc * sdy / M) : 0.0f;
    if (dw != nullptr) store_grad(dw + c, static_cast<float>(sdyxmu * r), accumulate);
    if (db != nullptr) store_grad(db + c, static_cast<float>(sdy), accumulate);
  };
  if (S > 1) {
    // The fused sums, then dx, for a block of channels sample by sample, as in the forward.
    const int64_t cb = channel_block(S, C), blocks = (C + cb - 1) / cb;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < blocks; ++t) {
      const int64_t c0 = t * cb, nc = C - c0 < cb ? C - c0 : cb;
      Lanes a[kMaxBlockChannels], q[kMaxBlockChannels];
      for (int64_t n = 0; sums && n < N; ++n)
        for (int64_t j = 0; j < nc; ++j) {
          const int64_t p = (n * C + c0 + j) * S;
          grad_run(a[j], q[j], dy + p, x + p, mean[c0 + j], S);
        }
      float k[kMaxBlockChannels], c2[kMaxBlockChannels], c3[kMaxBlockChannels];
      for (int64_t j = 0; j < nc; ++j) finish(c0 + j, a[j].fold(), q[j].fold(), &k[j], &c2[j], &c3[j]);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < nc; ++j) {
          const int64_t p = (n * C + c0 + j) * S;
          plane_dx(dy + p, x + p, dx + p, S, mean[c0 + j], k[j], c2[j], c3[j]);
        }
    }
    return;
  }
  std::vector<float> k(C), c2(C), c3(C);
  std::vector<double> a(static_cast<size_t>(C), 0.0), q(static_cast<size_t>(C), 0.0);
  if (sums)
    column_sums(N, C, a, q, [&](int64_t n, int64_t c0, int64_t wd, double* sa, double* sq) {
      const T* __restrict g = dy + n * C + c0;
      const T* __restrict xr = x + n * C + c0;
      const float* __restrict mu = mean + c0;
#pragma omp simd
      for (int64_t j = 0; j < wd; ++j) {
        const float gj = to_float(g[j]);
        sa[j] += gj;
        sq[j] += static_cast<double>(gj) * static_cast<double>(to_float(xr[j]) - mu[j]);
      }
    });
  for (int64_t c = 0; c < C; ++c) finish(c, a[c], q[c], &k[c], &c2[c], &c3[c]);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* __restrict g = dy + n * C;
    const T* __restrict xr = x + n * C;
    T* __restrict o = dx + n * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      o[c] = from_float<T>(norm_backward_dx(to_float(g[c]), to_float(xr[c]) - mean[c], k[c], c2[c], c3[c]));
  }
}

}  // namespace

void batch_norm_forward_train(const NormShape& s, const float* x, const float* w, const float* b, float* y, float* mean,
                              float* rstd, float* running_mean, float* running_var, double factor, double eps) {
  bn_forward_train(s, x, w, b, y, mean, rstd, running_mean, running_var, factor, eps);
}
void batch_norm_forward_train(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y, float* mean,
                              float* rstd, float* running_mean, float* running_var, double factor, double eps) {
  bn_forward_train(s, x, w, b, y, mean, rstd, running_mean, running_var, factor, eps);
}
void batch_norm_forward_eval(const NormShape& s, const float* x, const float* w, const float* b, float* y, float* mean,
                             float* rstd, const float* running_mean, const float* running_var, double eps) {
  bn_forward_eval(s, x, w, b, y, mean, rstd, running_mean, running_var, eps);
}
void batch_norm_forward_eval(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y, float* mean,
                             float* rstd, const float* running_mean, const float* running_var, double eps) {
  bn_forward_eval(s, x, w, b, y, mean, rstd, running_mean, running_var, eps);
}
void batch_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w, const float* mean,
                         const float* rstd, bool training, float* dx, float* dw, float* db, bool accumulate) {
  bn_backward(s, dy, x, w, mean, rstd, training, dx, dw, db, accumulate);
}
void batch_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w, const float* mean,
                         const float* rstd, bool training, bf16* dx, float* dw, float* db, bool accumulate) {
  bn_backward(s, dy, x, w, mean, rstd, training, dx, dw, db, accumulate);
}

namespace {

// The row family (layer and group norm) for activations stored as T (float or bf16); w, b,
// mean, rstd, dw, db stay fp32 and the sums double, so bf16 changes only the reads and the one
// rounding of each y and dx.
template <class T>
void row_forward(const NormShape& s, const T* x, const float* w, const float* b, T* y, float* mean, float* rstd,
                 double eps) {
  const int64_t G = s.G, Cg = s.C / s.G, S = s.S, L = Cg * S, R = s.N * G;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const Moments<double> m = row_moments(x + r * L, L);
    const float mu = static_cast<float>(m.mean);
    const float lo = static_cast<float>(m.mean - mu);
    const float rs = static_cast<float>(norm_rstd(m.m2 / m.count, eps));
    mean[r] = mu;
    rstd[r] = rs;
    const T* __restrict xr = x + r * L;
    T* __restrict yr = y + r * L;
    const int64_t c0 = (r % G) * Cg;
    if (S == 1) {
#pragma omp simd
      for (int64_t j = 0; j < Cg; ++j)
        yr[j] = from_float<T>(norm_apply(to_float(xr[j]), mu, lo, w ? w[c0 + j] * rs : rs, b ? b[c0 + j] : 0.0f));
    } else {
      for (int64_t j = 0; j < Cg; ++j)
        plane_apply(xr + j * S, yr + j * S, S, mu, lo, w ? w[c0 + j] * rs : rs, b ? b[c0 + j] : 0.0f);
    }
  }
}

template <class T>
void row_backward(const NormShape& s, const T* dy, const T* x, const float* w, const float* mean, const float* rstd,
                  T* dx, float* dw, float* db, bool accumulate) {
  const int64_t N = s.N, C = s.C, G = s.G, Cg = C / G, S = s.S, L = Cg * S;
  const bool affine_grads = dw != nullptr || db != nullptr;
  // Fixed sample blocks (a function of N only) carry the dw/db partial sums.
  const int64_t per = (N + kMaxBlocks - 1) / kMaxBlocks;
  const int64_t blocks = N == 0 ? 0 : (N + per - 1) / per;
  std::vector<double> pdw(affine_grads ? blocks * C : 0, 0.0), pdb(affine_grads ? blocks * C : 0, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    double* __restrict bw = affine_grads ? pdw.data() + blk * C : nullptr;
    double* __restrict bb = affine_grads ? pdb.data() + blk * C : nullptr;
    const int64_t n1 = (blk + 1) * per < N ? (blk + 1) * per : N;
    for (int64_t n = blk * per; n < n1; ++n)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t r = n * G + g, c0 = g * Cg;
        const float mu = mean[r], rs = rstd[r];
        const T* __restrict xr = x + r * L;
        const T* __restrict gr = dy + r * L;
        T* __restrict o = dx + r * L;
        double sg = 0.0, sgx = 0.0;
        if (S == 1) {
          Lanes a, q;
          weighted_grad_run(a, q, gr, xr, w ? w + c0 : nullptr, mu, Cg, affine_grads ? bw + c0 : nullptr,
                            affine_grads ? bb + c0 : nullptr, rs);
          sg = a.fold();
          sgx = q.fold();
        } else {
          for (int64_t j = 0; j < Cg; ++j) {
            Lanes la, lq;
            grad_run(la, lq, gr + j * S, xr + j * S, mu, S);
            const double pa = la.fold(), pq = lq.fold();
            const double wv = w ? w[c0 + j] : 1.0;
            sg += wv * pa;
            sgx += wv * pq;
            if (affine_grads) {
              bw[c0 + j] += pq * rs;
              bb[c0 + j] += pa;
            }
          }
        }
        const double rd = rs, Ld = static_cast<double>(L);
        const float c2 = static_cast<float>(-rd * rd * rd * sgx / Ld);
        const float c3 = static_cast<float>(-rd * sg / Ld);
        if (S == 1) {
#pragma omp simd
          for (int64_t j = 0; j < Cg; ++j)
            o[j] = from_float<T>(norm_backward_dx(to_float(gr[j]), to_float(xr[j]) - mu, w ? w[c0 + j] * rs : rs, c2,
                                                  c3));
        } else {
          for (int64_t j = 0; j < Cg; ++j)
            plane_dx(gr + j * S, xr + j * S, o + j * S, S, mu, w ? w[c0 + j] * rs : rs, c2, c3);
        }
      }
  }
  if (!affine_grads) return;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double a = 0.0, q = 0.0;
    for (int64_t blk = 0; blk < blocks; ++blk) {
      q += pdw[blk * C + c];
      a += pdb[blk * C + c];
    }
    if (dw != nullptr) store_grad(dw + c, static_cast<float>(q), accumulate);
    if (db != nullptr) store_grad(db + c, static_cast<float>(a), accumulate);
  }
}

}  // namespace

void row_norm_forward(const NormShape& s, const float* x, const float* w, const float* b, float* y, float* mean,
                      float* rstd, double eps) {
  row_forward(s, x, w, b, y, mean, rstd, eps);
}
void row_norm_forward(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y, float* mean,
                      float* rstd, double eps) {
  row_forward(s, x, w, b, y, mean, rstd, eps);
}
void row_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w, const float* mean,
                       const float* rstd, float* dx, float* dw, float* db, bool accumulate) {
  row_backward(s, dy, x, w, mean, rstd, dx, dw, db, accumulate);
}
void row_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w, const float* mean,
                       const float* rstd, bf16* dx, float* dw, float* db, bool accumulate) {
  row_backward(s, dy, x, w, mean, rstd, dx, dw, db, accumulate);
}

}  // namespace FASTOPT_ISA

#ifdef FASTOPT_ISA_BASELINE
void batch_norm_forward_train(const NormShape& s, const float* x, const float* w, const float* b, float* y, float* mean,
                              float* rstd, float* running_mean, float* running_var, double factor, double eps) {
  FASTOPT_CPU_DISPATCH(batch_norm_forward_train(s, x, w, b, y, mean, rstd, running_mean, running_var, factor, eps))
}
void batch_norm_forward_eval(const NormShape& s, const float* x, const float* w, const float* b, float* y, float* mean,
                             float* rstd, const float* running_mean, const float* running_var, double eps) {
  FASTOPT_CPU_DISPATCH(batch_norm_forward_eval(s, x, w, b, y, mean, rstd, running_mean, running_var, eps))
}
void batch_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w, const float* mean,
                         const float* rstd, bool training, float* dx, float* dw, float* db, bool accumulate) {
  FASTOPT_CPU_DISPATCH(batch_norm_backward(s, dy, x, w, mean, rstd, training, dx, dw, db, accumulate))
}
void batch_norm_forward_train(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y, float* mean,
                              float* rstd, float* running_mean, float* running_var, double factor, double eps) {
  FASTOPT_CPU_DISPATCH(batch_norm_forward_train(s, x, w, b, y, mean, rstd, running_mean, running_var, factor, eps))
}
void batch_norm_forward_eval(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y, float* mean,
                             float* rstd, const float* running_mean, const float* running_var, double eps) {
  FASTOPT_CPU_DISPATCH(batch_norm_forward_eval(s, x, w, b, y, mean, rstd, running_mean, running_var, eps))
}
void batch_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w, const float* mean,
                         const float* rstd, bool training, bf16* dx, float* dw, float* db, bool accumulate) {
  FASTOPT_CPU_DISPATCH(batch_norm_backward(s, dy, x, w, mean, rstd, training, dx, dw, db, accumulate))
}
void row_norm_forward(const NormShape& s, const float* x, const float* w, const float* b, float* y, float* mean,
                      float* rstd, double eps) {
  FASTOPT_CPU_DISPATCH(row_norm_forward(s, x, w, b, y, mean, rstd, eps))
}
void row_norm_backward(const NormShape& s, const float* dy, const float* x, const float* w, const float* mean,
                       const float* rstd, float* dx, float* dw, float* db, bool accumulate) {
  FASTOPT_CPU_DISPATCH(row_norm_backward(s, dy, x, w, mean, rstd, dx, dw, db, accumulate))
}
void row_norm_forward(const NormShape& s, const bf16* x, const float* w, const float* b, bf16* y, float* mean,
                      float* rstd, double eps) {
  FASTOPT_CPU_DISPATCH(row_norm_forward(s, x, w, b, y, mean, rstd, eps))
}
void row_norm_backward(const NormShape& s, const bf16* dy, const bf16* x, const float* w, const float* mean,
                       const float* rstd, bf16* dx, float* dw, float* db, bool accumulate) {
  FASTOPT_CPU_DISPATCH(row_norm_backward(s, dy, x, w, mean, rstd, dx, dw, db, accumulate))
}
#endif

}  // namespace fastopt::cpu

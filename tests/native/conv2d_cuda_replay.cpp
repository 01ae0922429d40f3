// Usage: conv2d_cuda_replay [shapes=300] [seed]; tests/test_conv2d_cuda_replay.py runs it.
// Host replay of cuda/conv2d.cu's kernels: every kernel's per-thread work (the FASTOPT_HD functions of
// cuda/conv2d_tiles.cuh) run as loops over (block, thread) in the kernel's phase order, compared with
// a naive float64 conv on random data over a sweep of shapes.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include <cmath>
#include <climits>
#include "conv2d_tiles.cuh"
using namespace fastopt;
using namespace fastopt::cuda::conv;

static std::mt19937_64 rng(1234);
static int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
static std::vector<float> randv(int64_t n) {
  std::vector<float> v(n);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& x : v) x = u(rng);
  return v;
}

struct Ref {
  std::vector<double> y, yabs;
};
// naive float64 forward / data-grad / weight-grad / bias-grad, with sums of |terms| for tolerances
static void ref_all(const Dims& d, const std::vector<float>& x, const std::vector<float>& w, const float* b,
                    const std::vector<float>& dy, Ref& y, Ref& dx, Ref& dw, Ref& db) {
  y.y.assign(d.N * d.K * d.P * d.Q, 0);
  y.yabs = y.y;
  dx.y.assign(d.N * d.C * d.H * d.W, 0);
  dx.yabs = dx.y;
  dw.y.assign(d.K * d.Cg * d.R * d.S, 0);
  dw.yabs = dw.y;
  db.y.assign(d.K, 0);
  db.yabs = db.y;
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t k = 0; k < d.K; ++k)
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          int64_t yi = ((n * d.K + k) * d.P + p) * d.Q + q;
          int64_t g = k / d.Kg;
          if (b) {
            y.y[yi] += b[k];
            y.yabs[yi] += std::fabs(b[k]);
          }
          db.y[k] += dy[yi];
          db.yabs[k] += std::fabs(dy[yi]);
          for (int64_t cl = 0; cl < d.Cg; ++cl)
            for (int64_t r = 0; r < d.R; ++r)
              for (int64_t s = 0; s < d.S; ++s) {
                int64_t h = p * d.sh - d.ph + r * d.dh, ww = q * d.sw - d.pw + s * d.dw;
                if (h < 0 || h >= d.H || ww < 0 || ww >= d.W) continue;
                int64_t xi = ((n * d.C + g * d.Cg + cl) * d.H + h) * d.W + ww,
                        wi = ((k * d.Cg + cl) * d.R + r) * d.S + s;
                y.y[yi] += double(x[xi]) * w[wi];
                y.yabs[yi] += std::fabs(double(x[xi]) * w[wi]);
                dx.y[xi] += double(dy[yi]) * w[wi];
                dx.yabs[xi] += std::fabs(double(dy[yi]) * w[wi]);
                dw.y[wi] += double(dy[yi]) * x[xi];
                dw.yabs[wi] += std::fabs(double(dy[yi]) * x[xi]);
              }
        }
}

static int failures = 0, checks = 0;
static double g_rel_tol = 2e-6;   // float32 FMA chains; TF32 runs use 1.5e-3 (two 2^-11 roundings)
static void compare(const char* what, const Dims& d, const Ref& r, const std::vector<float>& got) {
  ++checks;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double tol = g_rel_tol * r.yabs[i] + 1e-30;   // float32 fma chain: |err| <= ~n eps sum|terms|, n small here
    double e = std::fabs(got[i] - r.y[i]);
    if (!(e <= tol)) {
      if (failures < 20)
        printf("FAIL %s N%ld C%ld H%ld W%ld K%ld R%ld S%ld s%ld,%ld p%ld,%ld d%ld,%ld g%ld at %zu: got %g want %g\n",
               what, d.N, d.C, d.H, d.W, d.K, d.R, d.S, d.sh, d.sw, d.ph, d.pw, d.dh, d.dw, d.G, i, got[i], r.y[i]);
      ++failures;
      return;
    }
    worst = std::max(worst, e / (r.yabs[i] + 1e-30));
  }
}

// The device's tile_mma for a whole block: each lane's fragments come from the header's
// mma_fragments (the code the GPU runs); the mma itself is applied here from the PTX ISA's
// m16n8k8 .tf32 layout, written independently of the header (g = lane >> 2, t = lane % 4):
//   A: a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4); B: b0 (k=t, n=g) b1 (k=t+4, n=g);
//   C: c0 (g, 2t) c1 (g, 2t+1) c2 (g+8, 2t) c3 (g+8, 2t+1)
// and lane L's c_q of fragment (mi, ni) is its accumulator number (mi NI + ni) 4 + q.
template <int BM, int BN>
static void mma_step(const Tile<BM, BN>& tile, std::vector<float>& acc) {
  constexpr int MI = Mma<BM, BN>::MI, NI = Mma<BM, BN>::NI, PER = Tile<BM, BN>::TM * Tile<BM, BN>::TN;
  for (int warp = 0; warp < kThreads / 32; ++warp) {
    float fa[32][MI][4], fb[32][NI][2];
    for (int lane = 0; lane < 32; ++lane) mma_fragments<BM, BN>(tile, warp * 32 + lane, fa[lane], fb[lane]);
    for (int mi = 0; mi < MI; ++mi)
      for (int ni = 0; ni < NI; ++ni) {
        float A[16][8], B[8][8];
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, t = lane % 4;
          A[g][t] = fa[lane][mi][0];
          A[g + 8][t] = fa[lane][mi][1];
          A[g][t + 4] = fa[lane][mi][2];
          A[g + 8][t + 4] = fa[lane][mi][3];
          B[t][g] = fb[lane][ni][0];
          B[t + 4][g] = fb[lane][ni][1];
        }
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, t = lane % 4;
          const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
          for (int q = 0; q < 4; ++q) {
            float sum = 0.0f;
            for (int k = 0; k < 8; ++k) sum = fmaf(A[rows[q]][k], B[k][cols[q]], sum);
            acc[(warp * 32 + lane) * PER + (mi * NI + ni) * 4 + q] += sum;
          }
        }
      }
  }
}

// The gemm_kernel of conv2d.cu, replayed: same calls, same double-buffer order; a phase between two
// __syncthreads() runs thread by thread.
template <class Prob, int BM, int BN>
static void emulate_gemm(const Prob& pb, int64_t z) {
  const bool tf32 = g_rel_tol > 1e-4;
  using T = Tile<BM, BN>;
  const int gx = int(ceil_div(pb.N, BN)), gy = int(ceil_div(pb.M, BM));
  std::vector<T> tiles(2);
  std::vector<float> acc(kThreads * T::TM * T::TN), ra(kThreads * T::LA), rb(kThreads * T::LB);
  for (int bz = 0; bz < z; ++bz)
    for (int by = 0; by < gy; ++by)
      for (int bx = 0; bx < gx; ++bx) {
        const int split = bz % pb.splits, g = bz / pb.splits, m0 = by * BM, n0 = bx * BN;
        int kb, ke;
        split_range(pb.Kd, pb.splits, split, kb, ke);
        std::fill(acc.begin(), acc.end(), 0.0f);
        std::fill((float*)tiles.data(), (float*)(tiles.data() + 2), NAN);  // stale tile data must never be read
        auto A = [&](int t) -> float (&)[T::TM][T::TN] {
          return *reinterpret_cast<float (*)[T::TM][T::TN]>(&acc[t * T::TM * T::TN]);
        };
        auto RA = [&](int t) -> float (&)[T::LA] { return *reinterpret_cast<float (*)[T::LA]>(&ra[t * T::LA]); };
        auto RB = [&](int t) -> float (&)[T::LB] { return *reinterpret_cast<float (*)[T::LB]>(&rb[t * T::LB]); };
        if (kb < ke) {
          for (int t = 0; t < kThreads; ++t) {
            load_tiles<Prob, BM, BN>(pb, g, t, m0, n0, kb, ke, RA(t), RB(t));
            store_tiles<Prob, BM, BN>(tiles[0], t, RA(t), RB(t));
          }
          int buf = 0;
          for (int k0 = kb; k0 < ke; k0 += kBK) {
            const bool more = k0 + kBK < ke;
            if (more) std::fill((float*)&tiles[buf ^ 1], (float*)(&tiles[buf ^ 1] + 1), NAN);
            if (tf32) mma_step<BM, BN>(tiles[buf], acc);   // warp-collective: all lanes at once
            for (int t = 0; t < kThreads; ++t) {
              if (more) load_tiles<Prob, BM, BN>(pb, g, t, m0, n0, k0 + kBK, ke, RA(t), RB(t));
              if (!tf32) tile_fma<BM, BN>(tiles[buf], t, A(t));
              if (more) store_tiles<Prob, BM, BN>(tiles[buf ^ 1], t, RA(t), RB(t));
            }
            buf ^= 1;
          }
        }
        for (int t = 0; t < kThreads; ++t) {
          if (tf32) store_outputs_mma<Prob, BM, BN>(pb, g, split, t, m0, n0, A(t));
          else store_outputs<Prob, BM, BN>(pb, g, split, t, m0, n0, A(t));
        }
      }
}

template <int BM, int BN>
static void gemm_sweep(const Dims& d, const std::vector<float>& x, const std::vector<float>& w, const float* b,
                       const std::vector<float>& dy, Ref& ry, Ref& rdx, Ref& rdw) {
  const Dims32 e = to_dims32(d);
  std::vector<float> y(ry.y.size(), NAN), dx(rdx.y.size(), NAN), dw(rdw.y.size(), NAN);
  if (d.Cg * d.R * d.S > 0) {
    if (is_unit(d)) {
      ForwardProblem<true> pb{e, e.Kg, e.N * e.PQ, e.Cg, 1, x.data(), w.data(), b, y.data()};
      emulate_gemm<decltype(pb), BM, BN>(pb, d.G);
      compare("fwd unit gemm", d, ry, y);
      std::fill(y.begin(), y.end(), NAN);
    }
    ForwardProblem<false> pb{e, e.Kg, e.N * e.PQ, e.Cg * e.RS, 1, x.data(), w.data(), b, y.data()};
    emulate_gemm<decltype(pb), BM, BN>(pb, d.G);
    compare("fwd gemm", d, ry, y);
  }
  if (d.Kg * d.R * d.S > 0) {
    if (is_unit(d)) {
      BackwardDataProblem<true> pb{e, e.Cg, e.N * e.HW, e.Kg, 1, dy.data(), w.data(), dx.data()};
      emulate_gemm<decltype(pb), BM, BN>(pb, d.G);
      compare("dgrad unit gemm", d, rdx, dx);
      std::fill(dx.begin(), dx.end(), NAN);
    }
    BackwardDataProblem<false> pb{e, e.Cg, e.N * e.HW, e.Kg * e.RS, 1, dy.data(), w.data(), dx.data()};
    emulate_gemm<decltype(pb), BM, BN>(pb, d.G);
    compare("dgrad gemm", d, rdx, dx);
  }
  const int64_t numel = int64_t(rdw.y.size());
  for (int splits : {1, 2, 3, 7}) {
    std::vector<float> part(splits * numel, NAN);
    BackwardWeightProblem pb{e,      e.Kg,      e.Cg * e.RS, e.N * e.PQ,
                             splits, dy.data(), x.data(),    splits > 1 ? part.data() : dw.data()};
    emulate_gemm<decltype(pb), BM, BN>(pb, d.G * splits);
    if (splits > 1)
      for (int64_t i = 0; i < numel; ++i) dw[i] = split_sum_at(part.data(), numel, splits, i);
    compare("wgrad gemm", d, rdw, dw);
    std::fill(dw.begin(), dw.end(), NAN);
  }
}

// Divider against '/': every d < 2^12 with n around multiples of d and at the top of the range,
// then random d and n up to 2^31 - 1.
static void divider_check() {
  int64_t bad = 0, tried = 0;
  auto one = [&](uint32_t d, int64_t n) {
    if (n < 0 || n > INT32_MAX) return;
    ++tried;
    if (Divider::make(d).div(int(n)) != int(n / d)) {
      if (bad++ < 5) printf("Divider FAIL %u %ld\n", d, n);
    }
  };
  for (uint32_t d = 1; d < 4096; ++d) {
    for (int64_t n = 0; n < 3 * d + 2; ++n) one(d, n);
    for (int64_t m : {int64_t{INT32_MAX} / d, int64_t{INT32_MAX} / d - 1, int64_t{1000}})
      for (int64_t e = -1; e <= 1; ++e) one(d, m * d + e);
    one(d, INT32_MAX);
  }
  for (int i = 0; i < 20000000; ++i) {
    const uint32_t d = uint32_t(rnd(1, INT32_MAX >> rnd(0, 30)));
    one(d, rnd(0, INT32_MAX));
    one(d, int64_t(rnd(0, INT32_MAX / int(d))) * d - rnd(0, 1));
  }
  printf("Divider: %ld cases, %ld failures\n", tried, bad);
  failures += int(bad);
}

// Planning on shapes too big to run here: int32 limits route to the gather, grids stay in CUDA's
// limits, split-K scratch stays bounded.
static Dims shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t G, int64_t stride = 1) {
  Conv2dShape s{N, C, H, W, K, R, R, 0, 0, stride, stride, R / 2, R / 2, 1, 1, G};
  s.P = (H + 2 * (R / 2) - (R - 1) - 1) / stride + 1;
  s.Q = (W + 2 * (R / 2) - (R - 1) - 1) / stride + 1;
  return make_dims(s);
}
static void expect(bool ok, const char* what) {
  ++checks;
  if (!ok) {
    ++failures;
    printf("PLAN FAIL %s\n", what);
  }
}
static void planning_check() {
  expect(forward_path(shape(128, 64, 56, 56, 64, 3, 1)) == Path::Gemm, "3x3 56x56 forward is a GEMM");
  expect(backward_data_path(shape(128, 64, 56, 56, 64, 3, 1, 2)) == Path::Gemm, "strided data-grad is a GEMM");
  expect(forward_path(shape(128, 256, 14, 14, 512, 1, 1)) == Path::UnitGemm, "1x1 forward is the plain GEMM");
  expect(forward_path(shape(128, 512, 14, 14, 512, 3, 512)) == Path::Depthwise, "depthwise forward");
  expect(backward_weight_path(shape(128, 512, 14, 14, 512, 3, 512)) == Path::Depthwise, "depthwise weight-grad");
  expect(backward_weight_path(shape(128, 64, 56, 56, 64, 3, 1)) == Path::Gemm, "3x3 weight-grad is a GEMM");
  // N P Q = 2^31 + : past int32, gather
  expect(forward_path(shape(1, 64, 47000, 47000, 64, 3, 1)) == Path::Gather, "N P Q past int32 -> gather");
  expect(forward_path(shape(1, 1, 47000, 47000, 1, 3, 1)) == Path::Gather, "depthwise plane past int32 -> gather");
  expect(forward_path(shape(1, 64, 3000, 3000, 64, 3, 1)) == Path::Gemm, "N P Q = 9e6 is a GEMM");
  expect(forward_path(shape(1, 1 << 20, 4, 4, 1 << 20, 1, 1 << 18)) == Path::Gather, "grid z past 65535 -> gather");
  for (int64_t G : {1, 7, 300, 65535})
    for (int64_t Kd : {int64_t{8}, int64_t{600}, int64_t{401408}, int64_t{2000000000}})
      for (int64_t MN : {16, 64, 65, 512, 4608}) {
        const int64_t numel = G * MN * MN;
        const bool big = big_weight_tiles(MN, MN);
        const int sp = weight_grad_splits(MN, MN, Kd, G, numel, big, 2 * 132);
        expect(sp >= 1 && G * sp <= kMaxGridYZ && (sp == 1 || int64_t(sp) * numel <= (int64_t{1} << 26)) &&
                   (sp == 1 || Kd / sp >= 512),
               "split-K bounds");
      }
}

int main(int argc, char** argv) {
  int iters = argc > 1 ? atoi(argv[1]) : 300;
  if (argc > 2) rng.seed(std::strtoull(argv[2], nullptr, 10));
  divider_check();
  planning_check();
  expect(to_tf32(1.0f + 0x1p-11f) == 1.0f + 0x1p-10f, "tf32 tie rounds away");
  expect(to_tf32(1.0f + 0x1p-12f) == 1.0f, "tf32 below half rounds down");
  expect(to_tf32(-(1.0f + 0x1p-11f)) == -(1.0f + 0x1p-10f), "tf32 negative tie");
  expect(to_tf32(1.0f + 3 * 0x1p-11f) == 1.0f + 0x1p-9f, "tf32 tie at odd");
  int paths[3][4] = {};
  for (int it = 0; it < iters; ++it) {
    Conv2dShape s{};
    int G = std::vector<int>{1, 1, 2, 3, 0}[rnd(0, 4)];   // 0 = depthwise
    const int big = it % 3 == 0 ? (it % 2 ? 140 : 40) : 7;   // past 64 and 128: every tile row and column group
    int Cg = rnd(1, big), Kg = rnd(1, big);
    s.N = rnd(1, 3);
    if (G == 0) {
      G = rnd(1, 9);
      Cg = 1;
      Kg = rnd(1, 3);
    }
    s.groups = G;
    s.C = int64_t(G) * Cg;
    s.K = int64_t(G) * Kg;
    s.H = rnd(1, big > 40 ? 9 : 13);
    s.W = rnd(1, big > 40 ? 9 : 13);
    s.R = rnd(1, 5);
    s.S = rnd(1, 5);
    s.stride_h = rnd(1, 3);
    s.stride_w = rnd(1, 3);
    s.pad_h = rnd(0, 2);
    s.pad_w = rnd(0, 2);
    s.dil_h = rnd(1, 3);
    s.dil_w = rnd(1, 3);
    if (it % 7 == 0) {
      s.R = s.S = 1;
      s.stride_h = s.stride_w = 1;
      s.pad_h = s.pad_w = 0;
      s.dil_h = s.dil_w = 1;
    }
    if (it % 11 == 0) {
      s.N = 0;
    }   // empty batch
    if (it % 13 == 0 && big < 140) {
      s.H = 60;
      s.W = 37;
      s.N = 2;
    }   // N P Q past one 128 tile and several k steps
    int64_t ph = s.H + 2 * s.pad_h - s.dil_h * (s.R - 1) - 1, pw = s.W + 2 * s.pad_w - s.dil_w * (s.S - 1) - 1;
    if (ph < 0 || pw < 0) {
      --it;
      continue;
    }
    s.P = ph / s.stride_h + 1;
    s.Q = pw / s.stride_w + 1;
    const Dims d = make_dims(s);
    auto x = randv(d.N * d.C * d.H * d.W), w = randv(d.K * d.Cg * d.R * d.S), bias = randv(d.K),
         dy = randv(d.N * d.K * d.P * d.Q);
    const float* b = it % 2 ? bias.data() : nullptr;
    Ref ry, rdx, rdw, rdb;
    ref_all(d, x, w, b, dy, ry, rdx, rdw, rdb);
    paths[0][int(forward_path(d))]++;
    paths[1][int(backward_data_path(d))]++;
    paths[2][int(backward_weight_path(d))]++;
    // stage 1 gathers (grid-stride loops; the per-element work is what the thread does)
    std::vector<float> y(ry.y.size()), dx(rdx.y.size()), dw(rdw.y.size()), db(d.K);
    for (int64_t i = 0; i < int64_t(y.size()); ++i) y[i] = forward_at(d, x.data(), w.data(), b, i);
    for (int64_t i = 0; i < int64_t(dx.size()); ++i) dx[i] = backward_data_at(d, dy.data(), w.data(), i);
    for (int64_t e = 0; e < int64_t(dw.size()); ++e) {
      float v = 0;
      for (int t = 0; t < kThreads; ++t) v += backward_weight_part(d, dy.data(), x.data(), e, t, kThreads);
      dw[e] = v;
    }
    for (int64_t k = 0; k < d.K; ++k) {
      float v = 0;
      for (int t = 0; t < kThreads; ++t) v += backward_bias_part(d, dy.data(), k, t, kThreads);
      db[k] = v;
    }
    compare("fwd gather", d, ry, y);
    compare("dgrad gather", d, rdx, dx);
    compare("wgrad gather", d, rdw, dw);
    compare("bias", d, rdb, db);
    if (!fits_int32(d)) {
      printf("unexpected: shape does not fit int32\n");
      return 1;
    }
    if (d.Cg == 1) {   // depthwise direct kernels, grid as launched
      const Dims32 e = to_dims32(d);
      std::fill(y.begin(), y.end(), NAN);
      std::fill(dx.begin(), dx.end(), NAN);
      std::vector<float> tile(kDwTileFloats);
      const DwPlan fp = dw_forward_plan(d), bp = dw_backward_data_plan(d);
      if (fp.band < 1 || bp.band < 1) {
        printf("unexpected: depthwise tile does not fit\n");
        return 1;
      }
      for (int64_t plane = 0; plane < d.N * d.K; ++plane)
        for (int64_t by = 0; by < ceil_div(d.P, fp.band); ++by) {
          std::fill(tile.begin(), tile.end(), NAN);   // what the tile's load does not write stays NaN
          for (int t = 0; t < kThreads; ++t)
            dw_forward_load(e, fp, x.data(), int(plane), int(by), tile.data(), t, kThreads);
          for (int t = 0; t < kThreads; ++t)
            dw_forward_compute<0, 0>(e, fp, tile.data(), w.data(), b, y.data(), int(plane), int(by), t, kThreads);
        }
      for (int64_t plane = 0; plane < d.N * d.C; ++plane)
        for (int64_t by = 0; by < ceil_div(d.H, bp.band); ++by)
          for (int kl = 0; kl < e.Kg; ++kl) {
            std::fill(tile.begin(), tile.end(), NAN);
            for (int t = 0; t < kThreads; ++t)
              dw_backward_data_load(e, bp, dy.data(), int(plane), int(by), kl, tile.data(), t, kThreads);
            for (int t = 0; t < kThreads; ++t)
              dw_backward_data_compute<0, 0, false>(e, bp, tile.data(), w.data(), dx.data(), int(plane), int(by), kl, t,
                                                    kThreads);
          }
      compare("fwd depthwise", d, ry, y);
      compare("dgrad depthwise", d, rdx, dx);
      std::fill(dw.begin(), dw.end(), NAN);
      for (int64_t el = 0; el < d.K * d.R * d.S; ++el) {
        const int k = int(el / e.RS), rs = int(el - k * e.RS);
        float v = 0;
        for (int t = 0; t < kThreads; ++t)
          v += depthwise_backward_weight_part(e, dy.data(), x.data(), k, rs, t, kThreads);
        dw[el] = v;
      }
      compare("wgrad depthwise", d, rdw, dw);
    }
    gemm_sweep<64, 64>(d, x, w, b, dy, ry, rdx, rdw);
    gemm_sweep<128, 128>(d, x, w, b, dy, ry, rdx, rdw);
    gemm_sweep<128, 64>(d, x, w, b, dy, ry, rdx, rdw);
    gemm_sweep<64, 128>(d, x, w, b, dy, ry, rdx, rdw);
    if (it % 2 == 0) {   // TF32 tiles (tensor-core path), every other shape
      g_rel_tol = 1.5e-3;
      gemm_sweep<64, 64>(d, x, w, b, dy, ry, rdx, rdw);
      gemm_sweep<128, 128>(d, x, w, b, dy, ry, rdx, rdw);
      gemm_sweep<128, 64>(d, x, w, b, dy, ry, rdx, rdw);
      gemm_sweep<64, 128>(d, x, w, b, dy, ry, rdx, rdw);
      g_rel_tol = 2e-6;
    }
  }
  printf("paths fwd   gather/depthwise/gemm/unit: %d %d %d %d\n", paths[0][0], paths[0][1], paths[0][2], paths[0][3]);
  printf("paths dgrad gather/depthwise/gemm/unit: %d %d %d %d\n", paths[1][0], paths[1][1], paths[1][2], paths[1][3]);
  printf("paths wgrad gather/depthwise/gemm: %d %d %d\n", paths[2][0], paths[2][1], paths[2][2]);
  printf("%d comparisons, %d failures\n", checks, failures);
  return failures != 0;
}

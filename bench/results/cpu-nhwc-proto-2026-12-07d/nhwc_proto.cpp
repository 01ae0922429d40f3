// Prototype: NHWC bf16 3x3/1 conv forward with no packing (broadcast channel pairs from x as it
// lies, weights in VNNI rows over K lanes), to measure what the layout would give on this CPU.
#include <immintrin.h>
#include <omp.h>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include <algorithm>
using u16 = uint16_t;
static inline u16 f2b(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (u16)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
static inline float b2f(u16 b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

template <int MR, int NV>
static inline void block(const u16* const* rows_ptr /*[9][MR]*/, const bool* tap_ok, const u16* wp, int C, int K,
                         u16* out, int count) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int t = 0; t < 9; ++t) {
    if (!tap_ok[t]) continue;
    const u16* const* rp = rows_ptr + t * MR;
    const u16* wt = wp + (size_t)t * (C / 2) * K * 2;
    for (int cp = 0; cp < C / 2; ++cp) {
      __m512i b[NV];
      for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(wt + (size_t)cp * K * 2 + 32 * v);
      for (int i = 0; i < MR; ++i) {
        int32_t pr;
        memcpy(&pr, rp[i] + 2 * cp, 4);
        const __m512i a = _mm512_set1_epi32(pr);
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], (__m512bh)a, (__m512bh)b[v]);
      }
    }
  }
  for (int i = 0; i < count; ++i)
    for (int v = 0; v < NV; ++v) {
      __m512i u = _mm512_castps_si512(acc[i][v]);
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                                                                         _mm512_and_si512(_mm512_srli_epi32(u, 16),
                                                                                          _mm512_set1_epi32(1)))),
                                    16);
      _mm256_storeu_si256((__m256i*)(out + (size_t)i * K + 16 * v), _mm512_cvtepi32_epi16(r));
    }
}

template <int MR, int NV>
void conv(const u16* x, const u16* wp, u16* y, int N, int H, int W, int C, int K, const u16* zeros) {
#pragma omp parallel for schedule(static)
  for (int np = 0; np < N * H; ++np) {
    const int n = np / H, p = np % H;
    for (int q0 = 0; q0 < W; q0 += MR) {
      const int count = std::min(MR, W - q0);
      const u16* ptrs[9 * MR];
      bool ok[9];
      for (int r = 0; r < 3; ++r)
        for (int s = 0; s < 3; ++s) {
          const int t = r * 3 + s, h = p + r - 1;
          ok[t] = h >= 0 && h < H;
          for (int i = 0; i < MR; ++i) {
            const int w = q0 + i + s - 1;
            ptrs[t * MR + i] = (ok[t] && w >= 0 && w < W && i < count) ? x + (((size_t)n * H + h) * W + w) * C : zeros;
          }
        }
      block<MR, NV>(ptrs, ok, wp, C, K, y + (((size_t)n * H + p) * W + q0) * K, count);
    }
  }
}

int main(int argc, char** argv) {
  int N = 128, C = atoi(argv[1]), K = atoi(argv[2]), H = atoi(argv[3]), W = H;
  std::mt19937 g(0);
  std::normal_distribution<float> d;
  std::vector<u16> x((size_t)N * H * W * C), w((size_t)K * C * 9), wp((size_t)9 * C * K), y((size_t)N * H * W * K),
      zeros(C, 0);
  for (auto& v : x) v = f2b(d(g));
  for (auto& v : w) v = f2b(0.1f * d(g));
  // wp[t][cp][k][2] = w[k][2cp+e][r][s]
  for (int t = 0; t < 9; ++t)
    for (int cp = 0; cp < C / 2; ++cp)
      for (int k = 0; k < K; ++k)
        for (int e = 0; e < 2; ++e)
          wp[(((size_t)t * (C / 2) + cp) * K + k) * 2 + e] = w[((size_t)k * C + 2 * cp + e) * 9 + t];
  auto run = [&] {
    if (K == 32) conv<12, 2>(x.data(), wp.data(), y.data(), N, H, W, C, K, zeros.data());
    else conv<6, 4>(x.data(), wp.data(), y.data(), N, H, W, C, K, zeros.data());
  };
  run();
  // check a few outputs against a double reference
  double maxerr = 0;
  std::mt19937 g2(1);
  for (int it = 0; it < 200; ++it) {
    int n = g2() % N, p = g2() % H, q = g2() % W, k = g2() % K;
    double s = 0;
    for (int r = 0; r < 3; ++r)
      for (int ss = 0; ss < 3; ++ss) {
        int h = p + r - 1, ww = q + ss - 1;
        if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
        for (int c = 0; c < C; ++c)
          s += (double)b2f(x[(((size_t)n * H + h) * W + ww) * C + c]) * b2f(w[((size_t)k * C + c) * 9 + r * 3 + ss]);
      }
    maxerr = std::max(maxerr, std::abs(s - b2f(y[(((size_t)n * H + p) * W + q) * K + k])) / (std::abs(s) + 1e-3));
  }
  std::vector<double> ts;
  for (int rep = 0; rep < 15; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    run();
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
  }
  std::sort(ts.begin(), ts.end());
  double fl = 2.0 * N * H * W * K * C * 9;
  printf("NHWC proto %d>%d@%d: median %.2f ms, %.0f GF/s (padded flops), max rel err %.2g\n", C, K, H, ts[7],
         fl / ts[7] / 1e6, maxerr);
}

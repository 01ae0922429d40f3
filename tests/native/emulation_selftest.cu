// Self-test of the CUDA host emulation (cuda/emulation): built by tests/test_cuda_emulator.py with
// the host compiler, as the emulated build compiles cuda/*.cu. `selftest checks` runs the checks
// below and prints "ok"; `selftest deadlock` and `selftest overrun` must abort with a message.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <vector>

#define REQUIRE(cond)                                       \
  do {                                                      \
    if (!(cond)) {                                          \
      std::printf("FAILED line %d: %s\n", __LINE__, #cond); \
      std::exit(1);                                         \
    }                                                       \
  } while (0)

// Thread 0 gets the block's sum of v through two rounds of shuffles and a shared array.
__global__ void block_sum(const float* x, float* out) {
  __shared__ float warp_sum[8];
  float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) warp_sum[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < 8 ? warp_sum[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
  }
}

// Each thread reads its neighbour's write: right with the barrier, a race without it.
__global__ void neighbour(int* out, int value, bool barrier) {
  __shared__ int s[256];
  s[threadIdx.x] = value + static_cast<int>(threadIdx.x);
  if (barrier) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

__global__ void any_odd(const int* x, int* out) {
  const int r = __syncthreads_or(x[threadIdx.x] % 2);
  if (threadIdx.x == 0) out[0] = r;
}

// One warp: D (16 x 8) = A (16 x 8, row-major) B (8 x 8, row-major) through the fragments.
__global__ void one_mma(const float* A, const float* B, float* D) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const float a[4] = {A[g * 8 + t], A[(g + 8) * 8 + t], A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4]};
  const float b[2] = {B[t * 8 + g], B[(t + 4) * 8 + g]};
  float d[4] = {0, 0, 0, 0};
  fastopt_emulation::mma_m16n8k8_tf32(d[0], d[1], d[2], d[3], a, b);
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// One warp: D (16 x 8) = C + A (16 x 16, row-major bf16 bits) B (16 x 8, row-major bf16 bits), the
// fragments built from PTX's m16n8k16 table (g = lane / 4, t = lane % 4): a_i at row g + 8 (i in
// {2,3,6,7}), column 2 t + i % 2 + 8 (i >= 4); b_i at row 2 t + i % 2 + 8 (i >= 2), column g; two
// elements per 32-bit register, the lower index in the low half.
__global__ void one_mma_bf16(const uint16_t* A, const uint16_t* B, const float* C, float* D) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint16_t a[8], b[4];
  for (int i = 0; i < 8; ++i) a[i] = A[(g + 8 * ((i / 2) % 2)) * 16 + 2 * t + i % 2 + 8 * (i / 4)];
  for (int i = 0; i < 4; ++i) b[i] = B[(2 * t + i % 2 + 8 * (i / 2)) * 8 + g];
  uint32_t ra[4], rb[2];
  for (int i = 0; i < 4; ++i) ra[i] = a[2 * i] | uint32_t{a[2 * i + 1]} << 16;
  for (int i = 0; i < 2; ++i) rb[i] = b[2 * i] | uint32_t{b[2 * i + 1]} << 16;
  float d[4];
  for (int q = 0; q < 4; ++q) d[q] = C[(g + 8 * (q / 2)) * 8 + 2 * t + q % 2];
  fastopt_emulation::mma_m16n8k16_bf16(d[0], d[1], d[2], d[3], ra, rb);
  for (int q = 0; q < 4; ++q) D[(g + 8 * (q / 2)) * 8 + 2 * t + q % 2] = d[q];
}

// Reads shared memory before any write: garbage on a GPU, NaN here in every block, although
// each block leaves 1.0 behind.
__global__ void read_fresh_shared(float* out) {
  __shared__ float s[32];
  if (threadIdx.x == 0) out[blockIdx.x] = s[5];
  __syncthreads();
  s[threadIdx.x] = 1.0f;
}

__global__ void noop(float*) {}

// Lanes 0-15 wait at the block barrier, lanes 16-31 of the same warp at a shuffle that needs them.
__global__ void divergent_barrier(float* p) {
  if (threadIdx.x < 16) __syncthreads();
  else p[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void write_at(float* p, int i) {
  if (threadIdx.x == 0) p[i] = 1.0f;
}

template <class T>
T* device_copy(const std::vector<T>& h) {
  void* d = nullptr;
  REQUIRE(cudaMalloc(&d, h.size() * sizeof(T)) == cudaSuccess);
  REQUIRE(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  return static_cast<T*>(d);
}

template <class T>
std::vector<T> host_copy(const T* d, size_t n) {
  std::vector<T> h(n);
  REQUIRE(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}

void checks() {
  {  // shuffles and barriers
    std::vector<float> x(3 * 256);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 97);
    float* dx = device_copy(x);
    float* dout = device_copy(std::vector<float>(3));
    block_sum<<<3, 256>>>(dx, dout);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    const auto out = host_copy(dout, 3);
    for (int b = 0; b < 3; ++b) {
      double want = 0;
      for (int i = 0; i < 256; ++i) want += x[b * 256 + i];
      REQUIRE(out[b] == static_cast<float>(want));
    }
    cudaFree(dx);
    cudaFree(dout);
  }
  {  // a missing barrier shows within a few launches (resume order changes per launch)
    int* d = device_copy(std::vector<int>(256));
    bool raced = false;
    for (int launch = 0; launch < 8; ++launch) {
      neighbour<<<1, 256>>>(d, 1000 * launch, false);
      const auto out = host_copy(d, 256);
      for (int i = 0; i < 256; ++i) raced = raced || out[i] != 1000 * launch + (i + 1) % 256;
      neighbour<<<1, 256>>>(d, 1000 * launch, true);
      const auto good = host_copy(d, 256);
      for (int i = 0; i < 256; ++i) REQUIRE(good[i] == 1000 * launch + (i + 1) % 256);
    }
    REQUIRE(raced);
    cudaFree(d);
  }
  {  // __syncthreads_or
    std::vector<int> x(128, 2);
    int* dx = device_copy(x);
    int* dr = device_copy(std::vector<int>(1));
    any_odd<<<1, 128>>>(dx, dr);
    REQUIRE(host_copy(dr, 1)[0] == 0);
    x[77] = 3;
    REQUIRE(cudaMemcpy(dx, x.data(), x.size() * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
    any_odd<<<1, 128>>>(dx, dr);
    REQUIRE(host_copy(dr, 1)[0] == 1);
    cudaFree(dx);
    cudaFree(dr);
  }
  {  // the mma fragments map to the PTX layout: small integers, so the product is exact
    std::vector<float> A(16 * 8), B(8 * 8);
    for (int i = 0; i < 128; ++i) A[i] = static_cast<float>(i % 7 - 3);
    for (int i = 0; i < 64; ++i) B[i] = static_cast<float>(i % 5 - 2);
    float *dA = device_copy(A), *dB = device_copy(B), *dD = device_copy(std::vector<float>(128));
    one_mma<<<1, 32>>>(dA, dB, dD);
    const auto D = host_copy(dD, 128);
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 8; ++c) {
        float want = 0;
        for (int k = 0; k < 8; ++k) want += A[r * 8 + k] * B[k * 8 + c];
        REQUIRE(D[r * 8 + c] == want);
      }
    cudaFree(dA);
    cudaFree(dB);
    cudaFree(dD);
  }
  {  // the bf16 mma against a float64 matmul: random bf16 operands of mixed signs and scales, an fp32
     // C; 17 fp32 additions of exact products err by at most gamma(17) sum |terms| (u = 2^-24)
    uint32_t state = 12345u;
    auto bf16_bits = [&]() {
      state = state * 1664525u + 1013904223u;
      float f = std::ldexp(static_cast<float>(state >> 8) / 16777216.0f - 0.5f, static_cast<int>(state % 7) - 3);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      return static_cast<uint16_t>(u >> 16);  // truncated to bf16: still a random bf16 value
    };
    auto value = [](uint16_t h) {
      const uint32_t u = uint32_t{h} << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return static_cast<double>(f);
    };
    std::vector<uint16_t> A(16 * 16), B(16 * 8);
    std::vector<float> C(16 * 8);
    for (auto& v : A) v = bf16_bits();
    for (auto& v : B) v = bf16_bits();
    for (auto& v : C) v = static_cast<float>(value(bf16_bits())) * 3.0f;
    uint16_t *dA = device_copy(A), *dB = device_copy(B);
    float *dC = device_copy(C), *dD = device_copy(std::vector<float>(128));
    one_mma_bf16<<<1, 32>>>(dA, dB, dC, dD);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    const auto D = host_copy(dD, 128);
    const double gamma = 17 * 0x1p-24 / (1 - 17 * 0x1p-24);
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 8; ++c) {
        double want = C[r * 8 + c], scale = std::fabs(want);
        for (int k = 0; k < 16; ++k) {
          const double p = value(A[r * 16 + k]) * value(B[k * 8 + c]);
          want += p;
          scale += std::fabs(p);
        }
        REQUIRE(std::fabs(D[r * 8 + c] - want) <= gamma * scale);
      }
    cudaFree(dA);
    cudaFree(dB);
    cudaFree(dC);
    cudaFree(dD);
  }
  {  // shared memory starts poisoned in every block
    float* d = device_copy(std::vector<float>(4, 0.0f));
    read_fresh_shared<<<4, 32>>>(d);
    for (float v : host_copy(d, 4)) REQUIRE(std::isnan(v));
    cudaFree(d);
  }
  {  // launch limits and memory checks as the runtime reports them
    float* p = device_copy(std::vector<float>(4));
    noop<<<dim3(1, 70000), 32>>>(p);
    REQUIRE(cudaGetLastError() == cudaErrorInvalidConfiguration);
    noop<<<1, 2048>>>(p);
    REQUIRE(cudaGetLastError() == cudaErrorInvalidConfiguration);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    float h[8];
    REQUIRE(cudaMemcpy(h, p, 8 * sizeof(float), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    REQUIRE(cudaMemcpy(h, h + 4, 4 * sizeof(float), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    const auto poisoned = host_copy(static_cast<float*>([] {
      void* q = nullptr;
      REQUIRE(cudaMalloc(&q, 16) == cudaSuccess);
      return q;
    }()), 4);
    REQUIRE(std::isnan(poisoned[0]) && std::isnan(poisoned[3]));
    cudaPointerAttributes attr;
    REQUIRE(cudaPointerGetAttributes(&attr, p + 3) == cudaSuccess && attr.type == cudaMemoryTypeDevice);
    REQUIRE(cudaPointerGetAttributes(&attr, h) == cudaSuccess && attr.type != cudaMemoryTypeDevice);
    cudaFree(p);
  }
  std::printf("ok\n");
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "checks";
  if (std::strcmp(mode, "checks") == 0) {
    checks();
  } else if (std::strcmp(mode, "deadlock") == 0) {
    divergent_barrier<<<1, 64>>>(device_copy(std::vector<float>(64)));
  } else if (std::strcmp(mode, "overrun") == 0) {
    float* p = device_copy(std::vector<float>(5));
    write_at<<<1, 32>>>(p, 5);  // one past the end: lands in the slack before the guard page
    cudaFree(p);
  } else if (std::strcmp(mode, "host-touch") == 0) {
    float* p = device_copy(std::vector<float>(5));
    std::printf("%f\n", p[0]);  // host code reading device memory
  }
  return 0;
}

// The CUDA host emulation's runtime: device memory as guarded host mappings, and kernel launches
// as fibers (see cuda_runtime.h for what is and is not modelled). Single device, one launch at a
// time per host thread; the bindings hold the GIL around every call anyway.
#include "cuda_runtime.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

thread_local cudaError_t last_error = cudaSuccess;

cudaError_t fail(cudaError_t err) {
  last_error = err;
  return err;
}

// ------------------------------------------------------------------------------ memory
// Each allocation is a mapping of its own: the data ends 256-byte aligned just before a
// PROT_NONE guard page, so a kernel that reads or writes past the end faults; the slack before
// the guard (< 256 bytes) holds a canary that cudaFree checks. The data pages are PROT_NONE
// between emulated device operations (launches, copies, memsets) too (see guard_host), so host
// code that touches device memory, which would crash on a GPU, crashes here with a message.
struct Allocation {
  char* map;       // the mapping: data pages, then one guard page
  size_t map_bytes;
  size_t nbytes;   // what was asked for, from the data pointer (the key)
  size_t span;     // nbytes rounded up to 256: what a kernel may touch, slack included
  bool guarded;    // data pages PROT_NONE
};

constexpr unsigned char kCanary = 0xA5;
const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));
std::mutex memory_mutex;
std::map<uintptr_t, Allocation> allocations;  // data pointer -> allocation
int open_depth = 0;                           // > 0 while an emulated device operation runs

// Protecting device memory between operations costs two mprotect calls per live allocation and
// operation: about 2x on the GPU tests, but minutes for the 10,000-tensor optimizer test. So
// it is skipped while more than kGuardMax allocations live; FASTOPT_CUDA_EMULATION_GUARD_HOST=0
// turns it off. (This file reads its two switches itself, since its own test builds it without the
// module; the switchboard, fastopt/switches.h, declares them for the table.)
constexpr size_t kGuardMax = 512;
bool guard_host() {
  static const bool on = [] {
    const char* v = std::getenv("FASTOPT_CUDA_EMULATION_GUARD_HOST");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on && allocations.size() <= kGuardMax;
}

const Allocation* find(const void* ptr) {  // memory_mutex held
  const auto p = reinterpret_cast<uintptr_t>(ptr);
  auto it = allocations.upper_bound(p);
  if (it == allocations.begin()) return nullptr;
  --it;
  return p < it->first + std::max<size_t>(it->second.nbytes, 1) ? &it->second : nullptr;
}

bool is_device(const void* ptr, size_t nbytes = 1) {
  std::lock_guard<std::mutex> lock(memory_mutex);
  const Allocation* a = find(ptr);
  if (a == nullptr) return false;
  const auto begin = reinterpret_cast<uintptr_t>(a->map) + a->map_bytes - kPage - a->span;
  return reinterpret_cast<uintptr_t>(ptr) + nbytes <= begin + a->nbytes;
}

void protect(Allocation& a, bool guard) {
  if (a.guarded == guard) return;
  mprotect(a.map, a.map_bytes - kPage, guard ? PROT_NONE : PROT_READ | PROT_WRITE);
  a.guarded = guard;
}

// Device memory is accessible while one of these lives (the emulated GPU at work).
struct DeviceAccess {
  DeviceAccess() {
    std::lock_guard<std::mutex> lock(memory_mutex);
    if (open_depth++ == 0)
      for (auto& [p, a] : allocations) protect(a, false);
  }
  ~DeviceAccess() {
    std::lock_guard<std::mutex> lock(memory_mutex);
    if (--open_depth == 0 && guard_host())
      for (auto& [p, a] : allocations) protect(a, true);
  }
};

struct sigaction previous_segv;

void on_segv(int sig, siginfo_t* info, void* uctx) {
  const void* addr = info->si_addr;
  for (const auto& [p, a] : allocations) {  // no lock: the faulting thread may hold it
    const auto q = reinterpret_cast<uintptr_t>(addr);
    if (q >= reinterpret_cast<uintptr_t>(a.map) && q < reinterpret_cast<uintptr_t>(a.map) + a.map_bytes) {
      const bool past_end = q >= reinterpret_cast<uintptr_t>(a.map) + a.map_bytes - kPage;
      char msg[256];
      const int n = std::snprintf(msg, sizeof msg,
                                  past_end
                                      ? "fastopt CUDA emulation: access past the end of a %zu-byte device allocation\n"
                                      : "fastopt CUDA emulation: host code touched device memory (a %zu-byte "
                                        "allocation); on a GPU this is a crash\n",
                                  a.nbytes);
      if (n > 0) (void)!write(2, msg, static_cast<size_t>(n));
      break;
    }
  }
  // Hand the fault on (Python's faulthandler prints the Python stack).
  sigaction(SIGSEGV, &previous_segv, nullptr);
  (void)sig;
  (void)uctx;
}

void install_segv_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa{};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
  });
}

cudaError_t device_malloc(void** ptr, size_t nbytes) {
  if (ptr == nullptr) return fail(cudaErrorInvalidValue);
  install_segv_handler();
  const size_t span = (std::max<size_t>(nbytes, 1) + 255) / 256 * 256;
  const size_t data_pages = (span + kPage - 1) / kPage * kPage;
  void* m = mmap(nullptr, data_pages + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                 0);
  if (m == MAP_FAILED) return fail(cudaErrorMemoryAllocation);
  Allocation a{static_cast<char*>(m), data_pages + kPage, nbytes, span, false};
  mprotect(a.map + data_pages, kPage, PROT_NONE);
  char* data = a.map + data_pages - span;
  std::memset(data, 0xFF, nbytes);  // poisoned (float NaN), as GPU memory is not zeroed
  std::memset(data + nbytes, kCanary, span - nbytes);
  std::lock_guard<std::mutex> lock(memory_mutex);
  if (open_depth == 0 && guard_host()) protect(a, true);
  allocations[reinterpret_cast<uintptr_t>(data)] = a;
  *ptr = data;
  return cudaSuccess;
}

cudaError_t device_free(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  Allocation a;
  {
    std::lock_guard<std::mutex> lock(memory_mutex);
    auto it = allocations.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == allocations.end()) return fail(cudaErrorInvalidValue);
    a = it->second;
    allocations.erase(it);
  }
  protect(a, false);
  const auto* tail = static_cast<const unsigned char*>(ptr) + a.nbytes;
  for (size_t i = 0; i < a.span - a.nbytes; ++i)
    if (tail[i] != kCanary) {
      std::fprintf(stderr, "fastopt CUDA emulation: a kernel wrote past the end of a %zu-byte device allocation\n",
                   a.nbytes);
      std::abort();
    }
  munmap(a.map, a.map_bytes);
  return cudaSuccess;
}

// ------------------------------------------------------------------------------ fibers
constexpr int kWarp = 32;
constexpr size_t kStack = 256 << 10;

// A context switch saves the callee-saved registers on the old stack and resumes the new one:
// on x86-64 six pushes and a stack swap. swapcontext also makes a signal-mask system call at
// every switch: with it the two training tests took 7 minutes instead of 80 s. Elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void fastopt_emulation_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl fastopt_emulation_switch
  .type fastopt_emulation_switch, @function
fastopt_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastopt_emulation_switch, .-fastopt_emulation_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

struct Context {
  void* sp = nullptr;
};
void start_context(Context& c, char* stack, size_t size, void (*entry)()) {
  // The stack as the switch leaves it: six registers, then `entry` as the return address, then
  // a null fake return address for entry (which never returns) at rsp = 8 mod 16, as after a call.
  auto* top = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15}) - 1;
  void** sp = top - 7;
  for (int i = 0; i < 6; ++i) sp[i] = nullptr;
  sp[6] = reinterpret_cast<void*>(entry);
  top[0] = nullptr;
  c.sp = sp;
}
inline void switch_context(Context& from, Context& to) { fastopt_emulation_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void start_context(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
  int live = 0;     // threads that have not returned
  int or_value = 0;
  int or_result = 0;
};

struct Fiber {
  Context context;
  char* stack = nullptr;  // kStack bytes, from the host thread's pool
  bool done = false;
};

struct Block {
  fastopt_emulation::ThreadState state;
  std::vector<Fiber> fibers;
  std::vector<int> order;
  int running = -1;  // index of the fiber on the CPU
  Context scheduler;
  Barrier block;
  std::vector<Barrier> warps;
  std::vector<uint64_t> slots;  // one exchange slot per thread
  std::vector<uint32_t> fragments;  // 6 words per thread: a mma's a[4] and b[2]
  std::vector<void*> fresh;      // __shared__ variables poisoned in this block
  uint64_t progress = 0;        // barrier releases and returns: a pass without any is a deadlock
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
};

thread_local Block* active = nullptr;
thread_local fastopt_emulation::ThreadState host_state{};

void yield() {
  Block& b = *active;
  switch_context(b.fibers[b.running].context, b.scheduler);
}

void release(Barrier& bar) {
  bar.arrived = 0;
  bar.or_result = bar.or_value;
  bar.or_value = 0;
  ++bar.generation;
  ++active->progress;
}

// Counts this thread in; the last arrival (exited threads count as arrived) releases the others.
void arrive_and_wait(Barrier& bar) {
  const uint64_t gen = bar.generation;
  if (++bar.arrived == bar.live) {
    release(bar);
    return;
  }
  while (bar.generation == gen) yield();
}

// A returning thread: if all the others still live are waiting, it was the last one.
void leave(Barrier& bar) {
  if (--bar.live > 0 && bar.arrived == bar.live) release(bar);
}

void fiber_main() {
  Block& b = *active;
  b.body(b.ctx);
  const int t = b.running;
  b.fibers[t].done = true;
  leave(b.block);
  leave(b.warps[t / kWarp]);
  ++b.progress;
  // A fiber's entry never returns: it goes back to the scheduler for good.
  switch_context(b.fibers[t].context, b.scheduler);
}

// Fixed, so that a failure repeats; FASTOPT_CUDA_EMULATION_SEED explores other interleavings.
std::mt19937_64& order_rng() {
  static thread_local std::mt19937_64 rng([] {
    const char* v = std::getenv("FASTOPT_CUDA_EMULATION_SEED");
    return v != nullptr ? std::strtoull(v, nullptr, 10) : 0x5eedull;
  }());
  return rng;
}

void run_block(Block& b, unsigned bx, unsigned by, unsigned bz) {
  const int threads = static_cast<int>(b.fibers.size());
  b.state.block = {bx, by, bz};
  b.fresh.clear();
  b.block = Barrier{};
  b.block.live = threads;
  for (size_t w = 0; w < b.warps.size(); ++w) {
    b.warps[w] = Barrier{};
    b.warps[w].live = std::min(kWarp, threads - static_cast<int>(w) * kWarp);
  }
  for (int t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.done = false;
    start_context(f.context, f.stack, kStack, fiber_main);
  }
  int remaining = threads;
  while (remaining > 0) {
    const uint64_t before = b.progress;
    for (int t : b.order) {
      Fiber& f = b.fibers[t];
      if (f.done) continue;
      b.running = t;
      const unsigned bdx = b.state.block_dim.x, bdy = b.state.block_dim.y;
      b.state.thread = {t % bdx, t / bdx % bdy, t / (bdx * bdy)};
      switch_context(b.scheduler, f.context);
      if (f.done) --remaining;
    }
    b.running = -1;
    if (remaining > 0 && b.progress == before) {
      std::fprintf(stderr,
                   "fastopt CUDA emulation: deadlock in block (%u, %u, %u): %d threads wait at a barrier "
                   "that the others never reach\n",
                   bx, by, bz, remaining);
      std::abort();
    }
  }
}

}  // namespace

namespace fastopt_emulation {

const ThreadState& current() {
  if (active == nullptr) return host_state;
  return active->state;
}

void fresh_shared(void* p, size_t nbytes) {
  std::vector<void*>& fresh = active->fresh;
  if (std::find(fresh.begin(), fresh.end(), p) != fresh.end()) return;
  std::memset(p, 0xFF, nbytes);
  fresh.push_back(p);
}

void sync_block() { arrive_and_wait(active->block); }

int sync_block_or(int predicate) {
  Barrier& bar = active->block;
  bar.or_value |= predicate != 0;
  arrive_and_wait(bar);
  return bar.or_result;
}

int lane_id() { return active->running % kWarp; }

uint64_t warp_exchange(uint64_t value, int src) {
  Block& b = *active;
  const int t = active->running, w = t / kWarp;
  b.slots[t] = value;
  arrive_and_wait(b.warps[w]);
  const int s = w * kWarp + src;
  const uint64_t r = src >= 0 && s < static_cast<int>(b.fibers.size()) ? b.slots[s] : value;
  arrive_and_wait(b.warps[w]);
  return r;
}

namespace {

// The lanes of warp w meet in `fragments` (6 words per thread: a[4] then b[2]); after the first
// barrier every lane reads the whole warp's, after the second the slots may be reused.
template <class Word>
const uint32_t* gather_fragments(const Word (&a)[4], const Word (&b)[2], int& lane) {
  Block& blk = *active;
  const int t = active->running, w = t / kWarp;
  lane = t % kWarp;
  if (blk.warps[w].live != kWarp) {
    std::fprintf(stderr, "fastopt CUDA emulation: mma.sync in a warp that is not whole\n");
    std::abort();
  }
  uint32_t* mine = blk.fragments.data() + 6 * t;
  std::memcpy(mine, a, 16);
  std::memcpy(mine + 4, b, 8);
  arrive_and_wait(blk.warps[w]);
  return blk.fragments.data() + 6 * w * kWarp;
}

// d += A B for this lane's d[q] = D(g + 8 (q/2), 2 t + q%2), g = lane / 4, t = lane % 4: the K
// products, each exact in fp32, added in k order.
template <class FA, class FB>
void mma_accumulate(float& d0, float& d1, float& d2, float& d3, int lane, int K, FA A, FB B) {
  const int g = lane / 4, tq = lane % 4;
  float* d[4] = {&d0, &d1, &d2, &d3};
  for (int q = 0; q < 4; ++q) {
    const int r = g + 8 * (q / 2), n = 2 * tq + q % 2;
    float sum = *d[q];
    for (int k = 0; k < K; ++k) sum += A(r, k) * B(k, n);
    *d[q] = sum;
  }
  arrive_and_wait(active->warps[active->running / kWarp]);
}

float word_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

void mma_m16n8k8_tf32(float& d0, float& d1, float& d2, float& d3, const float (&a)[4], const float (&b)[2]) {
  int lane;
  const uint32_t* lanes = gather_fragments(a, b, lane);
  // Lane L holds A(L/4 + 8 (i%2), L%4 + 4 (i/2)) in a[i], B(L%4 + 4 i, L/4) in b[i].
  auto A = [&](int r, int k) { return word_float(lanes[6 * ((r % 8) * 4 + k % 4) + (r / 8) + 2 * (k / 4)]); };
  auto B = [&](int k, int n) { return word_float(lanes[6 * (n * 4 + k % 4) + 4 + k / 4]); };
  mma_accumulate(d0, d1, d2, d3, lane, 8, A, B);
}

void mma_m16n8k16_bf16(float& d0, float& d1, float& d2, float& d3, const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  int lane;
  const uint32_t* lanes = gather_fragments(a, b, lane);
  // Lane L = 4 g + t holds A(g + 8 (i%2), 2 t + 8 (i/2) + h) in half h of a[i] and B(2 t + 8 i + h, g)
  // in half h of b[i] (h = 0: the low 16 bits).
  auto half = [](uint32_t word, int h) { return word_float((h ? word >> 16 : word & 0xffffu) << 16); };
  auto A = [&](int r, int k) { return half(lanes[6 * ((r % 8) * 4 + (k % 8) / 2) + (r / 8) + 2 * (k / 8)], k % 2); };
  auto B = [&](int k, int n) { return half(lanes[6 * (n * 4 + (k % 8) / 2) + 4 + k / 8], k % 2); };
  mma_accumulate(d0, d1, d2, d3, lane, 16, A, B);
}

void run_grid(dim3 grid, dim3 block, size_t smem, size_t param_bytes, void (*body)(void*), void* ctx) {
  if (active != nullptr) throw std::logic_error("fastopt CUDA emulation: a kernel launched a kernel");
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535 || smem > 48 * 1024) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  if (param_bytes > 32764) {
    fail(cudaErrorInvalidValue);
    return;
  }
  // Stacks stay allocated for the next launch; untouched pages cost no memory.
  DeviceAccess access;
  static thread_local std::vector<std::unique_ptr<char[]>> stacks;
  Block b;
  b.state.block_dim = block;
  b.state.grid_dim = grid;
  b.fibers.resize(threads);
  while (stacks.size() < threads) stacks.emplace_back(new char[kStack]);
  for (uint64_t t = 0; t < threads; ++t) b.fibers[t].stack = stacks[t].get();
  b.warps.resize((threads + kWarp - 1) / kWarp);
  b.slots.assign(threads, 0);
  b.fragments.assign(6 * threads, 0);
  b.body = body;
  b.ctx = ctx;
  b.order.resize(threads);
  // Resume order: forward, backward or shuffled, chosen per launch.
  for (uint64_t t = 0; t < threads; ++t) b.order[t] = static_cast<int>(t);
  switch (order_rng()() % 3) {
    case 1: std::reverse(b.order.begin(), b.order.end()); break;
    case 2: std::shuffle(b.order.begin(), b.order.end(), order_rng()); break;
    default: break;
  }
  // Blocks run one after another, in an order that also changes per launch: forward, backward
  // or shuffled (a kernel must not depend on the order in which its blocks run).
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  const uint64_t mode = order_rng()() % 3;
  std::vector<uint64_t> perm;
  if (mode == 2) {
    perm.resize(blocks);
    for (uint64_t i = 0; i < blocks; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), order_rng());
  }
  active = &b;
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t k = mode == 0 ? i : mode == 1 ? blocks - 1 - i : perm[i];
    run_block(b, static_cast<unsigned>(k % grid.x), static_cast<unsigned>(k / grid.x % grid.y),
              static_cast<unsigned>(k / (uint64_t{grid.x} * grid.y)));
  }
  active = nullptr;
}

}  // namespace fastopt_emulation

// ------------------------------------------------------------------------------ runtime API
cudaError_t cudaGetLastError() {
  const cudaError_t err = last_error;
  last_error = cudaSuccess;
  return err;
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return "unknown error";
  }
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "CUDA host emulation (no GPU)");
  prop->multiProcessorCount = 132;  // an H100 SXM's, so that grid sizing takes its real paths
  prop->major = 9;
  prop->totalGlobalMem = size_t{80} << 30;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  if (attr != cudaDevAttrMultiProcessorCount) return fail(cudaErrorInvalidValue);
  *value = 132;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = 0;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) {
  *version = 0;
  return cudaSuccess;
}

// Page-locked host memory: ordinary heap memory here, remembered so that pointer attributes
// answer cudaMemoryTypeHost for it (and only for it, from its start to its end) as the runtime does.
static std::map<uintptr_t, size_t> pinned_blocks;  // start -> size, under memory_mutex

static bool in_pinned_block(const void* ptr) {
  std::lock_guard<std::mutex> lock(memory_mutex);
  const auto p = reinterpret_cast<uintptr_t>(ptr);
  auto it = pinned_blocks.upper_bound(p);
  if (it == pinned_blocks.begin()) return false;
  --it;
  return p < it->first + it->second;
}

cudaError_t cudaHostAlloc(void** ptr, size_t nbytes, unsigned int) {
  *ptr = std::malloc(nbytes ? nbytes : 1);
  if (*ptr == nullptr) return fail(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(memory_mutex);
  pinned_blocks[reinterpret_cast<uintptr_t>(*ptr)] = nbytes ? nbytes : 1;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(memory_mutex);
    if (pinned_blocks.erase(reinterpret_cast<uintptr_t>(ptr)) == 0) return fail(cudaErrorInvalidValue);
  }
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr) {
  *attr = cudaPointerAttributes{};
  attr->type = is_device(ptr)         ? cudaMemoryTypeDevice
               : in_pinned_block(ptr) ? cudaMemoryTypeHost
                                      : cudaMemoryTypeUnregistered;
  attr->device = is_device(ptr) ? 0 : -1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  *pool = nullptr;
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }

cudaError_t cudaMalloc(void** ptr, size_t nbytes) { return device_malloc(ptr, nbytes); }
cudaError_t cudaFree(void* ptr) { return device_free(ptr); }
cudaError_t cudaMallocAsync(void** ptr, size_t nbytes, cudaStream_t) { return device_malloc(ptr, nbytes); }
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return device_free(ptr); }

// Copies and memsets check that their device side lies in one device allocation, as the runtime
// does (cudaErrorInvalidValue).
cudaError_t cudaMemcpy(void* dst, const void* src, size_t nbytes, cudaMemcpyKind kind) {
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (nbytes == 0) return cudaSuccess;
  if ((dst_dev && !is_device(dst, nbytes)) || (src_dev && !is_device(src, nbytes))) return fail(cudaErrorInvalidValue);
  DeviceAccess access;
  std::memmove(dst, src, nbytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t nbytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, nbytes, kind);
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t nbytes, cudaStream_t) {
  if (nbytes == 0) return cudaSuccess;
  if (!is_device(ptr, nbytes)) return fail(cudaErrorInvalidValue);
  DeviceAccess access;
  std::memset(ptr, value, nbytes);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

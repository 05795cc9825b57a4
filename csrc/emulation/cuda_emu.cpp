// The emulator's scheduler: fibers for the threads of a block, barriers,
// warp exchanges, launch checks and the knobs. See cuda_emu.h.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FASTNTK_EMU_ASAN 1
#endif

namespace fastntk {
namespace emu {
namespace detail {

uint3 thread_idx{0, 0, 0}, block_idx{0, 0, 0};
dim3 block_dim, grid_dim;

namespace {

constexpr int kMaxThreads = 1024;
constexpr unsigned int kMaxBlockX = 1024, kMaxBlockY = 1024, kMaxBlockZ = 64, kMaxGridYZ = 65535;
constexpr size_t kMaxSharedBytes = 48 * 1024;
// ASan's reports run on the stack of the thread that failed: leave them room.
constexpr size_t kStackBytes = 256 * 1024;

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  TORCH_CHECK(end && *end == '\0', name, " must be an integer, got '", v, "'");
  return x;
}

Config read_env() {
  Config c;
  c.sm_count = env_int("FASTNTK_EMU_SMS", 4);
  c.max_grid_x = env_int("FASTNTK_EMU_MAX_GRID_X", (int64_t(1) << 31) - 1);
  c.max_scratch = env_int("FASTNTK_EMU_MAX_SCRATCH", 0);
  c.randomize = std::getenv("FASTNTK_EMU_SEED") != nullptr && *std::getenv("FASTNTK_EMU_SEED");
  c.seed = static_cast<uint64_t>(env_int("FASTNTK_EMU_SEED", 0));
  TORCH_CHECK(c.sm_count >= 1, "FASTNTK_EMU_SMS must be >= 1, got ", c.sm_count);
  TORCH_CHECK(c.max_grid_x >= 1 && c.max_grid_x <= (int64_t(1) << 31) - 1,
              "FASTNTK_EMU_MAX_GRID_X must be in [1, 2^31 - 1], got ", c.max_grid_x);
  return c;
}

Config& mutable_config() {
  static Config c = read_env();
  return c;
}

enum class State { kRunnable, kWaiting, kExited };
enum class Wait { kNone, kBlock, kWarp };

struct Thread {
  ucontext_t ctx;
  char* stack = nullptr;
  uint3 idx{0, 0, 0};
  int linear = 0;
  State state = State::kRunnable;
  Wait wait = Wait::kNone;
  const char* op = nullptr;
  const char* file = nullptr;
  int line = 0;
  unsigned int mask = 0;
  uint64_t value = 0;
  WarpValues received{};
  void* fake_stack = nullptr;
};

// One block in flight: its threads, the scheduler's context and the first error.
struct Block {
  std::vector<Thread>* threads = nullptr;
  int n_threads = 0;
  const std::function<void()>* body = nullptr;
  ucontext_t scheduler;
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
  Thread* current = nullptr;
  uint64_t runnable[kMaxThreads / 64] = {};
  int n_runnable = 0;
  std::string error;
  std::vector<void*> shared_seen;
};

Block* g_block = nullptr;
std::mutex g_launch_mutex;

std::vector<char*>& stack_pool() {
  static std::vector<char*> pool;
  return pool;
}

// A fiber stack with a guard page below it, kept for the next block.
char* stack_for(int t) {
  auto& pool = stack_pool();
  while (static_cast<int>(pool.size()) <= t) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "emulated CUDA: cannot map a fiber stack");
    mprotect(p, page, PROT_NONE);
    pool.push_back(static_cast<char*>(p) + page);
  }
  return pool[t];
}

void set_runnable(Block& b, int t) {
  Thread& th = (*b.threads)[t];
  if (th.state == State::kRunnable) return;
  th.state = State::kRunnable;
  th.wait = Wait::kNone;
  b.runnable[t / 64] |= uint64_t(1) << (t % 64);
  ++b.n_runnable;
}

void clear_runnable(Block& b, int t) {
  b.runnable[t / 64] &= ~(uint64_t(1) << (t % 64));
  --b.n_runnable;
}

std::string where(const char* file, int line) {
  std::string f = file ? file : "?";
  const size_t slash = f.rfind("csrc/");
  if (slash != std::string::npos) f = f.substr(slash);
  return f + ":" + std::to_string(line);
}

std::string thread_name(const Thread& th) {
  std::ostringstream s;
  s << "thread (" << th.idx.x << ", " << th.idx.y << ", " << th.idx.z << ")";
  return s.str();
}

void fail(Block& b, const std::string& message) {
  if (b.error.empty()) b.error = message;
}

// Where the waiting threads of a stuck block are, grouped by site.
std::string describe_waits(const Block& b) {
  std::map<std::string, int> sites;
  int exited = 0;
  for (int t = 0; t < b.n_threads; ++t) {
    const Thread& th = (*b.threads)[t];
    if (th.state == State::kExited) {
      ++exited;
    } else if (th.state == State::kWaiting) {
      std::ostringstream s;
      s << (th.wait == Wait::kBlock ? "__syncthreads" : th.op);
      if (th.wait == Wait::kWarp) s << " (mask 0x" << std::hex << th.mask << std::dec << ")";
      s << " at " << where(th.file, th.line);
      ++sites[s.str()];
    }
  }
  std::ostringstream s;
  const char* sep = "";
  for (const auto& [site, n] : sites) {
    s << sep << n << " thread(s) wait at " << site;
    sep = "; ";
  }
  if (exited) s << sep << exited << " thread(s) exited";
  return s.str();
}

// Switches from the running fiber back to the scheduler; `exiting` lets ASan
// drop the fiber's fake stack.
void to_scheduler(Block& b, Thread& th, bool exiting) {
#if defined(FASTNTK_EMU_ASAN)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &th.fake_stack, b.scheduler_stack, b.scheduler_stack_size);
#endif
  swapcontext(&th.ctx, &b.scheduler);
#if defined(FASTNTK_EMU_ASAN)
  __sanitizer_finish_switch_fiber(th.fake_stack, &b.scheduler_stack, &b.scheduler_stack_size);
#endif
  (void)exiting;
}

// Releases the warp group of thread t if every lane of its mask now waits at a
// warp operation; reports lanes that never can.
void try_release_warp(Block& b, int t) {
  Thread& me = (*b.threads)[t];
  const int warp0 = t & ~31;
  std::vector<int> lanes;
  for (int l = 0; l < 32; ++l) {
    if (!((me.mask >> l) & 1u)) continue;
    const int u = warp0 + l;
    if (u >= b.n_threads) {
      fail(b, me.op + std::string(" at ") + where(me.file, me.line) + ": mask names lane " + std::to_string(l) +
                  ", which does not exist in a block of " + std::to_string(b.n_threads) + " threads");
      return;
    }
    const Thread& other = (*b.threads)[u];
    if (other.state == State::kExited) {
      fail(b, "divergent barrier: " + thread_name(me) + " waits at " + me.op + " at " + where(me.file, me.line) +
                  " for lane " + std::to_string(l) + ", which exited without reaching it");
      return;
    }
    if (other.state != State::kWaiting || other.wait != Wait::kWarp) return;  // not there yet
    lanes.push_back(u);
  }
  for (int u : lanes) {
    const Thread& other = (*b.threads)[u];
    if (other.mask != me.mask || other.file != me.file || other.line != me.line) {
      fail(b, "divergent barrier: lanes of one warp meet at different warp operations: " + thread_name(me) + " at " +
                  me.op + " " + where(me.file, me.line) + ", " + thread_name(other) + " at " + other.op + " " +
                  where(other.file, other.line));
      return;
    }
  }
  WarpValues values{};
  values.mask = me.mask;
  for (int u : lanes) values.value[u - warp0] = (*b.threads)[u].value;
  for (int u : lanes) {
    Thread& other = (*b.threads)[u];
    other.received = values;
    other.received.lane = static_cast<unsigned int>(u - warp0);
    set_runnable(b, u);
  }
}

// Releases the block if every thread waits at __syncthreads; reports a thread
// that exited, since the barrier can then never complete.
void try_release_block(Block& b, const Thread& arriving) {
  for (int t = 0; t < b.n_threads; ++t) {
    const Thread& th = (*b.threads)[t];
    if (th.state == State::kExited) {
      fail(b, "divergent barrier: " + thread_name(arriving) + " waits at __syncthreads at " +
                  where(arriving.file, arriving.line) + ", but " + thread_name(th) + " exited without reaching it");
      return;
    }
    if (th.state != State::kWaiting || th.wait != Wait::kBlock) return;
  }
  for (int t = 0; t < b.n_threads; ++t) {
    const Thread& th = (*b.threads)[t];
    if (th.file != arriving.file || th.line != arriving.line) {
      fail(b, "divergent barrier: threads of one block meet at different __syncthreads: " + thread_name(arriving) +
                  " at " + where(arriving.file, arriving.line) + ", " + thread_name(th) + " at " +
                  where(th.file, th.line));
      return;
    }
  }
  for (int t = 0; t < b.n_threads; ++t) set_runnable(b, t);
}

// A thread that exits while others wait for it at a barrier breaks that barrier.
void check_exit(Block& b, const Thread& gone) {
  for (int t = 0; t < b.n_threads; ++t) {
    const Thread& th = (*b.threads)[t];
    if (th.state != State::kWaiting) continue;
    const bool waits_for_me =
        th.wait == Wait::kBlock ||
        ((th.linear & ~31) == (gone.linear & ~31) && ((th.mask >> (gone.linear & 31)) & 1u));
    if (waits_for_me) {
      fail(b, "divergent barrier: " + thread_name(th) + " waits at " +
                  (th.wait == Wait::kBlock ? std::string("__syncthreads") : std::string(th.op)) + " at " +
                  where(th.file, th.line) + ", but " + thread_name(gone) + " exited without reaching it");
      return;
    }
  }
}

void fiber_main() {
  Block& b = *g_block;
  Thread& th = *b.current;
#if defined(FASTNTK_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack, &b.scheduler_stack_size);
#endif
  try {
    (*b.body)();
  } catch (const std::exception& e) {
    fail(b, thread_name(th) + " threw: " + e.what());
  }
  th.state = State::kExited;
  clear_runnable(b, th.linear);
  check_exit(b, th);
  to_scheduler(b, th, /*exiting=*/true);
  std::abort();  // an exited fiber is never resumed
}

// Parks the running thread at a barrier until the scheduler releases it.
void wait_here(Wait kind, const char* op, unsigned int mask, uint64_t value, const char* file, int line) {
  TORCH_CHECK(g_block && g_block->current, "emulated CUDA: ", op, " called outside a kernel");
  Block& b = *g_block;
  Thread& th = *b.current;
  th.state = State::kWaiting;
  th.wait = kind;
  th.op = op;
  th.file = file;
  th.line = line;
  th.mask = mask;
  th.value = value;
  clear_runnable(b, th.linear);
  if (kind == Wait::kBlock)
    try_release_block(b, th);
  else
    try_release_warp(b, th.linear);
  to_scheduler(b, th, /*exiting=*/false);
}

// The next thread to run: the lowest-numbered runnable one, or with a seed a
// random one, taken from the warp that ran last while that warp has runnable
// lanes. Staying with a warp is how a GPU runs it (its lanes advance
// together), and it lets one warp race through several barrier-free
// stretches while others have not started: a reader that is one thread
// among hundreds would almost never be the last to run otherwise.
int pick(Block& b, std::mt19937_64* rng, int last) {
  if (b.n_runnable == 0) return -1;
  if (rng && last >= 0) {
    const int w = last / 32;
    uint64_t lanes = (b.runnable[w / 2] >> (32 * (w % 2))) & 0xffffffffu;
    if (lanes) {
      for (int k = static_cast<int>((*rng)() % static_cast<uint64_t>(__builtin_popcountll(lanes))); k > 0; --k)
        lanes &= lanes - 1;
      return w * 32 + __builtin_ctzll(lanes);
    }
  }
  int k = rng ? static_cast<int>((*rng)() % static_cast<uint64_t>(b.n_runnable)) : 0;
  for (int w = 0; w < kMaxThreads / 64; ++w) {
    uint64_t bits = b.runnable[w];
    const int n = __builtin_popcountll(bits);
    if (k >= n) {
      k -= n;
      continue;
    }
    for (; k > 0; --k) bits &= bits - 1;
    return w * 64 + __builtin_ctzll(bits);
  }
  return -1;
}

// Fills the bytes of a __shared__ variable with 0xFF without ASan's checks
// (its redzones are not ours to touch, only the variable itself is written).
__attribute__((no_sanitize_address)) void poison(void* address, size_t bytes) {
  volatile unsigned char* p = static_cast<volatile unsigned char*>(address);
  for (size_t i = 0; i < bytes; ++i) p[i] = 0xFF;
}

std::string launch_site(const LaunchGrid& grid) { return "emulated CUDA launch at " + where(grid.file, grid.line); }

void check_configuration(const LaunchGrid& grid, dim3 block, size_t shared_bytes) {
  const dim3 g = grid.dims;
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  TORCH_CHECK(block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= kMaxBlockX && block.y <= kMaxBlockY &&
                  block.z <= kMaxBlockZ && threads <= kMaxThreads,
              launch_site(grid), ": invalid configuration: block (", block.x, ", ", block.y, ", ", block.z, ") has ",
              threads, " threads; at most ", kMaxThreads, " (x, y <= 1024, z <= 64), none zero");
  TORCH_CHECK(g.x >= 1 && g.y >= 1 && g.z >= 1 && int64_t(g.x) <= config().max_grid_x && g.y <= kMaxGridYZ &&
                  g.z <= kMaxGridYZ,
              launch_site(grid), ": invalid configuration: grid (", g.x, ", ", g.y, ", ", g.z,
              "); x must be in [1, ", config().max_grid_x, "], y and z in [1, 65535]");
  TORCH_CHECK(shared_bytes <= kMaxSharedBytes, launch_site(grid), ": invalid configuration: ", shared_bytes,
              " bytes of dynamic shared memory; at most ", kMaxSharedBytes, " without opt-in");
}

void run_block(Block& b, std::vector<Thread>& threads, const dim3 block, std::mt19937_64* rng) {
  b.n_threads = static_cast<int>(int64_t(block.x) * block.y * block.z);
  std::fill(std::begin(b.runnable), std::end(b.runnable), 0);
  b.n_runnable = 0;
  b.shared_seen.clear();
  for (int t = 0; t < b.n_threads; ++t) {
    Thread& th = threads[t];
    th = Thread{};
    th.linear = t;
    th.idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    th.stack = stack_for(t);
#if defined(FASTNTK_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(th.stack, kStackBytes);
#endif
    getcontext(&th.ctx);
    th.ctx.uc_stack.ss_sp = th.stack;
    th.ctx.uc_stack.ss_size = kStackBytes;
    th.ctx.uc_link = nullptr;
    makecontext(&th.ctx, fiber_main, 0);
    th.state = State::kWaiting;  // set_runnable needs a change of state
    set_runnable(b, t);
  }
  for (int t = -1;;) {
    t = pick(b, rng, t);
    if (t < 0) break;
    Thread& th = threads[t];
    b.current = &th;
    thread_idx = th.idx;
    void* fake = nullptr;
#if defined(FASTNTK_EMU_ASAN)
    __sanitizer_start_switch_fiber(&fake, th.stack, kStackBytes);
#endif
    swapcontext(&b.scheduler, &th.ctx);
#if defined(FASTNTK_EMU_ASAN)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    b.current = nullptr;
    if (!b.error.empty()) return;
  }
  for (int t = 0; t < b.n_threads; ++t)
    if (threads[t].state != State::kExited) {
      fail(b, "divergent barrier (the block cannot continue): " + describe_waits(b));
      return;
    }
}

}  // namespace

void run_grid(const LaunchGrid& grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  check_configuration(grid, block, shared_bytes);
  const dim3 g = grid.dims;
  const int64_t n_blocks = int64_t(g.x) * g.y * g.z;
  std::vector<int64_t> order(static_cast<size_t>(n_blocks));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng_storage(config().seed);
  std::mt19937_64* rng = config().randomize ? &rng_storage : nullptr;
  if (rng) std::shuffle(order.begin(), order.end(), *rng);

  static std::vector<Thread> threads(kMaxThreads);
  Block b;
  b.threads = &threads;
  b.body = &body;
  g_block = &b;
  block_dim = block;
  grid_dim = g;
  for (const int64_t id : order) {
    block_idx = uint3{static_cast<unsigned int>(id % g.x), static_cast<unsigned int>((id / g.x) % g.y),
                      static_cast<unsigned int>(id / (int64_t(g.x) * g.y))};
    run_block(b, threads, block, rng);
    if (!b.error.empty()) break;
  }
  g_block = nullptr;
  TORCH_CHECK(b.error.empty(), launch_site(grid), ", block (", block_idx.x, ", ", block_idx.y, ", ", block_idx.z,
              "): ", b.error);
}

const WarpValues& warp_exchange(const char* op, unsigned int mask, uint64_t value, const char* file, int line) {
  TORCH_CHECK(g_block && g_block->current, "emulated CUDA: ", op, " called outside a kernel");
  Thread& th = *g_block->current;
  if (!((mask >> (th.linear & 31)) & 1u))
    kernel_error(std::string(op) + ": the calling lane " + std::to_string(th.linear & 31) + " is not in mask", file,
                 line);
  wait_here(Wait::kWarp, op, mask, value, file, line);
  return th.received;
}

void sync_block(const char* file, int line) { wait_here(Wait::kBlock, "__syncthreads", 0, 0, file, line); }

void shared_reached(void* address, size_t bytes) {
  TORCH_CHECK(g_block, "emulated CUDA: a __shared__ variable reached outside a kernel");
  auto& seen = g_block->shared_seen;
  if (std::find(seen.begin(), seen.end(), address) != seen.end()) return;
  seen.push_back(address);
  poison(address, bytes);
}

void kernel_error(const std::string& message, const char* file, int line) {
  Block& b = *g_block;
  fail(b, thread_name(*b.current) + ": " + message + " at " + where(file, line));
  Thread& th = *b.current;
  th.state = State::kWaiting;
  th.wait = Wait::kNone;
  clear_runnable(b, th.linear);
  for (;;) to_scheduler(b, th, /*exiting=*/false);  // never resumed: the launch is abandoned
}

}  // namespace detail

const Config& config() { return detail::mutable_config(); }

Config set_config(const Config& c) {
  TORCH_CHECK(c.sm_count >= 1 && c.max_grid_x >= 1 && c.max_grid_x <= (int64_t(1) << 31) - 1,
              "emulated CUDA: sm_count must be >= 1 and max_grid_x in [1, 2^31 - 1]");
  Config old = detail::mutable_config();
  detail::mutable_config() = c;
  return old;
}

}  // namespace emu
}  // namespace fastntk

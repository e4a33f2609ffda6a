// A small persistent thread pool with dynamic chunk claiming and a straggler guard.
//
// Why not OpenMP: a fork-join region returns only when every team thread has reached the
// closing barrier. On a shared, oversubscribed machine one descheduled worker then costs a
// whole scheduler time slice (milliseconds) even when it has nothing to do. Here the caller
// claims chunks too and returns as soon as all chunks are *done*; a worker that wakes up late
// finds nothing left and goes back to sleep. It also keeps the kernels independent of the
// OpenMP runtime torch brings into the process.
//
// Job state is one 64-bit word [generation:24 | threads:8 | end:16 | next:16]; the caller
// claims chunk `next` (next + 1), workers chunk `end - 1` (end - 1; pool_affinity 0: `next`
// too), with a CAS that also re-checks the generation, so a late worker can never run a chunk
// of a job that has finished. Claiming from both ends keeps the caller on the first chunks and
// the workers on the last ones, job after job (on an idle 2-core machine: the caller the first
// half, the worker the second), so the part of a layer's output a core writes is the part of
// the next layer's input it reads. The job's fn/ctx are read only after a successful
// claim, and the job cannot complete (so the caller cannot overwrite them) until that chunk
// is reported done.
//
// What dynamic claiming cannot fix is a worker descheduled *in the middle of* a chunk: the
// caller must wait for it, up to a scheduler slice. Two things bound that cost:
//  - nobody spins long: workers spin ~pool_spin_us after a job, then sleep on a condition
//    variable; the caller spins as long waiting for the last chunks, then sleeps on a futex
//    that the thread finishing the last chunk wakes. A spinning thread on a busy machine burns
//    its scheduler share and gets preempted later, mid-chunk; and when the straggler shares
//    the caller's CPU, a sleeping caller hands it the CPU at once.
//    Except while a plan run holds the pool (sb_pool_hold): its kernels come back to back,
//    and waking a sleeping thread costs tens of us on a VM (its idle vCPU was halted), so
//    waiting threads then spin up to pool_hold_us, and past pool_spin_us call sched_yield
//    each round (at once back on an idle CPU; a competing process gets a busy one). The spin
//    limit is re-read while spinning: a release ends the long spins at once. ResNet-50 90%
//    at 2 threads slept its worker 12 times per call without the hold, once with it.
//  - the straggler guard: when the caller waited for workers' chunks more than twice its own
//    working time and more than kStraggleMinNs twice within pool_confirm_us (5 ms) or four
//    times the first wait (once may be a hiccup: an interrupt, a kernel thread, a slow
//    wake-up), the machine is oversubscribed; the following jobs run on the caller alone
//    (same chunks, so the same results, at 1-thread speed) for a back-off period, then
//    threads are tried again. The period starts at pool_backoff_us, doubles on each straggle
//    up to max(1 s, base), and halves after a clean stretch as long as itself.
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "common.hpp"

namespace sb {

namespace {

// Knobs and counters of sb_tuning's "pool_*" keys; atomics because workers read them.
std::atomic<int> g_backoff_us{10000};   // straggler guard base period; 0 disables the guard
std::atomic<int> g_spin_us{50};         // spinning before a waiting thread sleeps
std::atomic<int> g_confirm_us{5000};    // a second straggle this soon engages the guard (0: the first)
std::atomic<int> g_test_delay_us{0};    // tests only: worker rank 1 sleeps before each chunk
std::atomic<int> g_jobs{0};             // multi-threaded jobs run by the pool
std::atomic<int> g_degraded_jobs{0};    // jobs the guard ran on the caller alone
std::atomic<int> g_straggles{0};        // jobs after which the guard engaged
std::atomic<int> g_unconfirmed{0};      // straggles that only opened a confirmation window
std::atomic<int> g_guard_resets{0};     // bumped by setting pool_backoff_us: the guard restarts
std::atomic<int> g_worker_chunks{0};    // chunks run by workers (the rest: by callers)
std::atomic<int> g_hold_us{2000};       // spinning before sleeping while the pool is held
std::atomic<int> g_hold_yield{1};       // 1: past pool_spin_us a held spin yields the CPU
std::atomic<int> g_holders{0};          // plan runs holding the pool (sb_pool_hold)
std::atomic<int> g_sleeps{0};           // times a worker went to sleep
std::atomic<int> g_affinity{1};         // 1: workers claim chunks from the back (see Pool::work)
// Until when (CLOCK_MONOTONIC ns) jobs run on the caller alone; 0: not degraded.
std::atomic<int64_t> g_degraded_until{0};

SB_INLINE int knob(const std::atomic<int> &k) { return k.load(std::memory_order_relaxed); }

// How long a waiting thread spins before it sleeps: pool_spin_us, or pool_hold_us while held.
SB_INLINE int64_t spin_limit_ns() {
  const int spin = knob(g_spin_us);
  return (int64_t)(knob(g_holders) > 0 ? std::max(spin, knob(g_hold_us)) : spin) * 1000;
}

constexpr uint64_t kNextBits = 16, kChunkBits = 16, kThreadBits = 8;
constexpr uint64_t kMask16 = 0xffff;
constexpr int64_t kStraggleMinNs = 50000;      // waits shorter than this are never straggles
constexpr int64_t kMaxBackoffNs = 1000000000;  // back-off cap (unless the base is larger)

SB_INLINE uint64_t pack(uint64_t gen, uint64_t threads, uint64_t nchunks, uint64_t next) {
  return (gen << (kNextBits + kChunkBits + kThreadBits)) | (threads << (kNextBits + kChunkBits)) |
         (nchunks << kNextBits) | next;
}
SB_INLINE uint64_t gen_of(uint64_t s) { return s >> (kNextBits + kChunkBits + kThreadBits); }
SB_INLINE uint64_t threads_of(uint64_t s) { return (s >> (kNextBits + kChunkBits)) & 0xff; }
// next: the first chunk not claimed from the front; end: one past the last chunk not claimed
// from the back (a job starts with end = its chunk count; no chunks are left at next == end)
SB_INLINE uint64_t end_of(uint64_t s) { return (s >> kNextBits) & kMask16; }
SB_INLINE uint64_t next_of(uint64_t s) { return s & kMask16; }

SB_INLINE void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

SB_INLINE int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

// Spin until ready() (true) or spin_limit_ns() has passed (false). Past pool_spin_us a held
// spin offers the CPU to other runnable threads each round (a competing process on a busy
// machine; on an idle one sched_yield returns at once and the CPU stays awake).
template <class Ready>
bool spin_until(Ready ready) {
  for (const int64_t t0 = now_ns();;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    const int64_t spun = now_ns() - t0;
    if (spun >= spin_limit_ns()) return false;
    if (spun >= (int64_t)knob(g_spin_us) * 1000 && knob(g_hold_yield)) sched_yield();
  }
}

// Sleep while *word == expected (spurious returns are fine: callers re-check); wake sleepers.
void futex_wait(std::atomic<int32_t> *word, int32_t expected) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<int32_t *>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
#else
  (void)word, (void)expected;
  sched_yield();
#endif
}
void futex_wake(std::atomic<int32_t> *word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<int32_t *>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
#else
  (void)word;
#endif
}

SB_INLINE void bump(std::atomic<int> &c, int by = 1) {
  if (c.load(std::memory_order_relaxed) <= INT_MAX - by) c.fetch_add(by, std::memory_order_relaxed);
}

struct Pool {
  std::mutex call_mu;  // one job at a time
  std::mutex sleep_mu;
  std::condition_variable wake;
  std::atomic<uint64_t> state{0};
  std::atomic<int32_t> done{0};    // chunks of the current job finished (futex word)
  std::atomic<int32_t> caller_waiting{0};
  std::atomic<int> sleepers{0};
  int nworkers = 0;
  void (*fn)(void *, int64_t) = nullptr;  // valid while a chunk of the current job is claimed
  void *ctx = nullptr;
  int32_t job_chunks = 0;  // chunks of the current job (valid with fn/ctx)
  // straggler guard state, under call_mu (the verdict: g_degraded_until)
  int64_t backoff_ns = 0, last_event_ns = 0;
  int guard_resets = -1;  // g_guard_resets when the state below was started (any set of
                         // pool_backoff_us bumps it)
  // an unconfirmed straggle: until when a second one engages the guard (0: none)
  int64_t confirm_until_ns = 0;

  // Claim and run chunks of the job in `s` (as thread `rank`); false when none are left.
  bool work(uint64_t s, int rank) {
    const bool from_back = rank != 0 && knob(g_affinity);
    for (;;) {
      if ((uint64_t)rank >= threads_of(s) || next_of(s) >= end_of(s)) return false;
      const uint64_t claimed = from_back ? s - (uint64_t{1} << kNextBits) : s + 1;
      if (state.compare_exchange_weak(s, claimed, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
        const int32_t nchunks = job_chunks;  // the job cannot finish before this chunk does
        if (rank == 1 && knob(g_test_delay_us) > 0) usleep((useconds_t)knob(g_test_delay_us));
        fn(ctx, (int64_t)(from_back ? end_of(s) - 1 : next_of(s)));
        const int32_t finished = done.fetch_add(1, std::memory_order_seq_cst) + 1;
        if (finished == nchunks && rank != 0 &&
            caller_waiting.load(std::memory_order_seq_cst))
          futex_wake(&done);
        return true;
      }
      // s now holds the current state; give up if the job changed under us
    }
  }

  void worker(int rank) {
    uint64_t seen_gen = 0;
    for (;;) {
      uint64_t s = state.load(std::memory_order_acquire);
      if (gen_of(s) != seen_gen) {
        int ran = 0;
        while (work(s, rank)) {
          ++ran;
          s = state.load(std::memory_order_acquire);
        }
        if (ran) bump(g_worker_chunks, ran);
        seen_gen = gen_of(s);
        continue;
      }
      // Spin briefly (back-to-back kernel calls), then sleep until a new job is published.
      if (spin_until([&] { return gen_of(state.load(std::memory_order_acquire)) != seen_gen; }))
        continue;
      bump(g_sleeps);
      std::unique_lock<std::mutex> lk(sleep_mu);
      sleepers.fetch_add(1, std::memory_order_seq_cst);
      wake.wait(lk, [&] { return gen_of(state.load(std::memory_order_seq_cst)) != seen_gen; });
      sleepers.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  void grow(int want) {
    while (nworkers < want) {
      const int rank = nworkers + 1;  // rank 0 is the calling thread
      try {
        std::thread([this, rank] { worker(rank); }).detach();
      } catch (...) {
        return;  // fewer workers: the caller runs the remaining chunks itself
      }
      ++nworkers;
    }
  }

  // Wait until all `nchunks` chunks are done: spin (spin_limit_ns), then sleep on the futex.
  void wait_done(int32_t nchunks) {
    if (spin_until([&] { return done.load(std::memory_order_acquire) >= nchunks; })) return;
    caller_waiting.store(1, std::memory_order_seq_cst);
    for (int32_t d; (d = done.load(std::memory_order_seq_cst)) < nchunks;) futex_wait(&done, d);
    caller_waiting.store(0, std::memory_order_relaxed);
  }

  // The guard's verdict on a finished job: own = the caller's time claiming and running
  // chunks, waited = its time waiting for chunks held by workers afterwards.
  void judge(int64_t own, int64_t waited, int64_t now) {
    const int64_t base = (int64_t)knob(g_backoff_us) * 1000;
    const int resets = knob(g_guard_resets);
    if (resets != guard_resets) {  // (re)configured: start afresh
      guard_resets = resets;
      backoff_ns = base;
      last_event_ns = now;
      confirm_until_ns = 0;
    }
    if (base <= 0) return;
    if (waited > kStraggleMinNs && waited > 2 * own) {
      // one straggle alone may be a hiccup (an interrupt, a kernel thread, a slow wake-up):
      // only a second one soon after (within 5 ms, or 4 times this wait) engages the guard
      const int64_t confirm = (int64_t)knob(g_confirm_us) * 1000;
      if (confirm > 0 && now > confirm_until_ns) {
        confirm_until_ns = now + std::max(confirm, 4 * waited);
        bump(g_unconfirmed);
        return;
      }
      confirm_until_ns = 0;
      g_degraded_until.store(now + backoff_ns, std::memory_order_relaxed);
      backoff_ns = std::min(2 * backoff_ns, std::max(kMaxBackoffNs, base));
      last_event_ns = now;
      bump(g_straggles);
    } else if (now - last_event_ns > backoff_ns) {  // a clean stretch as long as the period
      backoff_ns = std::max(base, backoff_ns / 2);
      last_event_ns = now;
    }
  }

  void run(int threads, int64_t nchunks, void (*f)(void *, int64_t), void *c) {
    std::lock_guard<std::mutex> guard(call_mu);
    grow(threads - 1);
    fn = f;
    ctx = c;
    job_chunks = (int32_t)nchunks;
    done.store(0, std::memory_order_relaxed);
    const uint64_t gen = (gen_of(state.load(std::memory_order_relaxed)) + 1) & 0xffffff;
    uint64_t s = pack(gen == 0 ? 1 : gen, (uint64_t)threads, (uint64_t)nchunks, 0);
    const int64_t t0 = now_ns();
    state.store(s, std::memory_order_seq_cst);  // publishes fn/ctx
    if (sleepers.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lk(sleep_mu); }
      wake.notify_all();
    }
    while (work(s, 0)) s = state.load(std::memory_order_acquire);
    // Wait for chunks still running on workers (never for workers that claimed nothing).
    const int64_t t1 = now_ns();
    if (done.load(std::memory_order_acquire) < (int32_t)nchunks) wait_done((int32_t)nchunks);
    const int64_t t2 = now_ns();
    bump(g_jobs);
    judge(t1 - t0, t2 - t1, t2);
  }
};

// True while the straggler guard keeps multi-threaded jobs on the caller alone.
bool degraded() {
  const int64_t until = g_degraded_until.load(std::memory_order_relaxed);
  return until != 0 && now_ns() < until;
}

Pool *g_pool = nullptr;  // never destroyed: detached workers may still wait on it at exit
std::once_flag g_pool_once;

void after_fork_in_child() { g_pool = new Pool(); }  // the child has no worker threads

Pool &pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool();
    pthread_atfork(nullptr, nullptr, after_fork_in_child);
  });
  return *g_pool;
}

}  // namespace

void run_chunks(int num_threads, int64_t nchunks, void (*fn)(void *, int64_t), void *ctx) {
  if (num_threads > 1 && nchunks > 1) {
    if (!degraded()) return pool().run(num_threads, nchunks, fn, ctx);
    bump(g_degraded_jobs);
  }
  for (int64_t i = 0; i < nchunks; ++i) fn(ctx, i);
}

bool pool_tuning(const char *key, int value, int *old) {
  static const struct {
    const char *name;
    std::atomic<int> *value;
  } keys[] = {{"pool_backoff_us", &g_backoff_us},   {"pool_spin_us", &g_spin_us},
              {"pool_confirm_us", &g_confirm_us},   {"pool_hold_us", &g_hold_us},
              {"pool_hold_yield", &g_hold_yield},   {"pool_affinity", &g_affinity},
              {"pool_sleeps", &g_sleeps},
              {"pool_test_delay_us", &g_test_delay_us}, {"pool_jobs", &g_jobs},
              {"pool_degraded_jobs", &g_degraded_jobs}, {"pool_straggles", &g_straggles},
              {"pool_worker_chunks", &g_worker_chunks},
              {"pool_unconfirmed_straggles", &g_unconfirmed}};
  for (const auto &k : keys) {
    if (std::strcmp(key, k.name) != 0) continue;
    *old = k.value->load(std::memory_order_relaxed);
    if (value >= 0) {
      k.value->store(value, std::memory_order_relaxed);
      if (k.value == &g_backoff_us) {  // the guard starts afresh
        g_degraded_until.store(0);
        bump(g_guard_resets);
      }
    }
    return true;
  }
  return false;
}

int pool_hold(int delta) {
  int cur = g_holders.load(std::memory_order_relaxed);
  for (;;) {
    const int next = cur + delta;
    if (next < 0) return -1;  // more releases than holds
    if (delta == 0 || g_holders.compare_exchange_weak(cur, next, std::memory_order_relaxed))
      return next;
  }
}

}  // namespace sb

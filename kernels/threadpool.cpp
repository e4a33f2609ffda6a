// A small persistent thread pool with dynamic chunk claiming.
//
// Why not OpenMP: a fork-join region returns only when every team thread has reached the
// closing barrier. On a shared, oversubscribed machine one descheduled worker then costs a
// whole scheduler time slice (milliseconds) even when it has nothing to do. Here the caller
// claims chunks too and returns as soon as all chunks are *done*; a worker that wakes up late
// finds nothing left and goes back to sleep. It also keeps the kernels independent of the
// OpenMP runtime torch brings into the process.
//
// Job state is one 64-bit word [generation:24 | threads:8 | nchunks:16 | next:16]; a worker
// claims chunk `next` with a CAS that also re-checks the generation, so a late worker can never
// run a chunk of a job that has finished. The job's fn/ctx are read only after a successful
// claim, and the job cannot complete (so the caller cannot overwrite them) until that chunk
// is reported done.
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "common.hpp"

namespace sb {
namespace {

constexpr uint64_t kNextBits = 16, kChunkBits = 16, kThreadBits = 8;
constexpr uint64_t kMask16 = 0xffff;

SB_INLINE uint64_t pack(uint64_t gen, uint64_t threads, uint64_t nchunks, uint64_t next) {
  return (gen << (kNextBits + kChunkBits + kThreadBits)) | (threads << (kNextBits + kChunkBits)) |
         (nchunks << kNextBits) | next;
}
SB_INLINE uint64_t gen_of(uint64_t s) { return s >> (kNextBits + kChunkBits + kThreadBits); }
SB_INLINE uint64_t threads_of(uint64_t s) { return (s >> (kNextBits + kChunkBits)) & 0xff; }
SB_INLINE uint64_t nchunks_of(uint64_t s) { return (s >> kNextBits) & kMask16; }
SB_INLINE uint64_t next_of(uint64_t s) { return s & kMask16; }

SB_INLINE void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

struct Pool {
  std::mutex call_mu;  // one job at a time
  std::mutex sleep_mu;
  std::condition_variable wake;
  std::atomic<uint64_t> state{0};
  std::atomic<int64_t> done{0};
  std::atomic<int> sleepers{0};
  int nworkers = 0;
  void (*fn)(void *, int64_t) = nullptr;  // valid while a chunk of the current job is claimed
  void *ctx = nullptr;

  // Claim and run chunks of the job in `s` (as thread `rank`); false when none are left.
  bool work(uint64_t s, int rank) {
    for (;;) {
      if ((uint64_t)rank >= threads_of(s) || next_of(s) >= nchunks_of(s)) return false;
      if (state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
        fn(ctx, (int64_t)next_of(s));
        done.fetch_add(1, std::memory_order_acq_rel);
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
        while (work(s, rank)) s = state.load(std::memory_order_acquire);
        seen_gen = gen_of(s);
        continue;
      }
      // Spin briefly (back-to-back kernel calls), then sleep until a new job is published.
      bool changed = false;
      for (int i = 0; i < 4000 && !changed; ++i) {
        cpu_relax();
        changed = gen_of(state.load(std::memory_order_acquire)) != seen_gen;
      }
      if (changed) continue;
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

  void run(int threads, int64_t nchunks, void (*f)(void *, int64_t), void *c) {
    std::lock_guard<std::mutex> guard(call_mu);
    grow(threads - 1);
    fn = f;
    ctx = c;
    done.store(0, std::memory_order_relaxed);
    const uint64_t gen = (gen_of(state.load(std::memory_order_relaxed)) + 1) & 0xffffff;
    uint64_t s = pack(gen == 0 ? 1 : gen, (uint64_t)threads, (uint64_t)nchunks, 0);
    state.store(s, std::memory_order_seq_cst);  // publishes fn/ctx
    if (sleepers.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lk(sleep_mu); }
      wake.notify_all();
    }
    while (work(s, 0)) s = state.load(std::memory_order_acquire);
    // Wait for chunks still running on workers (never for workers that claimed nothing).
    for (int spins = 0; done.load(std::memory_order_acquire) < nchunks; ++spins) {
      if (spins < 20000) cpu_relax();
      else sched_yield();
    }
  }
};

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
  if (num_threads <= 1 || nchunks <= 1) {
    for (int64_t i = 0; i < nchunks; ++i) fn(ctx, i);
    return;
  }
  pool().run(num_threads, nchunks, fn, ctx);
}

}  // namespace sb

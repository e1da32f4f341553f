// Run CUDA kernels written for sgd_fused.cu on the CPU, for tests.
//
// Every GPU thread of a block becomes a fiber (ucontext) on one OS thread.
// Fibers run until they reach a point where threads talk to each other:
// __shfl_xor_sync waits for all 32 lanes of its warp, __syncthreads for all
// threads of the block. So the lanes of a warp meet at every shuffle exactly
// as they do in lock-step on the GPU, and a kernel that forgets a barrier or
// lets lanes diverge around a shuffle deadlocks here (reported, not hung).
// Blocks run one after another, so function-local statics stand in for
// __shared__ memory.
//
// Compile a kernel file with:  g++ -std=c++17 -ffp-contract=off -include host_shim.h
// -ffp-contract=off keeps a*b+c as two roundings unless fma() is written,
// which is what the GPU build does with --fmad=false.

#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

namespace cudashim {

struct dim3 {
  unsigned x = 0, y = 0, z = 0;
};

struct Fiber {
  ucontext_t context;
  dim3 thread_idx;
  std::uint64_t shuffles = 0;  // shuffles this thread has entered
  std::uint64_t barriers = 0;  // __syncthreads this thread has entered
  bool done = false;
  std::vector<char> stack;
};

struct Block {
  dim3 block_idx, block_dim, grid_dim;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  std::function<void()> kernel;
  // Two generations of 8-byte slots per lane: a lane may be one shuffle ahead.
  std::vector<std::uint64_t> slots;
  std::vector<std::uint64_t> warp_arrivals;
  std::uint64_t block_arrivals = 0;
  std::uint64_t progress = 0;
};

inline Block*& active_block() {
  static Block* block = nullptr;
  return block;
}

inline void yield_to_scheduler() {
  Block& block = *active_block();
  swapcontext(&block.current->context, &block.scheduler);
}

inline void fiber_entry() {
  Block& block = *active_block();
  block.kernel();
  block.current->done = true;
  ++block.progress;
}

inline void prepare_fiber(Fiber& fiber, unsigned thread, ucontext_t& scheduler,
                          std::size_t stack_bytes) {
  fiber.thread_idx.x = thread;
  fiber.stack.resize(stack_bytes);
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = fiber.stack.data();
  fiber.context.uc_stack.ss_size = fiber.stack.size();
  fiber.context.uc_link = &scheduler;
  makecontext(&fiber.context, fiber_entry, 0);
}

// Run `kernel` for every thread of every block; false on a deadlock.
inline bool launch(unsigned n_blocks, unsigned n_threads, std::function<void()> kernel,
                   std::size_t stack_bytes = 256 * 1024) {
  for (unsigned b = 0; b < n_blocks; ++b) {
    Block block;
    block.block_idx.x = b;
    block.block_dim.x = n_threads;
    block.grid_dim.x = n_blocks;
    block.kernel = kernel;
    block.fibers.resize(n_threads);
    block.slots.assign(2 * n_threads, 0);
    block.warp_arrivals.assign((n_threads + 31) / 32, 0);
    active_block() = &block;

    for (unsigned t = 0; t < n_threads; ++t)
      prepare_fiber(block.fibers[t], t, block.scheduler, stack_bytes);

    // Round-robin until every fiber is done; a round without progress is a
    // deadlock (some threads wait at a barrier others never reach).
    for (;;) {
      const std::uint64_t before = block.progress;
      bool all_done = true;
      for (Fiber& fiber : block.fibers) {
        if (fiber.done) continue;
        all_done = false;
        block.current = &fiber;
        swapcontext(&block.scheduler, &fiber.context);
      }
      if (all_done) break;
      if (block.progress == before) {
        active_block() = nullptr;
        return false;
      }
    }
    active_block() = nullptr;
  }
  return true;
}

inline const dim3& thread_index() { return active_block()->current->thread_idx; }
inline const dim3& block_index() { return active_block()->block_idx; }
inline const dim3& block_dimension() { return active_block()->block_dim; }
inline const dim3& grid_dimension() { return active_block()->grid_dim; }

}  // namespace cudashim

#define threadIdx (::cudashim::thread_index())
#define blockIdx (::cudashim::block_index())
#define blockDim (::cudashim::block_dimension())
#define gridDim (::cudashim::grid_dimension())

// All 32 lanes must take part, as with a full mask on the GPU.
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "only 4- and 8-byte shuffles are emulated");
  cudashim::Block& block = *cudashim::active_block();
  cudashim::Fiber& fiber = *block.current;
  if (mask != 0xffffffffu || width != 32) std::abort();
  const unsigned thread = fiber.thread_idx.x;
  const unsigned warp = thread / 32;
  const unsigned lane = thread % 32;
  const std::uint64_t generation = fiber.shuffles++;
  const std::size_t base = (generation % 2) * block.fibers.size() + warp * 32;

  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  block.slots[base + lane] = bits;
  ++block.warp_arrivals[warp];
  ++block.progress;
  while (block.warp_arrivals[warp] < 32 * (generation + 1))
    cudashim::yield_to_scheduler();

  T out;
  const std::uint64_t partner = block.slots[base + (lane ^ lane_mask)];
  std::memcpy(&out, &partner, sizeof(T));
  return out;
}

inline void __syncthreads() {
  cudashim::Block& block = *cudashim::active_block();
  cudashim::Fiber& fiber = *block.current;
  const std::uint64_t generation = fiber.barriers++;
  ++block.block_arrivals;
  ++block.progress;
  while (block.block_arrivals < block.fibers.size() * (generation + 1))
    cudashim::yield_to_scheduler();
}

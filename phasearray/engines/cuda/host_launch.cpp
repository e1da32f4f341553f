// A C entry point that runs one instantiation of sgd_fused on the CPU through
// host_shim.h, for the tests. The instantiation is chosen with macros:
//
//   g++ -std=c++17 -O2 -ffp-contract=off -shared -fPIC
//       -DPA_REAL=double -DPA_N1=32 -DPA_N2=16 -DPA_N3=1 -DPA_BATCH=4
//       -DPA_ACTIVATION=0 -DPA_WARPS=2 host_launch.cpp -o sgd_fused_host.so
//
// The arguments are those of the kernel, after the number of blocks.

#include "host_shim.h"
#include "sgd_fused.cu"

extern "C" int phasearray_sgd_fused_host(int n_blocks, void* W2, const void* phi1,
                                         const void* y, const void* W3,
                                         const void* step_size, const int* indices,
                                         const int* block_stream,
                                         const int* block_members, int n_train,
                                         int n_steps) {
  using Real = PA_REAL;
  const bool finished = cudashim::launch(
      static_cast<unsigned>(n_blocks), 32 * PA_WARPS, [&] {
        sgd_fused<Real, PA_N1, PA_N2, PA_N3, PA_BATCH, PA_ACTIVATION, PA_WARPS>(
            static_cast<Real*>(W2), static_cast<const Real*>(phi1),
            static_cast<const Real*>(y), static_cast<const Real*>(W3),
            static_cast<const Real*>(step_size), indices, block_stream, block_members,
            n_train, n_steps);
      });
  return finished ? 0 : 1;
}

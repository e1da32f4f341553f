// Fused SGD for teacher-student ensembles: one warp trains one student.
//
// Each warp advances the middle-layer weights W2 (N2 x N1) of one student by
// plain SGD for n_steps minibatches in one launch (SPEC section 2):
//
//     z = W2 phi1,  h = phi(z),  yhat = W3 h,
//     delta = (W3^T (yhat - y)) * phi'(z),
//     W2 <- W2 - step_size * sum over the batch of delta phi1^T,
//
// with the same order of operations as engines/batched.py::sgd_step. The
// students of one thread block share a data stream, so the rows of the
// minibatch are staged in shared memory once per step for all of them.
//
// Lane layout (L = 32 / N2 lanes per row of W2, C = ceil(N1 / L) columns each):
//     lane = row * L + part;  lane holds W2[row, part*C : part*C + C] in registers.
// Pre-activations are partial dot products over a lane's columns, summed over
// the L lanes of a row by a reduce-scatter (each lane ends with the full sums
// of BATCH_PADDED / L samples), so no activation is evaluated twice. Outputs
// are summed over rows by a butterfly; delta is all-gathered back over the L
// lanes of a row. docs/gpu.md explains the choices.
//
// The file has no #include: NVRTC (through CuPy) compiles it as it is, nvcc
// compiles it with a wrapper that instantiates the template, and the host
// emulation (host_shim.h) compiles it as C++ on the CPU.

namespace phasearray_sgd {

constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int WARP = 32;
enum Activation { TANH = 0, RELU = 1, IDENTITY = 2 };

template <int X>
struct Log2 {
  static constexpr int value = 1 + Log2<X / 2>::value;
};
template <>
struct Log2<1> {
  static constexpr int value = 0;
};

// Sizes that follow from the template parameters, in elements of Real.
template <typename Real, int N1, int N2, int N3, int BATCH, int WARPS>
struct Layout {
  static_assert(N2 >= 1 && N2 <= WARP && WARP % N2 == 0,
                "N2 must divide the warp size");
  static constexpr int LANES_PER_ROW = WARP / N2;
  static constexpr int ROUNDS = Log2<LANES_PER_ROW>::value;
  static constexpr int COLUMNS = (N1 + LANES_PER_ROW - 1) / LANES_PER_ROW;
  static constexpr int BATCH_PADDED =
      (BATCH + LANES_PER_ROW - 1) / LANES_PER_ROW * LANES_PER_ROW;
  static constexpr int OWNED = BATCH_PADDED / LANES_PER_ROW;
  // A 16-byte gap between the column slices of neighbouring lanes keeps
  // their shared-memory reads in different banks.
  static constexpr int SKEW = 16 / sizeof(Real);
  static constexpr int PART_STRIDE = COLUMNS + SKEW;
  static constexpr int ROW_STRIDE = LANES_PER_ROW * PART_STRIDE;
  static constexpr int PHI_SIZE = BATCH_PADDED * ROW_STRIDE;
  static constexpr int Y_SIZE = BATCH_PADDED * N3;
  static constexpr int STAGE = (PHI_SIZE + Y_SIZE + SKEW - 1) / SKEW * SKEW;
  static constexpr int THREADS = WARP * WARPS;
  static constexpr int LOADS = BATCH * (N1 + N3);
  static constexpr int LOADS_PER_THREAD = (LOADS + THREADS - 1) / THREADS;
};

__device__ __forceinline__ double fused_multiply_add(double a, double b, double c) {
  return fma(a, b, c);
}
__device__ __forceinline__ float fused_multiply_add(float a, float b, float c) {
  return fmaf(a, b, c);
}
__device__ __forceinline__ double hyperbolic_tangent(double z) { return tanh(z); }
__device__ __forceinline__ float hyperbolic_tangent(float z) { return tanhf(z); }

// phi(z); relu keeps a NaN, as numpy.maximum does.
template <int ACT, typename Real>
__device__ __forceinline__ Real activate(Real z) {
  if (ACT == TANH) return hyperbolic_tangent(z);
  if (ACT == RELU) return z < Real(0) ? Real(0) : z;
  return z;
}

// phi'(z) given h = phi(z): 1 - h*h, [z > 0] or 1.
template <int ACT, typename Real>
__device__ __forceinline__ Real derivative(Real z, Real h) {
  if (ACT == TANH) return Real(1) - h * h;
  if (ACT == RELU) return z > Real(0) ? Real(1) : Real(0);
  return Real(1);
}

template <typename Real>
__device__ __forceinline__ Real exchange(Real value, int lane_mask) {
  return __shfl_xor_sync(FULL_MASK, value, lane_mask);
}

// Sum v over the lanes of a row; lane `part` keeps the sums of samples
// [part * N / L, (part + 1) * N / L) in v[0 : N / L].
template <int ROUNDS, int N, typename Real>
__device__ __forceinline__ void reduce_scatter(Real (&v)[N], int lane) {
#pragma unroll
  for (int round = 0; round < ROUNDS; ++round) {
    const int offset = (1 << ROUNDS) >> (round + 1);
    const int half = N >> (round + 1);
    const bool upper = (lane & offset) != 0;
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const Real send = upper ? v[i] : v[i + half];
      const Real keep = upper ? v[i + half] : v[i];
      v[i] = keep + exchange(send, offset);
    }
  }
}

// Inverse of reduce_scatter's split: every lane of a row gets all samples.
template <int ROUNDS, int OWNED, typename Real>
__device__ __forceinline__ void all_gather(const Real (&mine)[OWNED],
                                           Real (&all)[OWNED << ROUNDS], int lane) {
#pragma unroll
  for (int i = 0; i < OWNED; ++i) all[i] = mine[i];
#pragma unroll
  for (int round = 0; round < ROUNDS; ++round) {
    const int offset = 1 << round;
    const int count = OWNED << round;
    const bool upper = (lane & offset) != 0;
#pragma unroll
    for (int i = 0; i < count; ++i) {
      const Real other = exchange(all[i], offset);
      const Real low = upper ? other : all[i];
      const Real high = upper ? all[i] : other;
      all[i] = low;
      all[count + i] = high;
    }
  }
}

// One SGD step of one student (one warp) on the minibatch staged in `stage`.
template <typename Real, int N1, int N2, int N3, int BATCH, int ACT, int WARPS>
__device__ __forceinline__ void train_step(
    Real (&w)[Layout<Real, N1, N2, N3, BATCH, WARPS>::COLUMNS], const Real (&w3)[N3],
    const Real step_size, const Real* stage, const int lane) {
  using S = Layout<Real, N1, N2, N3, BATCH, WARPS>;
  const int part = lane % S::LANES_PER_ROW;
  const Real* phi = stage + part * S::PART_STRIDE;
  const Real* y = stage + S::PHI_SIZE;

  // Partial pre-activations over this lane's columns; padded samples are 0.
  Real z[S::BATCH_PADDED];
#pragma unroll
  for (int a = 0; a < S::BATCH_PADDED; ++a) {
    Real acc = Real(0);
    if (a < BATCH) {
#pragma unroll
      for (int c = 0; c < S::COLUMNS; ++c)
        acc = fused_multiply_add(w[c], phi[a * S::ROW_STRIDE + c], acc);
    }
    z[a] = acc;
  }
  reduce_scatter<S::ROUNDS>(z, lane);

  // Activations of the owned samples and their contributions to yhat.
  Real slope[S::OWNED];
  Real out[S::OWNED * N3];
#pragma unroll
  for (int r = 0; r < S::OWNED; ++r) {
    const Real h = activate<ACT>(z[r]);
    slope[r] = derivative<ACT>(z[r], h);
#pragma unroll
    for (int i = 0; i < N3; ++i) out[r * N3 + i] = h * w3[i];
  }

  // yhat: sum over the N2 rows, i.e. over lanes that share `part`.
#pragma unroll
  for (int offset = S::LANES_PER_ROW; offset < WARP; offset *= 2) {
#pragma unroll
    for (int q = 0; q < S::OWNED * N3; ++q) out[q] = out[q] + exchange(out[q], offset);
  }

  // delta = (W3^T (yhat - y)) * phi'(z); zero for padded samples.
  Real delta_owned[S::OWNED];
#pragma unroll
  for (int r = 0; r < S::OWNED; ++r) {
    const int a = part * S::OWNED + r;
    Real back = (out[r * N3] - y[a * N3]) * w3[0];
#pragma unroll
    for (int i = 1; i < N3; ++i)
      back = fused_multiply_add(out[r * N3 + i] - y[a * N3 + i], w3[i], back);
    delta_owned[r] = a < BATCH ? back * slope[r] : Real(0);
  }
  Real delta[S::BATCH_PADDED];
  all_gather<S::ROUNDS>(delta_owned, delta, lane);

  // Batch sum of delta phi1^T over this lane's columns, then the update.
#pragma unroll
  for (int c = 0; c < S::COLUMNS; ++c) {
    Real gradient = delta[0] * phi[c];
#pragma unroll
    for (int a = 1; a < BATCH; ++a)
      gradient = fused_multiply_add(delta[a], phi[a * S::ROW_STRIDE + c], gradient);
    w[c] = w[c] - step_size * gradient;
  }
}

// Where one thread's share of a step's minibatch comes from and goes to.
template <typename Real>
struct Load {
  const Real* source;  // first element of the stream's phi1 or y, plus column
  int row_length;      // N1 or N3
  int slot;            // sample of the batch, 0 <= slot < BATCH
  int target;          // offset in a stage; -1: nothing to load
};

template <typename Real, int N1, int N2, int N3, int BATCH, int WARPS>
__device__ __forceinline__ Load<Real> plan_load(int element, const Real* phi1,
                                                const Real* y, long long stream,
                                                int n_train) {
  using S = Layout<Real, N1, N2, N3, BATCH, WARPS>;
  Load<Real> load;
  load.source = phi1;
  load.row_length = N1;
  load.slot = 0;
  load.target = -1;
  if (element < BATCH * N1) {
    const int column = element % N1;
    load.slot = element / N1;
    load.source = phi1 + stream * n_train * N1 + column;
    load.target = load.slot * S::ROW_STRIDE + (column / S::COLUMNS) * S::PART_STRIDE +
                  column % S::COLUMNS;
  } else if (element < S::LOADS) {
    const int rest = element - BATCH * N1;
    load.slot = rest / N3;
    load.row_length = N3;
    load.source = y + stream * n_train * N3 + rest % N3;
    load.target = S::PHI_SIZE + load.slot * N3 + rest % N3;
  }
  return load;
}

}  // namespace phasearray_sgd

// Advance every student of the grid by n_steps SGD steps, in place.
//
// W2            (M, N2, N1)          trained weights, updated in place
// phi1          (S, n_train, N1)     first-layer features of each stream
// y             (S, n_train, N3)     targets
// W3            (S, N3, N2)          frozen read-out
// step_size     (M,)                 learning_rate / batch_size
// indices       (S, n_steps, BATCH)  minibatch sample indices, int32
// block_stream  (n_blocks,)          stream of each thread block
// block_members (n_blocks, WARPS)    student of each warp, -1 for none
template <typename Real, int N1, int N2, int N3, int BATCH, int ACT, int WARPS>
__global__ void __launch_bounds__(32 * WARPS)
    sgd_fused(Real* __restrict__ W2, const Real* __restrict__ phi1,
              const Real* __restrict__ y, const Real* __restrict__ W3,
              const Real* __restrict__ step_size, const int* __restrict__ indices,
              const int* __restrict__ block_stream,
              const int* __restrict__ block_members, const int n_train,
              const int n_steps) {
  using namespace phasearray_sgd;
  using S = Layout<Real, N1, N2, N3, BATCH, WARPS>;
  __shared__ __align__(16) Real stages[2 * S::STAGE];

  const int thread = threadIdx.x;
  const int lane = thread % WARP;
  const int row = lane / S::LANES_PER_ROW;
  const int part = lane % S::LANES_PER_ROW;
  const long long stream = block_stream[blockIdx.x];
  const int member = block_members[blockIdx.x * WARPS + thread / WARP];
  const int* stream_indices = indices + stream * n_steps * BATCH;

  // Padding (columns past N1, samples past BATCH) must read as zero.
  for (int k = thread; k < 2 * S::STAGE; k += S::THREADS) stages[k] = Real(0);

  // The student's slice of W2, its row of W3 and its step size.
  Real w[S::COLUMNS];
#pragma unroll
  for (int c = 0; c < S::COLUMNS; ++c) {
    const int column = part * S::COLUMNS + c;
    w[c] = (member >= 0 && column < N1)
               ? W2[(static_cast<long long>(member) * N2 + row) * N1 + column]
               : Real(0);
  }
  Real w3[N3];
#pragma unroll
  for (int i = 0; i < N3; ++i) w3[i] = W3[(stream * N3 + i) * N2 + row];
  const Real step = member >= 0 ? step_size[member] : Real(0);

  // This thread's share of every step's minibatch.
  Load<Real> loads[S::LOADS_PER_THREAD];
#pragma unroll
  for (int j = 0; j < S::LOADS_PER_THREAD; ++j)
    loads[j] = plan_load<Real, N1, N2, N3, BATCH, WARPS>(thread + j * S::THREADS,
                                                         phi1, y, stream, n_train);
  __syncthreads();

  // Step 0 is staged before the loop; sample indices run one step ahead of
  // the rows they select, rows one step ahead of the arithmetic.
  int sample[S::LOADS_PER_THREAD];
  Real value[S::LOADS_PER_THREAD];
#pragma unroll
  for (int j = 0; j < S::LOADS_PER_THREAD; ++j) {
    const Load<Real>& load = loads[j];
    if (load.target >= 0 && n_steps > 0) {
      const long long s0 = stream_indices[load.slot];
      stages[load.target] = load.source[s0 * load.row_length];
    }
    sample[j] = (load.target >= 0 && n_steps > 1)
                    ? stream_indices[BATCH + load.slot]
                    : 0;
  }
  __syncthreads();

  for (int t = 0; t < n_steps; ++t) {
    const Real* current = stages + (t & 1) * S::STAGE;
    Real* next = stages + ((t + 1) & 1) * S::STAGE;
    const bool stage_next = t + 1 < n_steps;

#pragma unroll
    for (int j = 0; j < S::LOADS_PER_THREAD; ++j) {
      const Load<Real>& load = loads[j];
      const bool active = load.target >= 0;
      value[j] = (active && stage_next)
                     ? load.source[static_cast<long long>(sample[j]) * load.row_length]
                     : Real(0);
      sample[j] = (active && t + 2 < n_steps)
                      ? stream_indices[static_cast<long long>(t + 2) * BATCH + load.slot]
                      : 0;
    }

    train_step<Real, N1, N2, N3, BATCH, ACT, WARPS>(w, w3, step, current, lane);

#pragma unroll
    for (int j = 0; j < S::LOADS_PER_THREAD; ++j)
      if (loads[j].target >= 0 && stage_next) next[loads[j].target] = value[j];
    __syncthreads();
  }

  if (member >= 0) {
#pragma unroll
    for (int c = 0; c < S::COLUMNS; ++c) {
      const int column = part * S::COLUMNS + c;
      if (column < N1)
        W2[(static_cast<long long>(member) * N2 + row) * N1 + column] = w[c];
    }
  }
}

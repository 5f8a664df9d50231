//! The CUDA kernels' C source, compiled for the CPU by the system's C++ compiler under a small
//! emulation of CUDA's execution model, run on small inputs against the CPU ops.
//!
//! The CUDA halves are tested on a GPU by `.ci/gpu`, which runs only where a GPU is lent; this
//! checks their index arithmetic, their sums and their order of operations on every machine,
//! before a GPU ever sees them. The emulation (`PRELUDE`):
//! - runs each block's threads as fibers on one OS thread, switched where a thread waits at a
//!   barrier or ends (a deterministic schedule), the blocks one after another (one-dimensional
//!   blocks only), `__syncthreads` a barrier of the block, `__shared__` arrays as statics;
//! - meets a warp's shuffles at a barrier of its 32 threads, which needs what CUDA's full-mask
//!   shuffles need: every thread of the warp takes part;
//! - takes the `_rn` intrinsics as plain IEEE f32 operations with contraction off, which is what
//!   they are, and the host's math library (`expf`, `erff`), within an ulp or two of CUDA's.
//!
//! Plain `a * b + c` may become one FMA on the GPU (NVRTC contracts) but not here: where a kernel
//! claims the CPU op's bits it writes `_rn` intrinsics, which neither contracts, and the tests hold
//! it to them; elsewhere they allow the rounding. Each test's `main` launches the kernels with the
//! grid the op's `cuda.rs` computes.
//!
//! Needs a C++20 compiler (`c++`, or `CXX`): g++ 11 or newer, clang 14 or newer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor, Var};

const PRELUDE: &str = r#"
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <ucontext.h>
#include <vector>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

// A block's threads are fibers on this one OS thread (ucontext), switched only where a thread
// waits at a barrier or ends: a deterministic schedule, and no kernel thread switches.
struct Barrier { unsigned participants = 0, arrived = 0, generation = 0; };
struct Fiber { ucontext_t context; bool done = false; Barrier* waiting = nullptr; unsigned generation = 0; };
ucontext_t scheduler;
std::vector<Fiber> fibers;
std::vector<char> stacks;
const size_t stack_bytes = 64 << 10;
unsigned current = 0;
std::function<void()> running_kernel;
Barrier block_barrier;
std::vector<Barrier> warp_barriers;

// Arrives at `barrier`; the last of its participants to arrive opens it and goes on, the others
// wait (their fiber yields) until it has opened.
void wait_at(Barrier& barrier) {
    unsigned generation = barrier.generation;
    if (++barrier.arrived == barrier.participants) {
        barrier.arrived = 0;
        barrier.generation++;
        return;
    }
    Fiber& fiber = fibers[current];
    fiber.waiting = &barrier;
    fiber.generation = generation;
    swapcontext(&fiber.context, &scheduler);
}
inline void __syncthreads() { wait_at(block_barrier); }

// Warps: each a barrier of its threads, and one 8-byte exchange slot per thread of the block.
unsigned char exchange[1024][8];
// Thread `lane` of the caller's warp reads the value the thread `source(lane)` passed, or keeps its
// own where that thread is outside the warp (CUDA's rule for a full-mask shuffle).
template <class T, class Source> T shuffle(T v, Source source) {
    static_assert(sizeof(T) <= 8, "shuffles move up to 8 bytes");
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    unsigned width = std::min(32u, blockDim.x - warp * 32);
    std::memcpy(exchange[threadIdx.x], &v, sizeof(T));
    wait_at(warp_barriers[warp]);
    T r = v;
    unsigned from = source(lane);
    if (from < width) std::memcpy(&r, exchange[warp * 32 + from], sizeof(T));
    wait_at(warp_barriers[warp]);
    return r;
}
template <class T> T __shfl_down_sync(unsigned, T v, int delta) { return shuffle(v, [&](unsigned lane) { return lane + delta; }); }
template <class T> T __shfl_xor_sync(unsigned, T v, int mask) { return shuffle(v, [&](unsigned lane) { return lane ^ (unsigned)mask; }); }
template <class T> inline T __ldg(const T* p) { return *p; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __int_as_float(unsigned bits) { float v; std::memcpy(&v, &bits, 4); return v; }
using std::isnan;
using std::max;
using std::min;

void fiber_start() {
    running_kernel();
    fibers[current].done = true;
}

// Runs `kernel` over the grid, the blocks in turn; within a block, round robin over the threads
// that can run (not ended, not waiting at a barrier that has not opened) until all have ended.
template <class F> void launch(dim3 grid, dim3 block, F kernel) {
    gridDim = grid;
    blockDim = block;
    running_kernel = kernel;
    fibers.assign(block.x, Fiber{});
    stacks.resize(block.x * stack_bytes);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                block_barrier = Barrier{block.x};
                warp_barriers.clear();
                for (unsigned first = 0; first < block.x; first += 32) warp_barriers.push_back(Barrier{std::min(32u, block.x - first)});
                for (unsigned t = 0; t < block.x; t++) {
                    Fiber& fiber = fibers[t];
                    fiber = Fiber{};
                    getcontext(&fiber.context);
                    fiber.context.uc_stack.ss_sp = stacks.data() + t * stack_bytes;
                    fiber.context.uc_stack.ss_size = stack_bytes;
                    fiber.context.uc_link = &scheduler;
                    makecontext(&fiber.context, fiber_start, 0);
                }
                blockIdx = dim3{bx, by, bz};
                for (unsigned ended = 0; ended < block.x;) {
                    bool progress = false;
                    ended = 0;
                    for (unsigned t = 0; t < block.x; t++) {
                        Fiber& fiber = fibers[t];
                        if (fiber.done) { ended++; continue; }
                        if (fiber.waiting && fiber.waiting->generation == fiber.generation) continue;
                        fiber.waiting = nullptr;
                        current = t;
                        threadIdx = dim3{t, 0, 0};
                        swapcontext(&scheduler, &fiber.context);
                        progress = true;
                        if (fiber.done) ended++;
                    }
                    if (!progress && ended < block.x) {
                        std::fprintf(stderr, "block (%u, %u, %u): the threads wait at barriers that cannot open\n", bx, by, bz);
                        std::abort();
                    }
                }
            }
}
// The inputs, read in order from argv[1]; the outputs written in order to argv[2].
struct Input {
    FILE* file;
    template <class T> T value() { T v; if (fread(&v, sizeof v, 1, file) != 1) std::exit(3); return v; }
    std::vector<float> floats(size_t n) {
        std::vector<float> v(n);
        if (fread(v.data(), 4, n, file) != n) std::exit(3);
        return v;
    }
};
void write(FILE* file, const std::vector<float>& v) { fwrite(v.data(), 4, v.size(), file); }
"#;

/// The CUDA C source of the op whose `cuda.rs` is `file`: its `const SOURCE` raw string.
fn kernel_source(file: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(file))
        .unwrap_or_else(|e| panic!("reading {file}: {e}"));
    let start = text.find("const SOURCE: &str = r#\"").unwrap_or_else(|| panic!("{file} has no `const SOURCE: &str = r#\"`"));
    let body = &text[start + "const SOURCE: &str = r#\"".len()..];
    body[..body.find("\"#;").unwrap_or_else(|| panic!("{file}: SOURCE does not end"))].to_string()
}

/// A C++ program of the prelude, the kernels and `main`, compiled once into the test's folder.
struct Emulated {
    binary: PathBuf,
    folder: PathBuf,
}

impl Emulated {
    fn compile(name: &str, kernels: &str, main: &str) -> Emulated {
        let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda-emulation-{name}"));
        std::fs::create_dir_all(&folder).unwrap();
        let source = folder.join(format!("{name}.cpp"));
        std::fs::write(&source, format!("{PRELUDE}\n{kernels}\n{main}")).unwrap();
        let binary = folder.join(name);
        let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let output = Command::new(&compiler)
            .args(["-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-o"])
            .arg(&binary)
            .arg(&source)
            .output()
            .unwrap_or_else(|e| {
                panic!("these tests compile the CUDA kernels' source for the CPU with a C++20 compiler; `{compiler}` did not start ({e}): install g++ (Debian: apt-get install g++) or set CXX")
            });
        assert!(output.status.success(), "{compiler} could not compile {}:\n{}", source.display(), String::from_utf8_lossy(&output.stderr));
        Emulated { binary, folder }
    }

    /// Runs the program on `input` and returns its output floats.
    fn run(&self, input: Inputs) -> Vec<f32> {
        let (input_path, output_path) = (self.folder.join("input.bin"), self.folder.join("output.bin"));
        std::fs::write(&input_path, input.0).unwrap();
        let status = Command::new(&self.binary).arg(&input_path).arg(&output_path).status().unwrap();
        assert!(status.success(), "{} failed: {status}", self.binary.display());
        std::fs::read(&output_path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

fn floats(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The bytes a test's `main` reads, in the order it reads them.
#[derive(Default)]
struct Inputs(Vec<u8>);

impl Inputs {
    /// Sizes, each a C `int`.
    fn sizes(self, values: &[usize]) -> Self {
        self.ints(&values.iter().map(|v| i32::try_from(*v).expect("a size that fits an int")).collect::<Vec<i32>>())
    }

    fn ints(mut self, values: &[i32]) -> Self {
        self.0.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        self
    }

    fn unsigned(mut self, value: u32) -> Self {
        self.0.extend(value.to_le_bytes());
        self
    }

    fn double(mut self, value: f64) -> Self {
        self.0.extend(value.to_le_bytes());
        self
    }

    fn floats(mut self, values: &[f32]) -> Self {
        self.0.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        self
    }
}

/// Splits `emulated` into the lengths of `truth`'s parts and holds each part within `bound` of
/// the truth, relative to the part's largest value (at least 1); a NaN where the truth has a
/// number fails.
fn assert_within(name: &str, truth: &[(&str, Vec<f32>)], emulated: &[f32], bound: f32) {
    assert_eq!(emulated.len(), truth.iter().map(|(_, v)| v.len()).sum::<usize>(), "{name}: output length");
    let mut rest = emulated;
    for (what, expected) in truth {
        let (ours, tail) = rest.split_at(expected.len());
        rest = tail;
        let largest = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
        let error = worst(expected.iter().zip(ours).map(|(a, b)| f64::from((a - b).abs()))) as f32 / largest;
        assert!(error < bound, "{name}: {what} relative error {error} (bound {bound})");
    }
}

/// The largest of some absolute differences, infinite where one is NaN (`f64::max` would pass
/// over it, and a kernel that computes NaN would pass).
fn worst(differences: impl Iterator<Item = f64>) -> f64 {
    differences.fold(0.0, |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) })
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Seeded normal values (Box-Muller on a 64-bit LCG), so the cases need no random crate.
fn normal_values(seed: u64, n: usize, std: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut uniform = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n).map(|_| ((-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()) as f32 * std).collect()
}

const DEPTHWISE_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    Depthwise p = in.value<Depthwise>();
    size_t planes = (size_t)p.batch * p.channels;
    size_t nx = planes * p.height * p.width, ny = planes * p.out_h * p.out_w, nw = (size_t)p.channels * p.kernel * p.kernel;
    std::vector<float> x = in.floats(nx), w = in.floats(nw), dy = in.floats(ny), y(ny), dx(nx), dw(nw);
    // depthwise/cuda.rs's `per_position` and `grad_weight` grids.
    auto per_position = [&](size_t positions) {
        unsigned threads = (unsigned)std::clamp<size_t>((positions + 31) / 32 * 32, 32, 256);
        return std::make_pair(dim3{(unsigned)planes, (unsigned)((positions + threads - 1) / threads), 1}, dim3{threads, 1, 1});
    };
    auto [forward_grid, forward_block] = per_position((size_t)p.out_h * p.out_w);
    launch(forward_grid, forward_block, [&] { depthwise_forward(x.data(), w.data(), y.data(), p); });
    auto [input_grid, input_block] = per_position((size_t)p.height * p.width);
    launch(input_grid, input_block, [&] { depthwise_grad_input(dy.data(), w.data(), dx.data(), p); });
    size_t threads = 1;
    while (threads < (size_t)p.out_h * p.out_w) threads *= 2;
    threads = std::clamp<size_t>(threads, 32, 512);
    launch(dim3{(unsigned)nw, 1, 1}, dim3{(unsigned)threads, 1, 1}, [&] { depthwise_grad_weight(x.data(), dy.data(), dw.data(), p); });
    FILE* out = fopen(argv[2], "wb");
    write(out, y); write(out, dx); write(out, dw);
    fclose(out);
}
"#;

/// The direct depthwise kernels against the CPU op: the forward pass and the input gradient to
/// the bit (the same operations in the same order), the weight gradient (f64 sums in a block
/// tree) within f32 rounding of the CPU's: MobileNet's and EfficientNet's 3x3 and 5x5 at stride
/// 1 and 2, ConvNeXt's 7x7, a kernel the source does not unroll (9), odd and even sizes, a map
/// smaller than the kernel, planes of more than one block.
#[test]
fn the_depthwise_kernels_compute_what_the_cpu_op_does() {
    let program = Emulated::compile("depthwise", &kernel_source("depthwise/cuda.rs"), DEPTHWISE_MAIN);
    for (case, (batch, channels, kernel, stride, height, width)) in [
        (2usize, 3usize, 3usize, 1usize, 9usize, 7usize),
        (3, 5, 3, 2, 9, 8),
        (2, 4, 5, 2, 11, 10),
        (2, 3, 5, 1, 6, 6),
        (2, 8, 7, 1, 13, 21),
        (1, 2, 7, 1, 5, 4),
        (2, 3, 9, 2, 12, 11),
        (2, 3, 3, 1, 23, 19),
        (2, 2, 3, 2, 40, 33),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("b{batch} c{channels} k{kernel} s{stride} {height}x{width}");
        let padding = kernel / 2;
        let (out_h, out_w) = ((height + 2 * padding - kernel) / stride + 1, (width + 2 * padding - kernel) / stride + 1);
        let seed = case as u64 * 3;
        let x = normal_values(seed, batch * channels * height * width, 1.0);
        let w = normal_values(seed + 1, channels * kernel * kernel, 0.5);
        let dy = normal_values(seed + 2, batch * channels * out_h * out_w, 1.0);

        let input = Var::from_tensor(&Tensor::from_vec(x.clone(), (batch, channels, height, width), &Device::Cpu).unwrap()).unwrap();
        let weight = Var::from_tensor(&Tensor::from_vec(w.clone(), (channels, 1, kernel, kernel), &Device::Cpu).unwrap()).unwrap();
        let y = medxfer_kernels::depthwise_conv2d(input.as_tensor(), weight.as_tensor(), stride, padding).unwrap();
        assert_eq!(y.dims(), [batch, channels, out_h, out_w], "{name}");
        let upstream = Tensor::from_vec(dy.clone(), y.dims(), &Device::Cpu).unwrap();
        let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let truth = [
            ("output", floats(&y)),
            ("input gradient", floats(grads.get(input.as_tensor()).unwrap())),
            ("weight gradient", floats(grads.get(weight.as_tensor()).unwrap())),
        ];

        let inputs = Inputs::default().sizes(&[batch, channels, height, width, out_h, out_w, kernel, stride, padding]);
        let out = program.run(inputs.floats(&x).floats(&w).floats(&dy));
        assert_within(&name, &truth, &out, 1e-5);
        // The forward pass and the input gradient, moreover, to the bit.
        let (y_len, dx_len) = (truth[0].1.len(), truth[1].1.len());
        assert!(bits(&out[..y_len]) == bits(&truth[0].1), "{name}: the outputs differ from the CPU op's");
        assert!(bits(&out[y_len..y_len + dx_len]) == bits(&truth[1].1), "{name}: the input gradients differ from the CPU op's");
    }
}

/// batchnorm/cuda.rs's `plane_grid`, its limit on the channels and images (65,535 there) a
/// parameter here: the tests also run with a limit of 2, where the kernels' loops take the rest.
const PLANE_GRID: &str = r#"
dim3 plane_block(int plane) { return dim3{(unsigned)std::clamp((plane + 31) / 32 * 32, 32, 256), 1, 1}; }
dim3 plane_grid(int batch, int channels, int plane, int limit) {
    unsigned threads = plane_block(plane).x;
    unsigned stretches = std::max(1u, (unsigned)((plane + threads * 8 - 1) / (threads * 8)));
    return dim3{stretches, (unsigned)std::clamp(channels, 1, limit), (unsigned)std::clamp(batch, 1, limit)};
}
"#;

const EVAL_BATCH_NORM_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    int batch = in.value<int>(), channels = in.value<int>(), plane = in.value<int>(), act = in.value<int>(), with_residual = in.value<int>();
    int limit = in.value<int>();
    double eps = in.value<double>();
    size_t n = (size_t)batch * channels * plane;
    std::vector<float> x = in.floats(n), gamma = in.floats(channels), beta = in.floats(channels), mean = in.floats(channels),
        var = in.floats(channels), residual = with_residual ? in.floats(n) : std::vector<float>(), y(n);
    launch(plane_grid(batch, channels, plane, limit), plane_block(plane), [&] {
        bn_eval_forward(x.data(), gamma.data(), beta.data(), mean.data(), var.data(), with_residual ? residual.data() : nullptr,
                        y.data(), batch, channels, plane, eps, act);
    });
    FILE* out = fopen(argv[2], "wb");
    write(out, y);
    fclose(out);
}
"#;

/// The eval BatchNorm kernel against the CPU op, to the bit (the README's claim; SiLU's within
/// 1e-6, the exponentials differing): each activation with and without a residual, planes of one
/// stretch and of several, a 7x7 map, a plane shorter than a warp.
#[test]
fn the_eval_batch_norm_kernel_computes_the_cpu_ops_bits() {
    use medxfer_kernels::{BatchNormParams, FusedActivation, RunningStatistics};
    let program = Emulated::compile("batchnorm", &kernel_source("batchnorm/cuda.rs"), &format!("{PLANE_GRID}{EVAL_BATCH_NORM_MAIN}"));
    let activations =
        [(FusedActivation::Identity, 0i32), (FusedActivation::Relu, 1), (FusedActivation::Relu6, 2), (FusedActivation::Silu, 3)];
    for (case, (batch, channels, height, width)) in
        [(2usize, 3usize, 7usize, 7usize), (3, 4, 56, 45), (2, 5, 3, 5), (1, 2, 64, 70)].into_iter().enumerate()
    {
        for (activation, code) in activations {
            for with_residual in [false, true] {
                let name = format!("{batch}x{channels}x{height}x{width} {activation:?} residual {with_residual}");
                let seed = 100 + case as u64 * 10;
                let n = batch * channels * height * width;
                // Values around the ReLU6 kinks, so that both clamps are met.
                let x: Vec<f32> = normal_values(seed, n, 4.0).iter().map(|v| v + 2.0).collect();
                let gamma = normal_values(seed + 1, channels, 1.0);
                let beta = normal_values(seed + 2, channels, 1.0);
                let mean = normal_values(seed + 3, channels, 1.0);
                let var: Vec<f32> = normal_values(seed + 4, channels, 1.0).iter().map(|v| v * v + 0.1).collect();
                let residual = normal_values(seed + 5, n, 1.0);
                let eps = 1e-5;

                let tensor = |values: &[f32], shape: &[usize]| Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap();
                let shape = [batch, channels, height, width];
                let (g, b, m, v) =
                    (tensor(&gamma, &[channels]), tensor(&beta, &[channels]), tensor(&mean, &[channels]), tensor(&var, &[channels]));
                let r = tensor(&residual, &shape);
                let truth = medxfer_kernels::batch_norm_eval(
                    &tensor(&x, &shape),
                    BatchNormParams { gamma: &g, beta: &b, eps },
                    RunningStatistics { mean: &m, var: &v },
                    with_residual.then_some(&r),
                    activation,
                )
                .unwrap();

                // Every other case on a grid of at most 2 channels and 2 images.
                let limit = if case % 2 == 0 { 2 } else { 65_535 };
                let inputs = Inputs::default().sizes(&[batch, channels, height * width]).ints(&[code, i32::from(with_residual), limit]);
                let inputs = inputs.double(eps).floats(&x).floats(&gamma).floats(&beta).floats(&mean).floats(&var);
                let emulated = program.run(inputs.floats(if with_residual { &residual } else { &[] }));
                if activation == FusedActivation::Silu {
                    // The host's expf against the CPU op's `crate::exp`: an ulp or two.
                    assert_within(&name, &[("output", floats(&truth))], &emulated, 1e-6);
                } else {
                    assert!(bits(&emulated) == bits(&floats(&truth)), "{name}: the outputs differ from the CPU op's");
                }
            }
        }
    }
}

const ACTIVATION_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    unsigned n = in.value<unsigned>();
    std::vector<float> x = in.floats(n), dy = in.floats(n), y(n), dx(n);
    // activation/cuda.rs's `elementwise` grid.
    dim3 grid{std::clamp((n + 255) / 256, 1u, 65535u * 8), 1, 1}, block{256, 1, 1};
    FILE* out = fopen(argv[2], "wb");
    launch(grid, block, [&] { gelu_forward(x.data(), y.data(), n); });
    launch(grid, block, [&] { gelu_backward(dy.data(), x.data(), dx.data(), n); });
    write(out, y); write(out, dx);
    launch(grid, block, [&] { silu_forward(x.data(), y.data(), n); });
    launch(grid, block, [&] { silu_backward(dy.data(), x.data(), dx.data(), n); });
    write(out, y); write(out, dx);
    fclose(out);
}
"#;

/// GELU's and SiLU's kernels, each way, against the CPU ops, within the bounds the GPU test
/// (`activation/cuda.rs`) allows: GELU over [-8, 8], SiLU over [-30, 30], upstream 1-7,
/// relative to the largest value.
#[test]
fn the_activation_kernels_match_the_cpu_ops() {
    let program = Emulated::compile("activation", &kernel_source("activation/cuda.rs"), ACTIVATION_MAIN);
    type Activation = fn(&Tensor) -> candle_core::Result<Tensor>;
    let cases: [(&str, Activation, f32, f32, usize); 2] =
        [("gelu", medxfer_kernels::gelu_erf, 0.004, 1e-6, 0), ("silu", medxfer_kernels::silu, 0.015, 2e-6, 2)];
    for (name, activation, step, backward_bound, at) in cases {
        let x: Vec<f32> = (-2000..=2000).map(|i| i as f32 * step).collect();
        let n = x.len();
        let dy: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
        let input = Var::from_slice(&x, (1, n), &Device::Cpu).unwrap();
        let y = activation(input.as_tensor()).unwrap();
        let upstream = Tensor::from_vec(dy.clone(), (1, n), &Device::Cpu).unwrap();
        let dx = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap().remove(&input).unwrap();

        let out = program.run(Inputs::default().unsigned(n as u32).floats(&x).floats(&dy));
        assert_eq!(out.len(), 4 * n, "output length");
        let (emulated_y, emulated_dx) = (&out[at * n..(at + 1) * n], &out[(at + 1) * n..(at + 2) * n]);
        let relative = |truth: &[f32], ours: &[f32]| {
            let largest = truth.iter().fold(1f32, |m, v| m.max(v.abs()));
            worst(truth.iter().zip(ours).map(|(a, b)| f64::from((a - b).abs()))) as f32 / largest
        };
        let (forward, backward) = (relative(&floats(&y), emulated_y), relative(&floats(&dx), emulated_dx));
        assert!(forward < 1e-6 && backward < backward_bound, "{name}: forward {forward:.2e}, backward {backward:.2e}");
    }
}

const TRAIN_BATCH_NORM_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    int batch = in.value<int>(), channels = in.value<int>(), plane = in.value<int>(), act = in.value<int>(), with_residual = in.value<int>();
    int limit = in.value<int>();
    double eps = in.value<double>();
    unsigned total = (unsigned)batch * channels * plane;
    std::vector<float> x = in.floats(total), affine = in.floats(2 * channels);
    std::vector<float> residual = with_residual ? in.floats(total) : std::vector<float>();
    std::vector<float> dy = in.floats(total), y(total), out(with_residual ? 2 * total : total);
    // batchnorm/cuda.rs's grids: `slices`, `per_channel` (256 threads), `plane_grid`.
    int slices = std::clamp((1024 + channels - 1) / channels, 1, std::max(batch, 1));
    dim3 reduce{(unsigned)slices, (unsigned)channels, 1}, per_channel{(unsigned)((channels + 255) / 256), 1, 1};
    dim3 elementwise = plane_grid(batch, channels, plane, limit), block{256, 1, 1};
    std::vector<double> partial(channels * slices * 2), stats(3 * channels), sums(2 * channels);
    launch(reduce, block, [&] { bn_stats_partial(x.data(), partial.data(), batch, channels, plane, slices); });
    launch(per_channel, block, [&] { bn_stats_finish(x.data(), partial.data(), stats.data(), batch, channels, plane, slices, eps); });
    launch(elementwise, plane_block(plane), [&] {
        bn_forward(x.data(), affine.data(), stats.data(), with_residual ? residual.data() : nullptr, y.data(), batch, channels, plane, act);
    });
    // batchnorm/cuda.rs's `gradients`: y for the mask only after a residual add, else null (the
    // kernels recompute the mask from x).
    const float* mask_from_y = (act != 0 && with_residual) ? y.data() : nullptr;
    launch(reduce, block, [&] { bn_grad_partial(x.data(), mask_from_y, dy.data(), affine.data(), stats.data(), partial.data(), batch, channels, plane, slices, act); });
    launch(per_channel, block, [&] { bn_grad_finish(partial.data(), sums.data(), channels, slices); });
    launch(elementwise, plane_block(plane), [&] {
        bn_grad_input(x.data(), mask_from_y, dy.data(), affine.data(), stats.data(), sums.data(), out.data(), batch, channels, plane, act, with_residual);
    });
    // batchnorm/cuda.rs's `batch_norm_train`: the mean, and the biased variance times n / (n - 1).
    double count = (double)batch * plane, correction = count / std::max(count - 1.0, 1.0);
    std::vector<float> estimates(2 * channels), grad_affine(2 * channels);
    launch(per_channel, block, [&] { bn_batch_estimates(stats.data(), estimates.data(), channels, correction); });
    for (int c = 0; c < channels; c++) {
        grad_affine[c] = (float)sums[c];
        grad_affine[channels + c] = (float)sums[channels + c];
    }
    FILE* file = fopen(argv[2], "wb");
    write(file, y); write(file, estimates); write(file, out); write(file, grad_affine);
    fclose(file);
}
"#;

/// The train-mode BatchNorm kernels (statistics in slices of the batch with warp shuffles, the
/// forward pass, the gradient sums and the input gradient) against the CPU op, within the GPU
/// test's bound (1e-5 relative): output, mean, unbiased variance, the gradients of x, gamma, beta
/// and the residual; every activation with and without a residual, whole images per slice, a
/// 1x1 plane, a channel whose large mean must not eat its variance, one 20x20 image (a slice of
/// more values than a block's threads, each thread's walk crossing the plane's end), and (one
/// combination each: the emulation's barriers make their ~1,200 blocks slow) 8 images over 6
/// slices, unevenly, and 3 images of 12x12 over 2 slices (a walk across images).
#[test]
fn the_train_batch_norm_kernels_match_the_cpu_op() {
    use medxfer_kernels::{BatchNormParams, FusedActivation};
    let program =
        Emulated::compile("batchnorm_train", &kernel_source("batchnorm/cuda.rs"), &format!("{PLANE_GRID}{TRAIN_BATCH_NORM_MAIN}"));
    let activations =
        [(FusedActivation::Identity, 0i32), (FusedActivation::Relu, 1), (FusedActivation::Relu6, 2), (FusedActivation::Silu, 3)];
    for (case, (batch, channels, height, width)) in
        [(2usize, 3usize, 5usize, 4usize), (4, 2, 1, 1), (8, 2, 7, 9), (8, 200, 1, 2), (1, 2, 20, 20), (3, 600, 12, 12)]
            .into_iter()
            .enumerate()
    {
        for (activation, code) in activations {
            for with_residual in [false, true] {
                // SiLU after a residual add never reaches the kernels (`batch_norm_train` runs it
                // as an op of its own).
                let silu_after_residual = activation == FusedActivation::Silu && with_residual;
                if silu_after_residual || (channels > 100 && !(activation == FusedActivation::Relu6 && with_residual)) {
                    continue;
                }
                let name = format!("{batch}x{channels}x{height}x{width} {activation:?} residual {with_residual}");
                let seed = 200 + case as u64 * 10;
                let (n, plane) = (batch * channels * height * width, height * width);
                let mut x: Vec<f32> = normal_values(seed, n, 2.0).iter().map(|v| v + 0.7).collect();
                // Channel 0 far from zero with a small spread.
                for b in 0..batch {
                    for (i, v) in x[b * channels * plane..][..plane].iter_mut().enumerate() {
                        *v = 1000.0 + 0.01 * normal_values(seed + 9 + (b * plane + i) as u64, 1, 1.0)[0];
                    }
                }
                let gamma: Vec<f32> = normal_values(seed + 1, channels, 0.3).iter().map(|v| v + 3.0).collect();
                let beta: Vec<f32> = normal_values(seed + 2, channels, 0.3).iter().map(|v| v + 1.5).collect();
                let residual = normal_values(seed + 3, n, 1.0);
                let dy = normal_values(seed + 4, n, 1.0);
                let eps = 1e-5;

                let shape = [batch, channels, height, width];
                let var = |values: &[f32], shape: &[usize]| {
                    Var::from_tensor(&Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()).unwrap()
                };
                let (xv, gv, bv, rv) = (var(&x, &shape), var(&gamma, &[channels]), var(&beta, &[channels]), var(&residual, &shape));
                let params = BatchNormParams { gamma: gv.as_tensor(), beta: bv.as_tensor(), eps };
                let out =
                    medxfer_kernels::batch_norm_train(xv.as_tensor(), params, with_residual.then_some(rv.as_tensor()), activation).unwrap();
                let upstream = Tensor::from_vec(dy.clone(), &shape[..], &Device::Cpu).unwrap();
                let grads = (&out.y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                let gradient = |v: &Var| floats(grads.get(v.as_tensor()).expect("every input gets a gradient"));
                let mut truth = vec![
                    ("output", floats(&out.y)),
                    ("mean", floats(&out.mean)),
                    ("unbiased variance", floats(&out.unbiased_var)),
                    ("input gradient", gradient(&xv)),
                ];
                if with_residual {
                    truth.push(("residual gradient", gradient(&rv)));
                }
                truth.push(("gamma gradient", gradient(&gv)));
                truth.push(("beta gradient", gradient(&bv)));

                // Every other case on a grid of at most 2 channels and 2 images.
                let limit = if case % 2 == 0 { 2 } else { 65_535 };
                let inputs = Inputs::default().sizes(&[batch, channels, plane]).ints(&[code, i32::from(with_residual), limit]).double(eps);
                let inputs = inputs.floats(&x).floats(&gamma).floats(&beta).floats(if with_residual { &residual } else { &[] });
                assert_within(&name, &truth, &program.run(inputs.floats(&dy)), 1e-5);
            }
        }
    }
}

const LAYER_NORM_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    int rows = in.value<int>(), width = in.value<int>();
    double eps = in.value<double>();
    size_t count = (size_t)rows * width;
    std::vector<float> x = in.floats(count), w = in.floats(width), b = in.floats(width), dy = in.floats(count);
    std::vector<float> y(count), dx(count), stats(2 * rows), sums(2 * width);
    // layer_norm/cuda.rs's grids: `row_grid` (8 warps, a row each), `chunks` blocks of rows.
    dim3 row_grid{(unsigned)((rows + 7) / 8), 1, 1}, row_block{256, 1, 1};
    int chunks = std::max(std::min(1024, rows), 1);
    std::vector<double> partial((size_t)chunks * 2 * width);
    launch(row_grid, row_block, [&] { ln_forward(x.data(), w.data(), b.data(), y.data(), rows, width, eps); });
    launch(row_grid, row_block, [&] { ln_grad_input(x.data(), w.data(), dy.data(), dx.data(), stats.data(), rows, width, eps); });
    launch(dim3{(unsigned)chunks, 1, 1}, dim3{256, 1, 1}, [&] { ln_grad_partial(x.data(), dy.data(), stats.data(), partial.data(), rows, width, chunks); });
    launch(dim3{(unsigned)((2 * width + 255) / 256), 1, 1}, dim3{256, 1, 1}, [&] { ln_grad_finish(partial.data(), sums.data(), width, chunks); });
    FILE* file = fopen(argv[2], "wb");
    write(file, y); write(file, dx); write(file, sums);
    fclose(file);
}
"#;

/// The LayerNorm kernels (a warp per row with shuffles, the column sums in chunks of rows)
/// against the CPU op, within 1e-5 relative: the output and the gradients of x, the weight and
/// the bias, at ViT's width, a width of one (whose input gradient must be exactly 0), rows that
/// do not fill a block's warps, and more rows than chunks (uneven chunks).
#[test]
fn the_layer_norm_kernels_match_the_cpu_op() {
    let program = Emulated::compile("layer_norm", &kernel_source("layer_norm/cuda.rs"), LAYER_NORM_MAIN);
    for (case, (rows, width)) in [(5usize, 384usize), (3, 1), (70, 33), (1500, 3)].into_iter().enumerate() {
        let name = format!("{rows} rows of {width}");
        let seed = 300 + case as u64 * 10;
        let x: Vec<f32> = normal_values(seed, rows * width, 2.0).iter().map(|v| v + 5.0).collect();
        let w: Vec<f32> = normal_values(seed + 1, width, 0.5).iter().map(|v| v + 1.0).collect();
        let b = normal_values(seed + 2, width, 0.5);
        let dy = normal_values(seed + 3, rows * width, 1.0);
        let eps = 1e-6;

        let var =
            |values: &[f32], shape: &[usize]| Var::from_tensor(&Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()).unwrap();
        let (xv, wv, bv) = (var(&x, &[rows, width]), var(&w, &[width]), var(&b, &[width]));
        let y = medxfer_kernels::layer_norm(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), eps).unwrap();
        let upstream = Tensor::from_vec(dy.clone(), (rows, width), &Device::Cpu).unwrap();
        let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let gradient = |v: &Var| floats(grads.get(v.as_tensor()).expect("every input gets a gradient"));
        let truth = [
            ("output", floats(&y)),
            ("input gradient", gradient(&xv)),
            ("weight gradient", gradient(&wv)),
            ("bias gradient", gradient(&bv)),
        ];

        let emulated = program.run(Inputs::default().sizes(&[rows, width]).double(eps).floats(&x).floats(&w).floats(&b).floats(&dy));
        assert_within(&name, &truth, &emulated, 1e-5);
        if width == 1 {
            assert!(truth[1].1.iter().all(|v| *v == 0.0), "{name}: a row of one value has no input gradient");
            let dx = &emulated[truth[0].1.len()..][..truth[1].1.len()];
            assert!(dx.iter().all(|v| *v == 0.0), "{name}: the kernels' input gradient of a one-value row is not 0: {dx:?}");
        }
    }
}

const SGD_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    unsigned n = in.value<unsigned>();
    float lr = in.value<float>(), momentum = in.value<float>(), wd = in.value<float>();
    int nesterov = in.value<int>(), with_buffer = in.value<int>();
    std::vector<float> p = in.floats(n), grad = in.floats(n), b = with_buffer ? in.floats(n) : std::vector<float>(), out(2 * n);
    // sgd/cuda.rs's grid.
    launch(dim3{std::clamp((n + 255) / 256, 1u, 65535u * 8), 1, 1}, dim3{256, 1, 1}, [&] {
        sgd_step(p.data(), grad.data(), with_buffer ? b.data() : nullptr, out.data(), n, lr, momentum, wd, nesterov);
    });
    FILE* file = fopen(argv[2], "wb");
    write(file, out);
    fclose(file);
}
"#;

/// The SGD kernel against the CPU op, to the bit (the README's claim): the first step (no
/// buffer) and a later one, Nesterov and plain momentum, with and without weight decay.
#[test]
fn the_sgd_kernel_computes_the_cpu_ops_bits() {
    use medxfer_kernels::SgdSettings;
    let program = Emulated::compile("sgd", &kernel_source("sgd/cuda.rs"), SGD_MAIN);
    let n = 1000;
    let (p, grad, buffer) = (normal_values(400, n, 1.0), normal_values(401, n, 0.1), normal_values(402, n, 0.1));
    for nesterov in [true, false] {
        for weight_decay in [0.0, 1e-4] {
            for with_buffer in [false, true] {
                let name = format!("nesterov {nesterov}, weight decay {weight_decay}, buffer {with_buffer}");
                let settings = SgdSettings { learning_rate: 0.03, momentum: 0.9, weight_decay, nesterov };
                let tensor = |values: &[f32]| Tensor::from_vec(values.to_vec(), n, &Device::Cpu).unwrap();
                let b = tensor(&buffer);
                let update = medxfer_kernels::sgd_update(&tensor(&p), &tensor(&grad), with_buffer.then_some(&b), settings).unwrap();
                let truth: Vec<f32> = floats(&update.param).into_iter().chain(floats(update.buffer.as_ref().unwrap())).collect();

                let inputs = Inputs::default()
                    .unsigned(n as u32)
                    .floats(&[settings.learning_rate as f32, settings.momentum as f32, weight_decay as f32])
                    .ints(&[i32::from(nesterov), i32::from(with_buffer)]);
                let inputs = inputs.floats(&p).floats(&grad).floats(if with_buffer { &buffer } else { &[] });
                assert!(bits(&program.run(inputs)) == bits(&truth), "{name}: the bits differ from the CPU op's");
            }
        }
    }
}

const MAX_POOL_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    Pool p = in.value<Pool>();
    size_t n = (size_t)p.planes * p.height * p.width, m = (size_t)p.planes * p.out_h * p.out_w;
    std::vector<float> x = in.floats(n), dy = in.floats(m), y(m), dx(n);
    // pool/cuda.rs's `grid`.
    auto grid = [](size_t count) { return dim3{(unsigned)std::clamp<size_t>((count + 255) / 256, 1, 65535 * 16), 1, 1}; };
    launch(grid(m), dim3{256, 1, 1}, [&] { max_pool_forward(x.data(), y.data(), p); });
    launch(grid(n), dim3{256, 1, 1}, [&] { max_pool_backward(x.data(), y.data(), dy.data(), dx.data(), p); });
    FILE* file = fopen(argv[2], "wb");
    write(file, y); write(file, dx);
    fclose(file);
}
"#;

/// The stems' max pooling kernels against the CPU op, to the bit: odd and even sizes, and a
/// ReLU'd input full of tied zeros (the first maximum takes the gradient) with a NaN planted
/// (the last NaN takes it).
#[test]
fn the_max_pool_kernels_compute_the_cpu_ops_bits() {
    let program = Emulated::compile("max_pool", &kernel_source("pool/cuda.rs"), MAX_POOL_MAIN);
    for (case, ((batch, channels, height, width), relu)) in
        [((2usize, 3usize, 16usize, 15usize), false), ((3, 5, 9, 8), true), ((1, 2, 7, 13), true), ((2, 3, 2, 3), false)]
            .into_iter()
            .enumerate()
    {
        let name = format!("{batch}x{channels}x{height}x{width} relu {relu}");
        let n = batch * channels * height * width;
        let mut x = normal_values(500 + case as u64, n, 1.0);
        if relu {
            x.iter_mut().for_each(|v| *v = v.max(0.0));
            x[n / 2] = f32::NAN;
        }
        let (out_h, out_w) = ((height - 1) / 2 + 1, (width - 1) / 2 + 1);
        let dy = normal_values(510 + case as u64, batch * channels * out_h * out_w, 1.0);
        let input = Var::from_tensor(&Tensor::from_vec(x.clone(), (batch, channels, height, width), &Device::Cpu).unwrap()).unwrap();
        let y = medxfer_kernels::max_pool_3x3_s2_p1(input.as_tensor()).unwrap();
        let upstream = Tensor::from_vec(dy.clone(), y.dims(), &Device::Cpu).unwrap();
        let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let truth: Vec<f32> = floats(&y).into_iter().chain(floats(grads.get(input.as_tensor()).unwrap())).collect();

        let inputs = Inputs::default().sizes(&[batch * channels, height, width, out_h, out_w, 3, 2, 1]).floats(&x).floats(&dy);
        assert!(bits(&program.run(inputs)) == bits(&truth), "{name}: the bits differ from the CPU op's");
    }
}

const ATTENTION_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    int batch = in.value<int>(), tokens = in.value<int>(), heads = in.value<int>(), head_dim = in.value<int>();
    float scale = in.value<float>();
    size_t part = (size_t)batch * tokens * heads * head_dim;
    int rows = batch * heads * tokens, width = tokens;
    std::vector<float> qkv = in.floats(3 * part), scores = in.floats((size_t)rows * width), dp = in.floats((size_t)rows * width);
    std::vector<float> split(3 * part), merged(3 * part), p((size_t)rows * width), ds((size_t)rows * width);
    // attention/cuda.rs's grids: a block of 256 per row of the projection; 8 warps, a row each.
    dim3 per_row{(unsigned)std::max(batch * tokens, 1), 1, 1}, block{256, 1, 1}, warp_rows{(unsigned)((rows + 7) / 8), 1, 1};
    launch(per_row, block, [&] { split_heads(qkv.data(), split.data(), batch, tokens, 3, heads, head_dim); });
    launch(per_row, block, [&] { merge_heads(split.data(), split.data() + part, split.data() + 2 * part, merged.data(), batch, tokens, 3, heads, head_dim); });
    launch(warp_rows, block, [&] { softmax_scaled(scores.data(), p.data(), rows, width, scale); });
    launch(warp_rows, block, [&] { softmax_scaled_backward(p.data(), dp.data(), ds.data(), rows, width, scale); });
    FILE* file = fopen(argv[2], "wb");
    write(file, split); write(file, merged); write(file, p); write(file, ds);
    fclose(file);
}
"#;

/// The attention kernels: the head split against candle's reshape and permute of the (B, N,
/// 3 C) projection into (3, B, H, N, D), to the bit, and the merge back to the projection's
/// layout, to the bit; the scaled softmax and its backward pass against f64 arithmetic (within
/// 1e-6, of a probability or of the backward pass's largest term before it cancels): ViT-S's 6 heads of 64 at 197 tokens, and a
/// shape whose rows are shorter than a warp.
#[test]
fn the_attention_kernels_split_merge_and_soften_as_candle_and_f64_do() {
    let program = Emulated::compile("attention", &kernel_source("attention/cuda.rs"), ATTENTION_MAIN);
    for (case, (batch, tokens, heads, head_dim)) in [(2usize, 197usize, 6usize, 64usize), (3, 5, 2, 3)].into_iter().enumerate() {
        let name = format!("{batch}x{tokens} tokens, {heads} heads of {head_dim}");
        let seed = 600 + case as u64 * 10;
        let part = batch * tokens * heads * head_dim;
        let rows = batch * heads * tokens;
        let scale = (head_dim as f32).powf(-0.5);
        let qkv = normal_values(seed, 3 * part, 1.0);
        let scores = normal_values(seed + 1, rows * tokens, 8.0);
        let dp = normal_values(seed + 2, rows * tokens, 1.0);

        let projection = Tensor::from_vec(qkv.clone(), (batch, tokens, 3 * heads * head_dim), &Device::Cpu).unwrap();
        let heads_first =
            projection.reshape((batch, tokens, 3, heads, head_dim)).unwrap().permute((2, 0, 3, 1, 4)).unwrap().contiguous().unwrap();

        let inputs = Inputs::default().sizes(&[batch, tokens, heads, head_dim]).floats(&[scale]);
        let out = program.run(inputs.floats(&qkv).floats(&scores).floats(&dp));
        let (split, rest) = out.split_at(3 * part);
        let (merged, rest) = rest.split_at(3 * part);
        let (p, ds) = rest.split_at(rows * tokens);
        assert!(bits(split) == bits(&floats(&heads_first)), "{name}: the split differs from candle's permute");
        assert!(bits(merged) == bits(&qkv), "{name}: merging the split does not give the projection back");

        for (row, ((s_row, p_row), (dp_row, ds_row))) in
            scores.chunks(tokens).zip(p.chunks(tokens)).zip(dp.chunks(tokens).zip(ds.chunks(tokens))).enumerate()
        {
            let scaled: Vec<f64> = s_row.iter().map(|v| f64::from(*v) * f64::from(scale)).collect();
            let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scaled.iter().map(|v| (v - max).exp()).sum();
            let expected: Vec<f64> = scaled.iter().map(|v| (v - max).exp() / total).collect();
            let error = worst(expected.iter().zip(p_row).map(|(e, o)| (e - f64::from(*o)).abs()));
            assert!(error < 1e-6, "{name}: softmax row {row} off by {error}");
            // The backward pass from the kernel's own p, as the op computes it.
            let dot: f64 = p_row.iter().zip(dp_row).map(|(p, d)| f64::from(*p) * f64::from(*d)).sum();
            let expected: Vec<f64> =
                p_row.iter().zip(dp_row).map(|(p, d)| f64::from(scale) * f64::from(*p) * (f64::from(*d) - dot)).collect();
            // Relative to the terms before dp - dot cancels: f32 rounds those, not the difference.
            let terms = p_row.iter().zip(dp_row).map(|(p, d)| f64::from(scale) * f64::from(*p) * (f64::from(*d).abs() + dot.abs()));
            let largest = terms.fold(f64::MIN_POSITIVE, f64::max);
            let error = worst(expected.iter().zip(ds_row).map(|(e, o)| (e - f64::from(*o)).abs())) / largest;
            assert!(error < 1e-6, "{name}: softmax backward row {row} off by {error} of its terms");
        }
    }
}

const BIASED_ATTENTION_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    int entries = in.value<int>(), heads = in.value<int>(), tokens = in.value<int>(), groups = in.value<int>();
    unsigned limit = in.value<unsigned>();
    float scale = in.value<float>();
    double inverse_scale = in.value<double>();
    int rows = entries * heads * tokens, block_len = heads * tokens * tokens;
    size_t n = (size_t)rows * tokens, nb = (size_t)groups * block_len;
    std::vector<float> scores = in.floats(n), bias = in.floats(nb), ds = in.floats(n), p(n), d_bias(nb);
    // attention/cuda.rs's grids: 8 warps, a row each; 256 threads a bias value each, at most
    // `limit` blocks (65,535 there; 1 here every other case, so threads loop over values).
    dim3 block{256, 1, 1}, warp_rows{(unsigned)((rows + 7) / 8), 1, 1};
    launch(warp_rows, block, [&] { softmax_scaled_biased(scores.data(), bias.data(), p.data(), rows, tokens, scale, heads, groups); });
    dim3 values{std::clamp((unsigned)((nb + 255) / 256), 1u, limit), 1, 1};
    launch(values, block, [&] { bias_gradient(ds.data(), d_bias.data(), entries / groups, groups, block_len, inverse_scale); });
    FILE* file = fopen(argv[2], "wb");
    write(file, p); write(file, d_bias);
    fclose(file);
}
"#;

/// The biased attention kernels (Swin's windows) against f64 arithmetic: the softmax of the
/// scaled scores plus the bias block of each entry's group (entry e takes group e % groups)
/// within 1e-6 of a probability, and the bias's gradient, each group's dS = ds / scale summed
/// over its entries, within 1e-6 of the largest value: one group (the bias alone), several,
/// Swin's 49-token windows, and rows shorter than a warp.
#[test]
fn the_biased_attention_kernels_add_each_groups_bias_and_sum_its_gradient() {
    let program = Emulated::compile("attention-biased", &kernel_source("attention/cuda.rs"), BIASED_ATTENTION_MAIN);
    for (case, (groups, images, heads, tokens)) in [(4usize, 2usize, 3usize, 49usize), (1, 3, 2, 49), (3, 2, 2, 5)].into_iter().enumerate()
    {
        let name = format!("{groups} groups of {images} images, {heads} heads, {tokens} tokens");
        let seed = 700 + case as u64 * 10;
        let entries = groups * images;
        let rows = entries * heads * tokens;
        let block = heads * tokens * tokens;
        let scale = 32f32.powf(-0.5);
        let scores = normal_values(seed, rows * tokens, 8.0);
        let bias = normal_values(seed + 1, groups * block, 3.0);
        let ds = normal_values(seed + 2, rows * tokens, 1.0);
        let limit = if case % 2 == 1 { 1 } else { 65_535 };
        let inputs =
            Inputs::default().sizes(&[entries, heads, tokens, groups]).unsigned(limit).floats(&[scale]).double(1.0 / f64::from(scale));
        let out = program.run(inputs.floats(&scores).floats(&bias).floats(&ds));
        let (p, d_bias) = out.split_at(rows * tokens);

        for (row, (s_row, p_row)) in scores.chunks(tokens).zip(p.chunks(tokens)).enumerate() {
            let (entry, within) = (row / (heads * tokens), row % (heads * tokens));
            let b_row = &bias[((entry % groups) * heads * tokens + within) * tokens..][..tokens];
            let biased: Vec<f64> = s_row.iter().zip(b_row).map(|(s, b)| f64::from(*s) * f64::from(scale) + f64::from(*b)).collect();
            let max = biased.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = biased.iter().map(|v| (v - max).exp()).sum();
            let error = worst(biased.iter().zip(p_row).map(|(v, o)| ((v - max).exp() / total - f64::from(*o)).abs()));
            assert!(error < 1e-6, "{name}: softmax row {row} off by {error}");
        }
        let expected: Vec<f64> = (0..groups * block)
            .map(|o| {
                let (group, rest) = (o / block, o % block);
                (0..images).map(|image| f64::from(ds[(image * groups + group) * block + rest])).sum::<f64>() / f64::from(scale)
            })
            .collect();
        let largest = expected.iter().fold(1f64, |m, v| m.max(v.abs()));
        let error = worst(expected.iter().zip(d_bias).map(|(e, o)| (e - f64::from(*o)).abs())) / largest;
        assert!(error < 1e-6, "{name}: the bias gradient is off by {error} of its largest value");
    }
}

const COLUMN_SUMS_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    int rows = in.value<int>(), columns = in.value<int>();
    unsigned n = (unsigned)rows * columns;
    std::vector<float> y = in.floats(n), b = in.floats(columns), residual = in.floats(n), sums(columns);
    std::vector<float> fused = y;
    // linear/cuda.rs's grids: 256 threads; blocks of up to 64 rows, at most 1,024 of them.
    launch(dim3{std::clamp((n + 255) / 256, 1u, 65535u * 8), 1, 1}, dim3{256, 1, 1}, [&] { add_bias(y.data(), b.data(), n, (unsigned)columns); });
    launch(dim3{std::clamp((n + 255) / 256, 1u, 65535u * 8), 1, 1}, dim3{256, 1, 1},
           [&] { add_bias_residual(fused.data(), b.data(), residual.data(), n, (unsigned)columns); });
    int chunks = std::clamp((rows + 63) / 64, 1, 1024);
    unsigned column_blocks = (unsigned)((columns + 255) / 256);
    std::vector<double> partial((size_t)chunks * columns);
    launch(dim3{column_blocks, (unsigned)chunks, 1}, dim3{256, 1, 1}, [&] { column_partial(y.data(), partial.data(), rows, columns, chunks); });
    launch(dim3{column_blocks, 1, 1}, dim3{256, 1, 1}, [&] { column_finish(partial.data(), sums.data(), columns, chunks); });
    FILE* file = fopen(argv[2], "wb");
    write(file, y); write(file, sums); write(file, fused);
    fclose(file);
}
"#;

/// The linear layer's bias kernels: the bias added to every row (exact f32 additions), the bias
/// and then the residual added (the separate ops' two roundings, in their order), and the
/// column sums of the bias gradient (f64 in chunks of rows) against f64 sums, within f32
/// rounding: rows in one chunk and in many, columns in one block and over several.
#[test]
fn the_linear_bias_kernels_add_and_sum_by_column() {
    let program = Emulated::compile("linear", &kernel_source("linear/cuda.rs"), COLUMN_SUMS_MAIN);
    for (case, (rows, columns)) in [(3usize, 5usize), (197 * 2, 384), (100, 300)].into_iter().enumerate() {
        let name = format!("{rows} rows of {columns}");
        let y = normal_values(700 + case as u64, rows * columns, 1.0);
        let b = normal_values(710 + case as u64, columns, 1.0);
        let residual = normal_values(720 + case as u64, rows * columns, 2.0);
        let out = program.run(Inputs::default().sizes(&[rows, columns]).floats(&y).floats(&b).floats(&residual));
        let (biased, rest) = out.split_at(rows * columns);
        let (sums, fused) = rest.split_at(columns);
        let expected: Vec<f32> = y.iter().enumerate().map(|(i, v)| v + b[i % columns]).collect();
        assert!(bits(biased) == bits(&expected), "{name}: the bias is not added to every row");
        let expected: Vec<f32> = expected.iter().zip(&residual).map(|(v, r)| v + r).collect();
        assert!(bits(fused) == bits(&expected), "{name}: the bias and the residual are not added in the separate ops' order");
        for (j, sum) in sums.iter().enumerate() {
            let exact: f64 = (0..rows).map(|r| f64::from(biased[r * columns + j])).sum();
            assert!((f64::from(*sum) - exact).abs() <= 1e-6 * exact.abs().max(1.0), "{name}: column {j} sums to {sum}, not {exact}");
        }
    }
}

const RUNNING_UPDATE_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    int n = in.value<int>();
    float keep = in.value<float>(), take = in.value<float>();
    std::vector<float> running = in.floats(n), batch = in.floats(n);
    // batchnorm/cuda.rs's `per_channel` grid.
    launch(dim3{(unsigned)((n + 255) / 256), 1, 1}, dim3{256, 1, 1}, [&] { bn_running_update(running.data(), batch.data(), n, keep, take); });
    FILE* file = fopen(argv[2], "wb");
    write(file, running);
    fclose(file);
}
"#;

/// The running estimates' in-place update kernel against the CPU op, to the bit: more values
/// than one block, PyTorch's momentum 0.1 and another.
#[test]
fn the_running_update_kernel_computes_the_cpu_ops_bits() {
    let program = Emulated::compile("running_update", &kernel_source("batchnorm/cuda.rs"), RUNNING_UPDATE_MAIN);
    let n = 300;
    for (case, momentum) in [0.1f64, 0.37].into_iter().enumerate() {
        let running = normal_values(800 + case as u64, n, 1.0);
        let batch = normal_values(810 + case as u64, n, 2.0);
        let tensor = |values: &[f32]| Tensor::from_vec(values.to_vec(), n, &Device::Cpu).unwrap();
        let (mean, var) = (Var::from_tensor(&tensor(&running)).unwrap(), Var::from_tensor(&tensor(&running)).unwrap());
        let out = medxfer_kernels::BatchNormOutput { y: tensor(&batch), mean: tensor(&batch), unbiased_var: tensor(&batch) };
        medxfer_kernels::update_running_statistics(&mean, &var, &out, momentum).unwrap();
        let inputs = Inputs::default().sizes(&[n]).floats(&[(1.0 - momentum) as f32, momentum as f32]).floats(&running).floats(&batch);
        assert!(bits(&program.run(inputs)) == bits(&floats(mean.as_tensor())), "momentum {momentum}: the bits differ from the CPU op's");
    }
}

const GATE_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    unsigned planes = in.value<unsigned>(), plane = in.value<unsigned>(), n = planes * plane;
    std::vector<float> x = in.floats(n), gate = in.floats(planes), dy = in.floats(n), y(n), dgate(planes);
    // gate/cuda.rs's grids: elementwise, 256 threads; one block per plane, a power of two of 32-256.
    launch(dim3{std::clamp((n + 255) / 256, 1u, 65535u * 8), 1, 1}, dim3{256, 1, 1}, [&] { gate_forward(x.data(), gate.data(), y.data(), n, plane); });
    unsigned threads = 1;
    while (threads < plane) threads *= 2;
    threads = std::clamp(threads, 32u, 256u);
    launch(dim3{planes, 1, 1}, dim3{threads, 1, 1}, [&] { gate_gradient(dy.data(), x.data(), dgate.data(), plane); });
    FILE* file = fopen(argv[2], "wb");
    write(file, y); write(file, dgate);
    fclose(file);
}
"#;

/// Squeeze-excitation's gate kernels: the product to the CPU op's bits, the gate's gradient
/// within 1e-6 of f64 sums (the CPU op sums in f32, in candle's order): planes of one value, of
/// fewer than a block's threads, and of an EfficientNet's 28x28.
#[test]
fn the_gate_kernels_match_the_cpu_op() {
    let program = Emulated::compile("gate", &kernel_source("gate/cuda.rs"), GATE_MAIN);
    for (case, (batch, channels, height, width)) in [(3usize, 5usize, 1usize, 1usize), (2, 3, 5, 7), (2, 4, 28, 28)].into_iter().enumerate()
    {
        let name = format!("{batch}x{channels}x{height}x{width}");
        let (planes, plane) = (batch * channels, height * width);
        let x = normal_values(900 + case as u64, planes * plane, 1.0);
        let gate = normal_values(910 + case as u64, planes, 0.5);
        let dy = normal_values(920 + case as u64, planes * plane, 1.0);
        let input = Tensor::from_vec(x.clone(), (batch, channels, height, width), &Device::Cpu).unwrap();
        let y =
            medxfer_kernels::channel_gate(&input, &Tensor::from_vec(gate.clone(), (batch, channels, 1, 1), &Device::Cpu).unwrap()).unwrap();
        let exact: Vec<f32> = (0..planes)
            .map(|p| (0..plane).map(|j| f64::from(dy[p * plane + j]) * f64::from(x[p * plane + j])).sum::<f64>() as f32)
            .collect();
        let truth = [("product", floats(&y)), ("gate gradient", exact)];
        let out = program.run(Inputs::default().unsigned(planes as u32).unsigned(plane as u32).floats(&x).floats(&gate).floats(&dy));
        assert_within(&name, &truth, &out, 1e-6);
        assert!(bits(&out[..truth[0].1.len()]) == bits(&truth[0].1), "{name}: the products differ from the CPU op's");
    }
}

const CHANNELS_LAST_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    unsigned images = in.value<unsigned>(), channels = in.value<unsigned>(), positions = in.value<unsigned>();
    size_t n = (size_t)images * channels * positions;
    std::vector<float> x = in.floats(n), branch = in.floats(n), scale = in.floats(channels), shortcut = in.floats(n), dy = in.floats(n);
    std::vector<float> last(n), first(n), scaled_end(n), plain_end(n), branch_gradient(n), scale_gradient(channels);
    // channels_last/cuda.rs's grids: a block per tile of each image's matrix, 256 threads; then
    // channel_bias/cuda.rs's `channel_totals`, a block per channel of a power of two of 32-256.
    auto tiles = [&](unsigned rows, unsigned cols) { return dim3{images * ((rows + 31) / 32) * ((cols + 31) / 32), 1, 1}; };
    dim3 block{256, 1, 1};
    launch(tiles(channels, positions), block, [&] { move_plain(x.data(), last.data(), channels, positions); });
    launch(tiles(positions, channels), block, [&] { move_plain(last.data(), first.data(), positions, channels); });
    launch(tiles(positions, channels), block, [&] { move_scaled_onto(branch.data(), scale.data(), shortcut.data(), scaled_end.data(), positions, channels); });
    launch(tiles(positions, channels), block, [&] { move_onto(branch.data(), shortcut.data(), plain_end.data(), positions, channels); });
    launch(tiles(channels, positions), block, [&] { move_scaled(dy.data(), scale.data(), branch_gradient.data(), channels, positions); });
    unsigned parts = images * ((positions + 31) / 32);
    std::vector<double> partials((size_t)channels * parts);
    launch(tiles(channels, positions), block, [&] { scale_gradient_partials(dy.data(), branch.data(), partials.data(), channels, positions, parts); });
    unsigned threads = 1;
    while (threads < parts) threads *= 2;
    threads = std::clamp(threads, 32u, 256u);
    launch(dim3{channels, 1, 1}, dim3{threads, 1, 1}, [&] { channel_totals(partials.data(), scale_gradient.data(), parts); });
    FILE* file = fopen(argv[2], "wb");
    write(file, last); write(file, first); write(file, scaled_end); write(file, plain_end); write(file, branch_gradient); write(file, scale_gradient);
    fclose(file);
}
"#;

/// ConvNeXt's moves and block end: both moves, the block end with and without a scale and the
/// branch's gradient to the CPU ops' bits, the scale's gradient within 1e-6 of f64 sums: sizes
/// that are no multiple of a tile, one channel, a map of fewer positions than a tile, and one of
/// more tiles per channel (270) than the summing block has threads (256), so that they loop.
#[test]
fn the_channels_last_kernels_move_scale_and_sum_as_the_cpu_ops() {
    // The scale's gradient ends in the channel bias's `channel_totals`.
    let kernels = kernel_source("channels_last/cuda.rs") + &kernel_source("channel_bias/cuda.rs");
    let program = Emulated::compile("channels_last", &kernels, CHANNELS_LAST_MAIN);
    for (case, (images, channels, height, width)) in
        [(2usize, 37usize, 5usize, 11usize), (1, 1, 3, 3), (3, 64, 7, 7), (3, 1, 48, 60)].into_iter().enumerate()
    {
        let name = format!("{images}x{channels}x{height}x{width}");
        let (positions, n) = (height * width, images * channels * height * width);
        let seed = 1000 + 10 * case as u64;
        let (x, branch, shortcut, dy) = (
            normal_values(seed, n, 1.0),
            normal_values(seed + 1, n, 1.0),
            normal_values(seed + 2, n, 1.0),
            normal_values(seed + 3, n, 1.0),
        );
        let scale: Vec<f32> = normal_values(seed + 4, channels, 0.2).iter().map(|v| v + 0.5).collect();
        let cpu = |values: &[f32], shape: (usize, usize, usize, usize)| Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap();
        let map = (images, channels, height, width);
        let last = medxfer_kernels::to_channels_last(&cpu(&x, map)).unwrap();
        let end = |scaled: bool| {
            let (b, s) = (
                Var::from_tensor(&cpu(&branch, (images, height, width, channels))).unwrap(),
                Var::from_tensor(&Tensor::new(scale.as_slice(), &Device::Cpu).unwrap()).unwrap(),
            );
            let y = medxfer_kernels::channels_last_residual(b.as_tensor(), scaled.then_some(s.as_tensor()), &cpu(&shortcut, map)).unwrap();
            let grads = (&y * cpu(&dy, map)).unwrap().sum_all().unwrap().backward().unwrap();
            (floats(&y), floats(grads.get(b.as_tensor()).unwrap()))
        };
        let ((scaled_end, branch_gradient), (plain_end, _)) = (end(true), end(false));
        let exact: Vec<f32> = (0..channels)
            .map(|c| {
                let term = |i: usize, p: usize| {
                    f64::from(dy[(i * channels + c) * positions + p]) * f64::from(branch[(i * positions + p) * channels + c])
                };
                (0..images).flat_map(|i| (0..positions).map(move |p| (i, p))).map(|(i, p)| term(i, p)).sum::<f64>() as f32
            })
            .collect();
        let exact_parts = [
            ("to channels-last", floats(&last)),
            ("back to channels-first", x.clone()),
            ("the block end", scaled_end),
            ("the block end without a scale", plain_end),
            ("the branch gradient", branch_gradient),
            ("the scale gradient", exact),
        ];
        let out = program.run(
            Inputs::default()
                .unsigned(images as u32)
                .unsigned(channels as u32)
                .unsigned(positions as u32)
                .floats(&x)
                .floats(&branch)
                .floats(&scale)
                .floats(&shortcut)
                .floats(&dy),
        );
        assert_within(&name, &exact_parts, &out, 1e-6);
        for (index, (what, truth)) in exact_parts[..5].iter().enumerate() {
            assert!(bits(&out[index * n..][..n]) == bits(truth), "{name}: {what} differs from the CPU op's bits");
        }
    }
}

const CHANNEL_BIAS_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    unsigned images = in.value<unsigned>(), channels = in.value<unsigned>(), plane = in.value<unsigned>();
    unsigned n = images * channels * plane;
    std::vector<float> x = in.floats(n), bias = in.floats(channels), dy = in.floats(n), y(n), sums(channels);
    // channel_bias/cuda.rs's grids: elementwise, 256 threads; a block per plane, then per channel,
    // each a power of two of 32-256 threads.
    launch(dim3{std::clamp((n + 255) / 256, 1u, 65535u * 8), 1, 1}, dim3{256, 1, 1}, [&] { channel_bias_forward(x.data(), bias.data(), y.data(), n, plane, channels); });
    auto threads = [](unsigned values) { unsigned t = 1; while (t < values) t *= 2; return std::clamp(t, 32u, 256u); };
    std::vector<double> partials((size_t)images * channels);
    launch(dim3{images * channels, 1, 1}, dim3{threads(plane), 1, 1}, [&] { plane_sums(dy.data(), partials.data(), plane, channels, images); });
    launch(dim3{channels, 1, 1}, dim3{threads(images), 1, 1}, [&] { channel_totals(partials.data(), sums.data(), images); });
    FILE* file = fopen(argv[2], "wb");
    write(file, y); write(file, sums);
    fclose(file);
}
"#;

/// The channel bias's kernels: the sum to the CPU op's bits, each channel's gradient within 1e-6
/// of f64 sums: planes of one value, of more values than a block's 256 threads, and more images
/// (300) than the channel block's threads, so that both sums loop.
#[test]
fn the_channel_bias_kernels_add_and_sum_as_the_cpu_op() {
    let program = Emulated::compile("channel_bias", &kernel_source("channel_bias/cuda.rs"), CHANNEL_BIAS_MAIN);
    for (case, (images, channels, height, width)) in
        [(2usize, 3usize, 20usize, 20usize), (300, 2, 1, 1), (3, 5, 7, 7)].into_iter().enumerate()
    {
        let name = format!("{images}x{channels}x{height}x{width}");
        let (plane, n) = (height * width, images * channels * height * width);
        let seed = 1100 + 10 * case as u64;
        let (x, bias, dy) = (normal_values(seed, n, 1.0), normal_values(seed + 1, channels, 1.0), normal_values(seed + 2, n, 1.0));
        let y = medxfer_kernels::add_channel_bias(
            &Tensor::from_vec(x.clone(), (images, channels, height, width), &Device::Cpu).unwrap(),
            &Tensor::new(bias.as_slice(), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let exact: Vec<f32> = (0..channels)
            .map(|c| (0..images).flat_map(|i| dy[(i * channels + c) * plane..][..plane].iter()).map(|v| f64::from(*v)).sum::<f64>() as f32)
            .collect();
        let truth = [("sum", floats(&y)), ("bias gradient", exact)];
        let out = program.run(
            Inputs::default().unsigned(images as u32).unsigned(channels as u32).unsigned(plane as u32).floats(&x).floats(&bias).floats(&dy),
        );
        assert_within(&name, &truth, &out, 1e-6);
        assert!(bits(&out[..n]) == bits(&truth[0].1), "{name}: the sums differ from the CPU op's");
    }
}

const GRN_MAIN: &str = r#"
int main(int argc, char** argv) {
    Input in{fopen(argv[1], "rb")};
    unsigned images = in.value<unsigned>(), tokens = in.value<unsigned>(), channels = in.value<unsigned>();
    double eps = in.value<double>();
    unsigned n = images * tokens * channels, per_channel = images * channels;
    std::vector<float> x = in.floats(n), weight = in.floats(channels), bias = in.floats(channels), dy = in.floats(n);
    std::vector<float> y(n), scales(per_channel), out(n + 2 * channels);
    std::vector<double> squares(per_channel), products(per_channel), sums(per_channel), through(per_channel), direct(per_channel), weight_part(per_channel);
    // global_response_norm/cuda.rs's grids: a block per (image, 32 channels) of 256 threads; a
    // 256-thread block per image; elementwise, 256 threads; a thread per channel.
    dim3 block{256, 1, 1}, sums_grid{images * ((channels + 31) / 32), 1, 1}, per_image{images, 1, 1};
    dim3 each{std::clamp((n + 255) / 256, 1u, 65535u * 8), 1, 1};
    launch(sums_grid, block, [&] { grn_squares(x.data(), squares.data(), tokens, channels); });
    launch(per_image, block, [&] { grn_scales(squares.data(), scales.data(), channels, eps); });
    launch(each, block, [&] { grn_forward(x.data(), scales.data(), weight.data(), bias.data(), y.data(), n, tokens, channels); });
    launch(sums_grid, block, [&] { grn_gradient_sums(x.data(), dy.data(), squares.data(), products.data(), sums.data(), tokens, channels); });
    launch(per_image, block, [&] { grn_backward_constants(squares.data(), products.data(), weight.data(), through.data(), direct.data(), weight_part.data(), channels, eps); });
    launch(each, block, [&] { grn_input_gradient(x.data(), dy.data(), through.data(), direct.data(), out.data(), n, tokens, channels); });
    launch(dim3{(channels + 255) / 256, 1, 1}, block, [&] { grn_parameter_gradients(weight_part.data(), sums.data(), out.data(), n, images, channels); });
    FILE* file = fopen(argv[2], "wb");
    write(file, y); write(file, out);
    fclose(file);
}
"#;

/// ConvNeXt V2's Global Response Normalization kernels against the CPU op: the output and the
/// three gradients within 1e-6 of each one's largest value (the f64 sums add in another order):
/// several images, one token, a channel that is zero everywhere (its gradient through the norm
/// is zero), and more channels (300) than the per-image blocks' threads, so that they loop.
#[test]
fn the_global_response_norm_kernels_match_the_cpu_op() {
    let program = Emulated::compile("grn", &kernel_source("global_response_norm/cuda.rs"), GRN_MAIN);
    for (case, (images, tokens, channels)) in [(2usize, 49usize, 37usize), (1, 1, 5), (3, 20, 300)].into_iter().enumerate() {
        let name = format!("{images}x{tokens}x{channels}");
        let n = images * tokens * channels;
        let seed = 1200 + 10 * case as u64;
        // Channel 1 zero everywhere.
        let x: Vec<f32> = normal_values(seed, n, 1.0).iter().enumerate().map(|(i, v)| if i % channels == 1 { 0.0 } else { *v }).collect();
        let weight: Vec<f32> = normal_values(seed + 1, channels, 0.5).iter().map(|v| v + 0.3).collect();
        let (bias, dy) = (normal_values(seed + 2, channels, 0.5), normal_values(seed + 3, n, 1.0));
        let vector = |values: &[f32]| Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap();
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (images, tokens, channels), &Device::Cpu).unwrap()).unwrap();
        let (wv, bv) = (vector(&weight), vector(&bias));
        let y = medxfer_kernels::global_response_norm(xv.as_tensor(), wv.as_tensor(), bv.as_tensor()).unwrap();
        let upstream = Tensor::from_vec(dy.clone(), (images, tokens, channels), &Device::Cpu).unwrap();
        let grads = (&y * upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let gradient = |v: &Var| floats(grads.get(v.as_tensor()).unwrap());
        let truth = [
            ("output", floats(&y)),
            ("input gradient", gradient(&xv)),
            ("weight gradient", gradient(&wv)),
            ("bias gradient", gradient(&bv)),
        ];
        let out = program.run(
            Inputs::default()
                .unsigned(images as u32)
                .unsigned(tokens as u32)
                .unsigned(channels as u32)
                .double(1e-6)
                .floats(&x)
                .floats(&weight)
                .floats(&bias)
                .floats(&dy),
        );
        assert_within(&name, &truth, &out, 1e-6);
    }
}

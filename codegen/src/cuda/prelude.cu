// tpla device prelude: the primitives generated kernels are composed from.
// Self-contained: no toolkit header is included, so NVRTC needs nothing but libnvrtc.
// Every inline-PTX body has a `#ifndef __CUDA_ARCH__` alternative calling a `tpla_emu_*` hook:
// NVRTC always defines __CUDA_ARCH__, so those branches exist only for the host emulation used
// by the backend's tests (codegen/tests/emu).
// Scope of each primitive: [thread] one thread, [warp] all 32 lanes of a warp, converged,
// [block] every thread of the block.

typedef unsigned short tpla_bf16;   // bfloat16 bits
typedef long long tpla_i64;

// ---- bf16 <-> f32 [thread] -------------------------------------------------------------------
__device__ __forceinline__ float tpla_bf16_to_f32(tpla_bf16 h) {
    return __uint_as_float(((unsigned)h) << 16);
}
// Round to nearest even; NaN stays a (quiet) NaN. On sm_80+ the hardware conversion (one
// instruction, where the bit arithmetic below takes about eight: the score warpgroup's P,
// `lower/roles.rs`, converts 32 values a block); it writes every NaN as the canonical bf16
// NaN, as `tpla_pack_bf16x2` already does.
__device__ __forceinline__ tpla_bf16 tpla_f32_to_bf16(float f) {
#if __CUDA_ARCH__ >= 800
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return (tpla_bf16)h;
#else
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (tpla_bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (tpla_bf16)(u >> 16);
#endif
}
// Packs two floats as bf16x2 (lo in the low half), rounding to nearest even.
__device__ __forceinline__ unsigned tpla_pack_bf16x2(float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (unsigned)tpla_f32_to_bf16(lo) | ((unsigned)tpla_f32_to_bf16(hi) << 16);
#endif
}
// Packs two bf16 bit patterns already exact.
__device__ __forceinline__ unsigned tpla_pack_bits(tpla_bf16 lo, tpla_bf16 hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}

// ---- float math with the IR's semantics [thread] -------------------------------------------
// 2^x, flushing a subnormal result (x < -126) to zero: one MUFU.EX2 where the non-flushing form
// takes four instructions (a range test and two scalings around it), 100 per block of a 64x64
// softmax. A softmax weight or rescale factor below 2^-126 of the row's largest is zero either way
// at f32 / bf16 accumulation.
__device__ __forceinline__ float tpla_exp2(float x) {
#ifdef __CUDA_ARCH__
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return tpla_emu_exp2(x);
#endif
}
__device__ __forceinline__ float tpla_log2(float x) {
#ifdef __CUDA_ARCH__
    float y;
    asm("lg2.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return tpla_emu_log2(x);
#endif
}
__device__ __forceinline__ float tpla_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ float tpla_rsqrt(float x) { return 1.0f / sqrtf(x); }
// max/min ignoring a NaN operand, like Rust's f32::max / f32::min.
__device__ __forceinline__ float tpla_fmax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ float tpla_fmin(float a, float b) { return fminf(a, b); }
// Float to int truncating toward zero, saturating, NaN -> 0 (Rust's `as`).
__device__ __forceinline__ int tpla_f2i(float x) {
#ifdef __CUDA_ARCH__
    int r;
    asm("cvt.rzi.sat.s32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    return tpla_emu_f2i(x);
#endif
}

// ---- integer index arithmetic (wrapping; a zero divisor yields 0) [thread] ------------------
__device__ __forceinline__ int tpla_iadd(int a, int b) { return (int)((unsigned)a + (unsigned)b); }
__device__ __forceinline__ int tpla_isub(int a, int b) { return (int)((unsigned)a - (unsigned)b); }
__device__ __forceinline__ int tpla_imul(int a, int b) { return (int)((unsigned)a * (unsigned)b); }
__device__ __forceinline__ int tpla_idiv(int a, int b) {
    if (b == 0) return 0;
    if (b == -1) return (int)(0u - (unsigned)a);
    return a / b;
}
__device__ __forceinline__ int tpla_irem(int a, int b) {
    if (b == 0 || b == -1) return 0;
    return a % b;
}
// (a + b - 1) divided by b, rounding as Euclidean division.
__device__ __forceinline__ int tpla_icdiv(int a, int b) {
    if (b == 0) return 0;
    int n = tpla_isub(tpla_iadd(a, b), 1);
    if (b == -1) return (int)(0u - (unsigned)n);
    int q = n / b, r = n % b;
    if (r < 0) q = b > 0 ? q - 1 : q + 1;
    return q;
}
__device__ __forceinline__ int tpla_imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int tpla_imax(int a, int b) { return a > b ? a : b; }

// Bounds-checked read of an i32 array of n elements (0 outside).
__device__ __forceinline__ int tpla_ld_i32(const int* p, int i, int n) {
    return (unsigned)i < (unsigned)n ? p[i] : 0;
}

// ---- programmatic dependent launch (sm_90+) [thread] ------------------------------------------
// Every generated kernel starts with both (`print.rs`), so the runtime may launch any of them as
// a programmatic dependent of the kernel before it on the stream (`TPLA_PDL`, runtime
// `cuda/device/launch.rs`): the wait returns once the grids this one depends on have completed
// and their writes are visible (at once where the launch was an ordinary one), and the trigger
// lets the next such launch place its blocks on idle multiprocessors as soon as every block of
// this grid has started, instead of after the last one has ended.
__device__ __forceinline__ void tpla_grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void tpla_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// ---- shared memory addressing [thread] ------------------------------------------------------
__device__ __forceinline__ unsigned tpla_smem_addr(const void* p) {
#ifdef __CUDA_ARCH__
    return (unsigned)__cvta_generic_to_shared(p);
#else
    return tpla_emu_smem_addr(p);
#endif
}

// ---- warp primitives [warp] -----------------------------------------------------------------
__device__ __forceinline__ float tpla_shfl_xor(float v, int m) {
    return __shfl_xor_sync(0xffffffffu, v, m);
}
// Whether `p` holds on every lane of the warp (every lane must call it).
__device__ __forceinline__ bool tpla_warp_all(bool p) {
    return __all_sync(0xffffffffu, p ? 1 : 0) != 0;
}
// Lane `src`'s value of `v` (every lane of the warp must call it).
__device__ __forceinline__ int tpla_shfl_idx(int v, int src) {
    return __shfl_sync(0xffffffffu, v, src);
}
// This thread's warp index, known to ptxas to be the same on every lane of the warp (lane 0's,
// by a shuffle: CUTLASS's canonical_warp_idx_sync). Values derived from it and the block's
// uniform values, e.g. a role's loop counter and its wgmma descriptors, then stay in uniform
// registers instead of being rebuilt per gemm in vector registers and moved over (R2UR): the
// score warpgroup's loop went from 729 to 560 SASS instructions per block. Every lane calls it,
// at the kernel's start.
__device__ __forceinline__ int tpla_warp_index(int tid) {
#ifdef __CUDA_ARCH__
    return __shfl_sync(0xffffffffu, tid >> 5, 0);
#else
    return tid >> 5;
#endif
}
// Reduction over the 4 lanes of a quad (lanes sharing lane / 4), as in the mma accumulator layout.
__device__ __forceinline__ float tpla_quad_sum(float v) {
    v += tpla_shfl_xor(v, 1);
    v += tpla_shfl_xor(v, 2);
    return v;
}
__device__ __forceinline__ float tpla_quad_max(float v) {
    v = tpla_fmax(v, tpla_shfl_xor(v, 1));
    v = tpla_fmax(v, tpla_shfl_xor(v, 2));
    return v;
}
__device__ __forceinline__ float tpla_warp_sum(float v) {
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) v += tpla_shfl_xor(v, m);
    return v;
}
__device__ __forceinline__ float tpla_warp_max(float v) {
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) v = tpla_fmax(v, tpla_shfl_xor(v, m));
    return v;
}

// ---- asynchronous copies global -> shared (sm_80+) [thread] ----------------------------------
// Copies 16 bytes, or writes 16 zero bytes when `valid` is false (nothing is read then).
__device__ __forceinline__ void tpla_cp_async16(void* smem, const void* gmem, bool valid) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(tpla_smem_addr(smem)), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
#else
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (valid) v = *(const uint4*)gmem;
    *(uint4*)smem = v;
#endif
}
__device__ __forceinline__ void tpla_cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N groups committed by this thread are pending.
template <int N>
__device__ __forceinline__ void tpla_cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#endif
}

// ---- tensor cores: ldmatrix + mma.sync m16n8k16 bf16 (sm_80+) [warp] -------------------------
// Lane l supplies the address of row (l % 8) of matrix (l / 8); each lane receives, per matrix,
// the bf16 pair at row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 (transposed with .trans).
__device__ __forceinline__ void tpla_ldmatrix_x4(unsigned* r, const void* p) {
#ifdef __CUDA_ARCH__
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(tpla_smem_addr(p)));
#else
    tpla_emu_ldmatrix(r, p, 4, false);
#endif
}
__device__ __forceinline__ void tpla_ldmatrix_x4_trans(unsigned* r, const void* p) {
#ifdef __CUDA_ARCH__
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(tpla_smem_addr(p)));
#else
    tpla_emu_ldmatrix(r, p, 4, true);
#endif
}
__device__ __forceinline__ void tpla_ldmatrix_x2(unsigned* r, const void* p) {
#ifdef __CUDA_ARCH__
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(tpla_smem_addr(p)));
#else
    tpla_emu_ldmatrix(r, p, 2, false);
#endif
}
__device__ __forceinline__ void tpla_ldmatrix_x2_trans(unsigned* r, const void* p) {
#ifdef __CUDA_ARCH__
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(tpla_smem_addr(p)));
#else
    tpla_emu_ldmatrix(r, p, 2, true);
#endif
}
// d += a * b for one 16x8x16 tile; a: 4 regs of bf16x2 (row-major A), b: 2 regs (col-major B).
__device__ __forceinline__ void tpla_mma_bf16_16816(float* d, const unsigned* a, const unsigned* b) {
#ifndef __CUDA_ARCH__
    tpla_emu_mma_bf16_16816(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ---- Hopper warpgroup gemm (sm_90a) [warpgroup] ---------------------------------------------
// Shared-memory matrix descriptor of a 128-byte-swizzled operand starting at shared address
// `addr`: `lbo` = bytes between 64-element blocks along M/N (N-major operands), 8-row core-matrix
// groups 1024 bytes apart. The generated `tpla_wgmma_m64n*` functions take two of these.
__device__ __forceinline__ unsigned long long tpla_wgmma_desc(unsigned addr, unsigned lbo) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4)
        | ((unsigned long long)((lbo >> 4) & 0x3FFFu) << 16)
        | ((unsigned long long)(1024u >> 4) << 32)
        | (1ull << 62);
}
// Orders generic-proxy shared-memory writes before later async-proxy (wgmma) reads.
__device__ __forceinline__ void tpla_fence_proxy_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void tpla_wgmma_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void tpla_wgmma_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void tpla_wgmma_wait0() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}
// Waits until at most one committed group is pending (the older ones are done).
__device__ __forceinline__ void tpla_wgmma_wait1() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving accumulator reads or writes across the asynchronous gemm.
__device__ __forceinline__ void tpla_fence_operand(float& r) {
#ifdef __CUDA_ARCH__
    asm volatile("" : "+f"(r) :: "memory");
#endif
}
// The same for a packed register-A operand (bf16 pairs) that an issued gemm still reads.
__device__ __forceinline__ void tpla_fence_operand(unsigned& r) {
#ifdef __CUDA_ARCH__
    asm volatile("" : "+r"(r) :: "memory");
#endif
}

// Host emulation of the CUDA subset tpla's generated kernels use, for tests on machines without a
// GPU. Each CUDA thread of a block is a ucontext fiber on one OS thread; `__syncthreads()` and the
// warp collectives (shuffles, ldmatrix, mma.sync) are rendezvous points, so their exchange of data
// between lanes is emulated from the PTX ISA's fragment layouts. A barrier that not every thread
// of the block (or warp) reaches is reported as a deadlock. Shared memory starts filled with NaN
// bytes so reads of unwritten shared memory show up in the results.
#pragma once
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>
#include <ucontext.h>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(a, b)
#define __restrict__
#define __align__(n) alignas(n)
#define __grid_constant__

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
struct emu_dim3 {
    unsigned x, y, z;
};

inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

namespace emu {

struct Bar {
    int need = 0;
    int arrived = 0;
    long gen = 0;
};

struct Fiber {
    ucontext_t ctx;
    bool done = false;
    Bar* wait = nullptr;
    long gen = 0;
};

struct Block {
    int nt = 0;
    std::vector<Fiber> th;
    std::vector<std::vector<char>> stacks;
    ucontext_t sched;
    int cur = 0;
    Bar block_bar;
    std::vector<Bar> warp_bar;
    std::vector<Bar> wg_bar;  // per warpgroup of 128 threads (wgmma with register A)
    std::vector<uint64_t> xchg;     // [nt][8]
    std::vector<const void*> addr;  // [nt]
    std::vector<unsigned char> smem;
    // Transaction bytes still expected per mbarrier (by shared-memory offset): `expect_tx` adds,
    // a bulk copy's completion subtracts; a phase completes when both its arrivals and this reach 0.
    std::map<unsigned, long> tx;
    // Per mbarrier (by shared-memory offset): whether its last phase completed and no thread has
    // waited on it since. An arrival then is compute-sanitizer synccheck's "missing wait".
    std::map<unsigned, bool> unobserved;
    // `setmaxnreg`: registers each thread holds now, and the block's pool of released ones.
    std::vector<int> regs;
    long reg_free = 0;
    int reg_waiting = 0;  // threads waiting in `setmaxnreg.inc`
    emu_dim3 bid{0, 0, 0};
    std::function<void()> body;
    long barriers = 0;
    // Bulk tensor copies issued and not landed yet: each lands (its bytes written, its
    // transaction bytes completed) at a later yield of a spinning thread, in a pseudo-random
    // order, as the GPU's TMA copies may (a block's copy can land after a later block's).
    struct Pending {
        std::vector<unsigned> off;        // shared-memory byte offset per element
        std::vector<unsigned char> data;  // the elements, `es` bytes each
        long es = 0;
        unsigned long long* bar = nullptr;
        unsigned bytes = 0;
    };
    std::vector<Pending> pending;
    unsigned long long rng = 0x9e3779b97f4a7c15ull;
    // Stalls (`TPLA_EMU_STALLS=1`): scheduler rounds each warp still sits out.
    std::vector<int> warp_hold;
};

inline Block* B = nullptr;
// The block's pseudo-random stream (an LCG, seeded per block): which in-flight copy lands and
// when, and how long a waiter spins first.
inline unsigned long long next_rand() {
    B->rng = B->rng * 6364136223846793005ull + 1442695040888963407ull;
    return B->rng;
}
// Counts events that let a waiting thread go on (a barrier completing, an mbarrier arrival, a
// thread finishing): spinning threads that see none for long are deadlocked.
inline long progress = 0;

inline void wait(Bar& b) {
    long g = b.gen;
    if (++b.arrived == b.need) {
        b.arrived = 0;
        b.gen++;
        progress++;
        return;
    }
    Fiber& f = B->th[B->cur];
    f.wait = &b;
    f.gen = g;
    swapcontext(&f.ctx, &B->sched);
}

inline void entry() {
    B->body();
    B->th[B->cur].done = true;
    progress++;
}

inline emu_dim3 tidx() { return emu_dim3{(unsigned)B->cur, 0, 0}; }

inline std::vector<Bar>& named_bars();
inline void land_one_copy();

inline void run_block(int nt) {
    for (int i = 0; i < nt; ++i) {
        Fiber& f = B->th[i];
        f = Fiber{};
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = B->stacks[i].data();
        f.ctx.uc_stack.ss_size = B->stacks[i].size();
        f.ctx.uc_link = &B->sched;
        makecontext(&f.ctx, (void (*)())entry, 0);
    }
    // Laggards (on unless `TPLA_EMU_LAGGARDS=0`): a runnable thread sits out a scheduler round
    // with probability 1/4, so warps drift apart as on a GPU and a warpgroup can run a whole step
    // ahead of another (a fixed round order lets every runnable thread reach its next wait each
    // round, which hid a missing wait between warpgroups: `emu/roles.rs`).
    static const bool laggards = [] {
        const char* v = getenv("TPLA_EMU_LAGGARDS");
        return !(v && v[0] == '0' && v[1] == 0);
    }();
    // Stalls (`TPLA_EMU_STALLS=1`, off by default): now and then a whole warp sits out 32 to
    // 287 rounds, as a warp the SM's schedulers pass over for a while, so one warpgroup can fall
    // a whole ring block behind the others between two of its waits (an mbarrier then completes
    // two phases past a parity a lagging warp still waits for: the wait never returns, which a
    // 1-in-4 laggard practically never shows).
    static const bool stalls = [] {
        const char* v = getenv("TPLA_EMU_STALLS");
        return v && v[0] == '1' && v[1] == 0;
    }();
    B->warp_hold.assign((nt + 31) / 32, 0);
    for (;;) {
        bool any = false, all_done = true, held = false;
        if (stalls && ((next_rand() >> 40) & 63) == 0) {
            const int w = (int)((next_rand() >> 33) % B->warp_hold.size());
            B->warp_hold[w] = 32 + (int)((next_rand() >> 40) & 255);
        }
        for (int i = 0; i < nt; ++i) {
            Fiber& f = B->th[i];
            if (f.done) continue;
            all_done = false;
            if (f.wait && f.wait->gen == f.gen) continue;
            if (B->warp_hold[i / 32] > 0) {
                held = true;
                continue;
            }
            if (laggards && ((next_rand() >> 40) & 3) == 0) {
                held = true;
                continue;
            }
            f.wait = nullptr;
            any = true;
            B->cur = i;
            swapcontext(&B->sched, &f.ctx);
        }
        if (all_done) break;
        for (int& h : B->warp_hold) h -= h > 0;
        // One round of the block: an in-flight copy lands with probability 1/8, so a copy can
        // stay in flight while a warpgroup computes a whole block (a later copy landing first).
        if (!B->pending.empty() && ((next_rand() >> 33) & 7) == 0) land_one_copy();
        if (!any && held) continue;  // only the laggards were runnable: another round
        if (!any && !B->pending.empty()) {
            land_one_copy();  // every thread waits at a barrier: the copies still land
            continue;
        }
        if (!any) {
            fprintf(stderr, "emu: deadlock in block (%u,%u,%u): a barrier not reached by every thread\n",
                    B->bid.x, B->bid.y, B->bid.z);
            exit(3);
        }
    }
    // A block that ends with bulk copies in flight: they would write into the shared memory of
    // the next block on that SM.
    if (!B->pending.empty()) {
        fprintf(stderr, "emu: block (%u,%u,%u) ended with %zu bulk tensor copies in flight\n",
                B->bid.x, B->bid.y, B->bid.z, B->pending.size());
        exit(3);
    }
    // A block that ends with arrivals pending at a named barrier (a `bar.arrive` nobody waited
    // for) would leave the next block on that SM a barrier in an unknown phase.
    for (size_t i = 0; i < named_bars().size(); ++i)
        if (named_bars()[i].arrived != 0) {
            fprintf(stderr, "emu: block (%u,%u,%u) ended with %d arrival(s) pending at named barrier %zu\n",
                    B->bid.x, B->bid.y, B->bid.z, named_bars()[i].arrived, i);
            exit(3);
        }
}

// Registers a thread of an `nt`-thread block holds at launch: what ptxas gives a kernel declared
// `__launch_bounds__(nt, 1)` that uses `setmaxnreg` (the codegen's `warpspec::launch_regs`).
inline int launch_regs(int nt) { return std::min(65536 / nt, 240) / 8 * 8; }

// Runs `kernel` (a closure calling the generated __global__ function) over the grid.
inline void launch(unsigned gx, unsigned gy, unsigned gz, int nt, size_t smem, std::function<void()> kernel) {
    Block blk;
    B = &blk;
    blk.nt = nt;
    blk.th.resize(nt);
    blk.stacks.assign(nt, std::vector<char>(512 * 1024));
    blk.block_bar.need = nt;
    blk.warp_bar.resize((nt + 31) / 32);
    for (auto& w : blk.warp_bar) w.need = 32;
    blk.wg_bar.resize((nt + 127) / 128);
    for (size_t g = 0; g < blk.wg_bar.size(); ++g) blk.wg_bar[g].need = std::min(128, nt - 128 * (int)g);
    blk.xchg.assign((size_t)nt * 8, 0);
    blk.addr.assign(nt, nullptr);
    blk.body = kernel;
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                blk.bid = emu_dim3{x, y, z};
                blk.smem.assign(smem + 16, 0xff);
                blk.tx.clear();
                blk.pending.clear();
                blk.rng = 0x9e3779b97f4a7c15ull ^ (((unsigned long long)z << 42) | ((unsigned long long)y << 21) | x);
                blk.regs.assign(nt, launch_regs(nt));
                blk.reg_free = 0;
                blk.reg_waiting = 0;
                run_block(nt);
            }
    B = nullptr;
}

inline std::vector<unsigned char> load(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) {
        fprintf(stderr, "emu: cannot open %s\n", path.c_str());
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    std::vector<unsigned char> v((size_t)n + 16);
    if (n > 0 && fread(v.data(), 1, (size_t)n, f) != (size_t)n) exit(2);
    fclose(f);
    v.resize((size_t)n);
    return v;
}

inline void save(const std::string& path, const std::vector<unsigned char>& v) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) exit(2);
    if (!v.empty()) fwrite(v.data(), 1, v.size(), f);
    fclose(f);
}

}  // namespace emu

#define threadIdx (emu::tidx())
#define blockIdx (emu::B->bid)
inline void __syncthreads() {
    emu::B->barriers++;
    emu::wait(emu::B->block_bar);
}
inline unsigned long long __cvta_generic_to_shared(const void* p) { return (unsigned long long)p; }

inline float __shfl_xor_sync(unsigned, float v, int m) {
    const int t = emu::B->cur, w = t / 32, l = t % 32;
    emu::B->xchg[(size_t)t * 8] = __float_as_uint(v);
    emu::wait(emu::B->warp_bar[w]);
    const float r = __uint_as_float((unsigned)emu::B->xchg[(size_t)(w * 32 + (l ^ m)) * 8]);
    emu::wait(emu::B->warp_bar[w]);
    return r;
}

inline int __all_sync(unsigned, int p) {
    const int t = emu::B->cur, w = t / 32;
    emu::B->xchg[(size_t)t * 8] = p != 0 ? 1u : 0u;
    emu::wait(emu::B->warp_bar[w]);
    int r = 1;
    for (int l = 0; l < 32; ++l) r &= emu::B->xchg[(size_t)(w * 32 + l) * 8] != 0 ? 1 : 0;
    emu::wait(emu::B->warp_bar[w]);
    return r;
}

inline int __shfl_sync(unsigned, int v, int src) {
    const int t = emu::B->cur, w = t / 32;
    emu::B->xchg[(size_t)t * 8] = (unsigned)v;
    emu::wait(emu::B->warp_bar[w]);
    const int r = (int)(unsigned)emu::B->xchg[(size_t)(w * 32 + (src & 31)) * 8];
    emu::wait(emu::B->warp_bar[w]);
    return r;
}

// ex2.approx.ftz.f32: a subnormal result is flushed to (positive) zero.
inline float tpla_emu_exp2(float x) {
    const float y = exp2f(x);
    return y < FLT_MIN ? 0.0f : y;
}
inline float tpla_emu_log2(float x) { return log2f(x); }
inline int tpla_emu_f2i(float x) {
    if (std::isnan(x)) return 0;
    if (x >= 2147483647.0f) return 2147483647;
    if (x <= -2147483648.0f) return (int)0x80000000u;
    return (int)x;
}

inline void tpla_emu_ldmatrix(unsigned* r, const void* p, int n, bool trans) {
    const int t = emu::B->cur, w = t / 32, l = t % 32;
    if (((unsigned long long)p & 15ull) != 0 && l < 8 * n) {
        fprintf(stderr, "emu: ldmatrix row address not 16-byte aligned (lane %d)\n", l);
        exit(4);
    }
    if (l < 8 * n) {
        const unsigned char* lo = emu::B->smem.data();
        const unsigned char* hi = lo + emu::B->smem.size();
        if ((const unsigned char*)p < lo || (const unsigned char*)p + 16 > hi) {
            fprintf(stderr, "emu: ldmatrix address outside shared memory (lane %d)\n", l);
            exit(4);
        }
    }
    emu::B->addr[t] = p;
    emu::wait(emu::B->warp_bar[w]);
    for (int j = 0; j < n; ++j) {
        uint16_t a, b;
        if (!trans) {
            const uint16_t* row = (const uint16_t*)emu::B->addr[w * 32 + 8 * j + l / 4];
            a = row[2 * (l % 4)];
            b = row[2 * (l % 4) + 1];
        } else {
            const uint16_t* r0 = (const uint16_t*)emu::B->addr[w * 32 + 8 * j + 2 * (l % 4)];
            const uint16_t* r1 = (const uint16_t*)emu::B->addr[w * 32 + 8 * j + 2 * (l % 4) + 1];
            a = r0[l / 4];
            b = r1[l / 4];
        }
        r[j] = (unsigned)a | ((unsigned)b << 16);
    }
    emu::wait(emu::B->warp_bar[w]);
}

inline float emu_bf16_half(unsigned reg, int half) {
    return __uint_as_float(((reg >> (16 * half)) & 0xffffu) << 16);
}

inline void tpla_emu_mma_bf16_16816(float* d, const unsigned* a, const unsigned* b) {
    const int t = emu::B->cur, w = t / 32, l = t % 32;
    uint64_t* x = &emu::B->xchg[(size_t)t * 8];
    for (int i = 0; i < 4; ++i) x[i] = a[i];
    x[4] = b[0];
    x[5] = b[1];
    emu::wait(emu::B->warp_bar[w]);
    auto A = [&](int r, int k) {
        const int lane = (r % 8) * 4 + (k % 8) / 2;
        const int reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return emu_bf16_half((unsigned)emu::B->xchg[(size_t)(w * 32 + lane) * 8 + reg], k % 2);
    };
    auto Bm = [&](int k, int n) {
        const int lane = n * 4 + (k % 8) / 2;
        const int reg = k >= 8 ? 1 : 0;
        return emu_bf16_half((unsigned)emu::B->xchg[(size_t)(w * 32 + lane) * 8 + 4 + reg], k % 2);
    };
    float out[4];
    const int g = l / 4, q = l % 4;
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e >> 1), col = 2 * q + (e & 1);
        float s = 0.0f;
        for (int k = 0; k < 16; ++k) s += A(row, k) * Bm(k, col);
        out[e] = d[e] + s;
    }
    emu::wait(emu::B->warp_bar[w]);
    for (int e = 0; e < 4; ++e) d[e] = out[e];
}

// Shared-memory "address" of a pointer: its offset in the block's shared memory (the GPU's
// dynamic shared memory starts on a 1024-byte boundary, so swizzle bits agree).
inline unsigned tpla_emu_smem_addr(const void* p) {
    return (unsigned)((const unsigned char*)p - emu::B->smem.data());
}

// One warpgroup wgmma m64nNk16, bf16 operands from shared memory through 128-byte-swizzled
// descriptors (PTX ISA canonical layouts: K-major ((8,m),(T,2k)):((8T,SBO),(1,T)), MN-major
// ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)), T = 8 elements), f32 accumulators in fragment order.
// Operands come from shared memory, so each thread computes its own outputs without exchange.
inline float emu_wgmma_elem(unsigned long long desc, int mn, int k, int mn_major) {
    const unsigned start = (unsigned)(desc & 0x3FFFull) << 4;
    const unsigned lbo = (unsigned)((desc >> 16) & 0x3FFFull) << 4;
    const unsigned sbo = (unsigned)((desc >> 32) & 0x3FFFull) << 4;
    if ((desc >> 62) != 1ull || ((desc >> 49) & 7ull) != 0ull) {
        fprintf(stderr, "emu: wgmma descriptor is not a 128-byte swizzle with base offset 0\n");
        exit(4);
    }
    unsigned off;
    if (!mn_major) off = (unsigned)(mn % 8) * 128u + (unsigned)(mn / 8) * sbo + (unsigned)k * 2u;
    else off = (unsigned)(mn % 64) * 2u + (unsigned)(mn / 64) * lbo + (unsigned)(k % 8) * 128u + (unsigned)(k / 8) * sbo;
    unsigned a = start + off;
    a ^= ((a >> 7) & 7u) << 4;
    if ((size_t)a + 2 > emu::B->smem.size()) {
        fprintf(stderr, "emu: wgmma operand outside shared memory (byte %u)\n", a);
        exit(4);
    }
    uint16_t h;
    memcpy(&h, emu::B->smem.data() + a, 2);
    return __uint_as_float((unsigned)h << 16);
}

// `scale_d` 0: the first instruction of a zero-initialised gemm ignores d's old value.
inline void tpla_emu_wgmma(float* d, unsigned long long da, unsigned long long db, int n, int ta, int tb, int scale_d = 1) {
    const int t = emu::B->cur % 128, w = t / 32, l = t % 32;
    for (int j = 0; j < n / 8; ++j)
        for (int e = 0; e < 4; ++e) {
            const int row = 16 * w + l / 4 + 8 * (e >> 1), col = 8 * j + 2 * (l % 4) + (e & 1);
            float s = 0.0f;
            for (int k = 0; k < 16; ++k)
                s += emu_wgmma_elem(da, row, k, ta) * emu_wgmma_elem(db, col, k, tb);
            d[j * 4 + e] = (scale_d ? d[j * 4 + e] : 0.0f) + s;
        }
}

// wgmma with A from registers: each thread holds the mma.sync A fragment (bf16 pairs) of rows
// 16 (warp % 4) .. of its warpgroup; exchanged through the block's scratch at a warpgroup
// rendezvous.
inline void tpla_emu_wgmma_rs(float* d, const unsigned* a, unsigned long long db, int n, int tb, int scale_d = 1) {
    const int t = emu::B->cur, g = t / 128, tl = t % 128, w = tl / 32, l = tl % 32;
    uint64_t* x = &emu::B->xchg[(size_t)t * 8];
    for (int i = 0; i < 4; ++i) x[i] = a[i];
    emu::wait(emu::B->wg_bar[g]);
    auto A = [&](int r, int k) {
        const int owner = g * 128 + (r / 16) * 32 + (r % 8) * 4 + (k % 8) / 2;
        const int reg = ((r % 16) >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return emu_bf16_half((unsigned)emu::B->xchg[(size_t)owner * 8 + reg], k % 2);
    };
    std::vector<float> out((size_t)n / 2);
    for (int j = 0; j < n / 8; ++j)
        for (int e = 0; e < 4; ++e) {
            const int row = 16 * w + l / 4 + 8 * (e >> 1), col = 8 * j + 2 * (l % 4) + (e & 1);
            float s = 0.0f;
            for (int k = 0; k < 16; ++k) s += A(row, k) * emu_wgmma_elem(db, col, k, tb);
            out[(size_t)j * 4 + e] = (scale_d ? d[j * 4 + e] : 0.0f) + s;
        }
    emu::wait(emu::B->wg_bar[g]);
    for (int i = 0; i < n / 2; ++i) d[i] = out[(size_t)i];
}

// ---- warp specialisation: mbarriers and named barriers ----------------------------------------
// An mbarrier is its 8-byte shared-memory word: bits 0..31 the arrivals still pending in the
// current phase, 32..62 the expected count, 63 the current phase's parity. `cp.async` copies are
// synchronous here, so `cp.async.mbarrier.arrive.noinc` is a plain arrive; bulk tensor (TMA)
// copies land later, in a pseudo-random order (`Block::pending`).
namespace emu {
// Yields to the other fibers while a thread spins (`seen`: the progress count of its last
// yield, `idle`: its yields since progress changed); 4096 rounds of the block without any
// progress are a deadlock.
struct Spin {
    long seen = -1;
    long idle = 0;
};
inline void land_one_copy();
inline void spin_yield(Spin& s) {
    // In-flight bulk copies land once per scheduler round (`run_block`); a thread spinning long
    // without progress lands one itself, so a copy is never what a deadlock waits for.
    if (!B->pending.empty() && s.idle > 64) land_one_copy();
    if (progress != s.seen) {
        s.seen = progress;
        s.idle = 0;
    }
    if (++s.idle > 4096) {
        if (B->reg_waiting > 0)
            fprintf(stderr, "emu: deadlock in block (%u,%u,%u): %d threads wait in setmaxnreg.inc for registers the block never released\n",
                    B->bid.x, B->bid.y, B->bid.z, B->reg_waiting);
        else
            fprintf(stderr, "emu: deadlock in block (%u,%u,%u): an mbarrier phase never completes\n",
                    B->bid.x, B->bid.y, B->bid.z);
        exit(3);
    }
    Fiber& f = B->th[B->cur];
    f.wait = nullptr;
    swapcontext(&f.ctx, &B->sched);
}
inline std::vector<Bar>& named_bars() {
    static std::vector<Bar> bars(16);
    return bars;
}
}  // namespace emu

inline void tpla_emu_mbar_check(const void* b) {
    const unsigned char* p = (const unsigned char*)b;
    if (p < emu::B->smem.data() || p + 8 > emu::B->smem.data() + emu::B->smem.size() ||
        ((uintptr_t)p & 7u) != 0) {
        fprintf(stderr, "emu: mbarrier outside shared memory or not 8-byte aligned\n");
        exit(4);
    }
}
inline void tpla_emu_mbar_init(unsigned long long* b, int count) {
    tpla_emu_mbar_check(b);
    *b = ((unsigned long long)(unsigned)count << 32) | (unsigned)count;
    emu::B->tx[tpla_emu_smem_addr(b)] = 0;
    emu::B->unobserved[tpla_emu_smem_addr(b)] = false;
}
namespace emu {
// Completes the current phase of `b` if its arrivals and its transaction bytes are all in.
inline void mbar_try_complete(unsigned long long* b) {
    unsigned long long v = *b;
    const unsigned count = (unsigned)((v >> 32) & 0x7fffffffu);
    if ((unsigned)v != 0 || B->tx[tpla_emu_smem_addr(b)] != 0) return;
    const unsigned long long phase = (v >> 63) ^ 1ull;
    *b = (phase << 63) | ((unsigned long long)count << 32) | count;
    B->unobserved[tpla_emu_smem_addr(b)] = true;
    progress++;
}
}  // namespace emu
// An arrival; with transaction bytes pending the phase stays open (pending arrivals 0) until
// the bytes have landed.
inline void tpla_emu_mbar_arrive(unsigned long long* b) {
    tpla_emu_mbar_check(b);
    unsigned long long v = *b;
    const unsigned count = (unsigned)((v >> 32) & 0x7fffffffu);
    unsigned pending = (unsigned)v;
    if (count == 0) {
        fprintf(stderr, "emu: arrive on an uninitialised mbarrier\n");
        exit(4);
    }
    if (pending == 0) {
        fprintf(stderr, "emu: more arrivals on an mbarrier than its count in one phase\n");
        exit(4);
    }
    // An arrival on the next phase before any thread waited for the last one: compute-sanitizer's
    // synccheck reports it ("Barrier error detected. Missing wait"), and the GPU kernel faults.
    if (emu::B->unobserved[tpla_emu_smem_addr(b)]) {
        fprintf(stderr, "emu: an arrival on an mbarrier (shared offset %u) whose last phase no thread waited for (synccheck: missing wait)\n",
                tpla_emu_smem_addr(b));
        exit(5);
    }
    *b = (v & ~0xffffffffull) | (pending - 1);
    const long tx = emu::B->tx[tpla_emu_smem_addr(b)];
    if (pending == 1 && tx < 0) {
        fprintf(stderr, "emu: bulk copies completed %ld bytes more than their mbarrier phase expects\n", -tx);
        exit(4);
    }
    emu::progress++;
    emu::mbar_try_complete(b);
}
// `mbarrier.arrive.expect_tx`: expects `bytes` more transaction bytes in the current phase, then
// arrives.
inline void tpla_emu_mbar_arrive_expect_tx(unsigned long long* b, unsigned bytes) {
    tpla_emu_mbar_check(b);
    emu::B->tx[tpla_emu_smem_addr(b)] += (long)bytes;
    tpla_emu_mbar_arrive(b);
}
// A bulk copy's `complete_tx::bytes`: more bytes landing than the phase expects is an error (on
// the GPU they would count against the next phase).
inline void tpla_emu_mbar_complete_tx(unsigned long long* b, unsigned bytes) {
    tpla_emu_mbar_check(b);
    long& tx = emu::B->tx[tpla_emu_smem_addr(b)];
    tx -= (long)bytes;
    if (tx < 0 && (unsigned)*b == 0) {
        fprintf(stderr, "emu: bulk copies completed %ld bytes more than their mbarrier phase expects\n", -tx);
        exit(4);
    }
    emu::progress++;
    emu::mbar_try_complete(b);
}
// Waits until the phase with parity `parity` has completed: the current phase's parity differs.
// Every wait first lets the other fibers run for a while (a slow observer), so a role that skips
// a wait it needs runs ahead far enough to show: a producer that does not wait for a stage to be
// empty overwrites blocks the consumers have not read yet.
inline void tpla_emu_mbar_wait(unsigned long long* b, int parity) {
    tpla_emu_mbar_check(b);
    emu::Spin spin;
    // A pseudo-random 0..256 yields: mostly long enough to show a skipped wait, sometimes short
    // enough that the wait is tested while copies are still in flight (a wait whose parity
    // passes early then shows).
    const int first = (int)((emu::next_rand() >> 33) % 257);
    for (int i = 0; i < first; ++i) emu::spin_yield(spin);
    while ((int)(*b >> 63) == (parity & 1)) emu::spin_yield(spin);
    emu::B->unobserved[tpla_emu_smem_addr(b)] = false;
}
// `setmaxnreg.dec` returns the thread's registers above `n` to the block's pool; `.inc` takes
// them from it, waiting until enough have been released: on the GPU a split past the registers
// the block holds at launch waits forever, here it is reported as a deadlock.
inline void tpla_emu_setmaxnreg(int n, bool inc) {
    int& have = emu::B->regs[emu::B->cur];
    if (n % 8 != 0 || n < 24 || n > 256 || (inc ? n < have : n > have)) {
        fprintf(stderr, "emu: setmaxnreg.%s %d from %d registers\n", inc ? "inc" : "dec", n, have);
        exit(4);
    }
    if (!inc) {
        emu::B->reg_free += have - n;
        have = n;
        emu::progress++;
        return;
    }
    emu::Spin spin;
    emu::B->reg_waiting++;
    while (emu::B->reg_free < n - have) emu::spin_yield(spin);
    emu::B->reg_waiting--;
    emu::B->reg_free -= n - have;
    have = n;
}
// Named barrier `id` over `n` threads, checked: a valid id and count, the same count as the
// phase's first arrival.
inline emu::Bar& emu_named_bar(int id, int n) {
    if (id < 0 || id >= 16 || n <= 0 || n % 32 != 0 || n > emu::B->nt) {
        fprintf(stderr, "emu: bad named barrier %d over %d threads\n", id, n);
        exit(4);
    }
    emu::Bar& bar = emu::named_bars()[id];
    if (bar.arrived == 0) bar.need = n;
    if (bar.need != n) {
        fprintf(stderr, "emu: named barrier %d used with %d and %d threads\n", id, bar.need, n);
        exit(4);
    }
    return bar;
}

inline void tpla_emu_bar_sync(int id, int n) {
    emu::Bar& bar = emu_named_bar(id, n);
    emu::B->barriers++;
    emu::wait(bar);
}

// `bar.arrive`: counts this thread's arrival at named barrier `id` without waiting; the phase
// completes (releasing its `bar.sync` waiters) when `n` threads have arrived or synced.
inline void tpla_emu_bar_arrive(int id, int n) {
    emu::Bar& bar = emu_named_bar(id, n);
    if (++bar.arrived == bar.need) {
        bar.arrived = 0;
        bar.gen++;
        emu::progress++;
    }
}

// ---- TMA: 2-D bulk tensor copies ------------------------------------------------------------
// The emulated tensor map (the GPU's is opaque, built by cuTensorMapEncodeTiled; the test harness
// fills this one from the same plan): w[0] global address, w[1] columns (dim 0, elements), w[2]
// rows (dim 1), w[3] row stride in bytes, w[4] box columns, w[5] box rows, w[6] element bytes,
// w[7] swizzle span in bytes (128), w[8] the magic 0x7470_6c61_746d_6170 ("tplatmap").
// `cp.async.bulk.prefetch.tensor` into L2: nothing lands, but the box must lie inside the tensor
// (a prefetch the kernel computed from a wrong page or past the split is a bug even if harmless).
inline void tpla_emu_tma_prefetch_2d(const void* map, int c0, int c1) {
    const unsigned long long* w = (const unsigned long long*)map;
    if (w[8] != 0x74706c61746d6170ull) {
        fprintf(stderr, "emu: L2 prefetch with a tensor map that was never built\n");
        exit(4);
    }
    const long cols = (long)w[1], rows = (long)w[2], bc = (long)w[4], br = (long)w[5];
    if (c0 < 0 || c1 < 0 || (long)c0 + bc > cols || (long)c1 + br > rows) {
        fprintf(stderr, "emu: L2 prefetch of box (%d, %d) outside the %ld x %ld tensor\n", c0, c1, cols, rows);
        exit(4);
    }
}

inline void tpla_emu_tma_load_2d(void* dst, const void* map, int c0, int c1, unsigned long long* bar) {
    const unsigned long long* w = (const unsigned long long*)map;
    if (w[8] != 0x74706c61746d6170ull) {
        fprintf(stderr, "emu: cp.async.bulk.tensor with a tensor map that was never built\n");
        exit(4);
    }
    const unsigned char* g = (const unsigned char*)w[0];
    const long cols = (long)w[1], rows = (long)w[2], stride = (long)w[3];
    const long bc = (long)w[4], br = (long)w[5], es = (long)w[6], sw = (long)w[7];
    if ((w[0] & 15u) != 0 || stride % 16 != 0 || sw != 128 || bc * es != 128 || br < 1 || br > 256) {
        fprintf(stderr, "emu: tensor map the GPU would refuse (address, stride, box or swizzle)\n");
        exit(4);
    }
    const unsigned d = tpla_emu_smem_addr(dst);
    if ((d & 1023u) != 0 || (size_t)d + (size_t)(br * 128) > emu::B->smem.size()) {
        fprintf(stderr, "emu: bulk tensor copy destination not 1024-byte aligned or outside shared memory\n");
        exit(4);
    }
    tpla_emu_mbar_check(bar);
    // Read now, land later (`emu::land_one_copy`): the global source does not change meanwhile.
    emu::Block::Pending p;
    p.es = es;
    p.bar = bar;
    p.bytes = (unsigned)(br * bc * es);
    p.off.reserve((size_t)(br * bc));
    p.data.assign((size_t)(br * bc * es), 0);
    for (long r = 0; r < br; ++r)
        for (long c = 0; c < bc; ++c) {
            const long gr = (long)c1 + r, gc = (long)c0 + c;
            unsigned off = d + (unsigned)(r * 128 + c * es);
            off ^= ((off >> 7) & 7u) << 4;  // the 128-byte swizzle of the address
            if (gr >= 0 && gr < rows && gc >= 0 && gc < cols)
                memcpy(p.data.data() + p.off.size() * es, g + gr * stride + gc * es, (size_t)es);
            p.off.push_back(off);
        }
    emu::B->pending.push_back(std::move(p));
}
namespace emu {
// Lands one in-flight bulk copy, chosen pseudo-randomly among those issued; the oldest under
// `TPLA_EMU_LAND_FIFO=1` (copies landing in issue order: a wait for the first of several
// mbarriers then passes while the later copies are still in flight).
inline void land_one_copy() {
    static const bool fifo = [] {
        const char* v = getenv("TPLA_EMU_LAND_FIFO");
        return v && v[0] == '1';
    }();
    // The newest copy half of the time, else any: later blocks often land first.
    const unsigned long long r = next_rand();
    const size_t n = B->pending.size();
    const size_t i = fifo ? 0 : ((r >> 40) & 1) ? n - 1 : (size_t)((r >> 33) % n);
    Block::Pending p = std::move(B->pending[i]);
    B->pending.erase(B->pending.begin() + (long)i);
    unsigned char* s = B->smem.data();
    for (size_t e = 0; e < p.off.size(); ++e) memcpy(s + p.off[e], p.data.data() + e * p.es, (size_t)p.es);
    tpla_emu_mbar_complete_tx(p.bar, p.bytes);
}
}  // namespace emu

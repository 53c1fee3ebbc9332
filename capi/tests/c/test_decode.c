/* The C ABI on the CPU backend, as a serving engine uses it: the engine owns the page pool, a
 * block table of shuffled pages and per-sequence lengths; tpla appends through slots, decodes
 * with LSE and combines two halves of a context. Every output is checked against a naive
 * double-precision reference computed from the same bf16 values, then the error paths are
 * checked (status code and message, nothing written). Compiled and run by tests/c_program.rs. */
#include "tpla.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADS 4
#define LAT 64
#define ROPE 32
#define ROW (LAT + ROPE)
#define PAGE 16
#define PPS 6
#define BATCH 3
#define PAGES 20
#define MAX_APPEND 64
#define SCALE 0.125f

static int passed, failed;

#define CHECK(cond, ...)                                  \
    do {                                                  \
        if (cond) {                                       \
            passed++;                                     \
        } else {                                          \
            failed++;                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                 \
            fprintf(stderr, " (last error: %s)\n", tpla_last_error()); \
        }                                                 \
    } while (0)

/* A failed call the test cannot go on without. */
#define MUST(call)                                                          \
    do {                                                                    \
        tpla_status_t s_ = (call);                                          \
        if (s_ != TPLA_STATUS_OK) {                                         \
            fprintf(stderr, "FATAL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #call, \
                    (int)s_, tpla_last_error());                            \
            exit(2);                                                        \
        }                                                                   \
    } while (0)

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t next_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static float uniform(void) { return (float)next_u32() / 4294967296.0f * 2.0f - 1.0f; }

/* bf16 -> float, written here (not through the library) for the reference: exact widening. */
static double widen(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return (double)f;
}

/* The engine's memory. */
static uint16_t pool[PAGES * PAGE * ROW];
static int32_t table[BATCH][PPS];
static int32_t lens[BATCH];

static int32_t slot_of(int b, int t) { return table[b][t / PAGE] * PAGE + t % PAGE; }

/* The GPU variant: the same calls on a CUDA plan, every buffer copied to the device through the
 * library's tpla_cuda_* helpers (the pool stays there and is mirrored back after each append). */
static tpla_plan_t *gpu_plan;
static void *d_pool;

static void *to_device(const void *host, size_t bytes) {
    void *dev = NULL;
    MUST(tpla_cuda_malloc(gpu_plan, bytes, &dev));
    MUST(tpla_cuda_upload(gpu_plan, dev, host, bytes));
    return dev;
}

static tpla_status_t call_append(tpla_plan_t *plan, const int32_t *slots, const uint16_t *rows,
                                 size_t n) {
    if (plan != gpu_plan) return tpla_append(plan, pool, PAGES, slots, rows, n);
    void *d_slots = to_device(slots, n * sizeof *slots), *d_rows = to_device(rows, n * ROW * 2);
    tpla_status_t s = tpla_append(plan, d_pool, PAGES, d_slots, d_rows, n);
    MUST(tpla_cuda_download(plan, pool, d_pool, sizeof pool));
    MUST(tpla_cuda_free(plan, d_slots));
    MUST(tpla_cuda_free(plan, d_rows));
    return s;
}

static tpla_status_t call_decode(tpla_plan_t *plan, const int32_t *table_, size_t pps,
                                 const int32_t *lens_, const uint16_t *q_, float *out_,
                                 float *lse_, size_t batch) {
    if (plan != gpu_plan)
        return tpla_decode(plan, pool, PAGES, table_, pps, lens_, q_, out_, lse_, batch);
    void *d_table = to_device(table_, batch * pps * 4), *d_lens = to_device(lens_, batch * 4),
         *d_q = to_device(q_, batch * HEADS * ROW * 2),
         *d_out = to_device(out_, batch * HEADS * LAT * 4), *d_lse = to_device(lse_, batch * HEADS * 4);
    tpla_status_t s = tpla_decode(plan, d_pool, PAGES, d_table, pps, d_lens, d_q, d_out, d_lse, batch);
    MUST(tpla_cuda_download(plan, out_, d_out, batch * HEADS * LAT * 4));
    MUST(tpla_cuda_download(plan, lse_, d_lse, batch * HEADS * 4));
    void *all[] = {d_table, d_lens, d_q, d_out, d_lse};
    for (int i = 0; i < 5; i++) MUST(tpla_cuda_free(plan, all[i]));
    return s;
}

static tpla_status_t call_combine(tpla_plan_t *plan, const float *outs, const float *lses, size_t n,
                                  float *out_, float *lse_) {
    if (plan != gpu_plan) return tpla_combine(plan, outs, lses, n, 1, HEADS, LAT, out_, lse_);
    void *d_outs = to_device(outs, n * HEADS * LAT * 4), *d_lses = to_device(lses, n * HEADS * 4),
         *d_out = to_device(out_, HEADS * LAT * 4), *d_lse = to_device(lse_, HEADS * 4);
    tpla_status_t s = tpla_combine(plan, d_outs, d_lses, n, 1, HEADS, LAT, d_out, d_lse);
    MUST(tpla_cuda_download(plan, out_, d_out, HEADS * LAT * 4));
    MUST(tpla_cuda_download(plan, lse_, d_lse, HEADS * 4));
    void *all[] = {d_outs, d_lses, d_out, d_lse};
    for (int i = 0; i < 4; i++) MUST(tpla_cuda_free(plan, all[i]));
    return s;
}

/* Appends `n` random tokens to each sequence `b` with n = counts[b], through one slot mapping
 * that interleaves the sequences (split into calls of at most MAX_APPEND rows). */
static void append_tokens(tpla_plan_t *plan, const int counts[BATCH]) {
    static int32_t slots[BATCH * PPS * PAGE];
    static uint16_t rows[BATCH * PPS * PAGE * ROW];
    int n = 0, left = 1;
    int done[BATCH] = {0};
    while (left) {
        left = 0;
        for (int b = 0; b < BATCH; b++) {
            if (done[b] < counts[b]) {
                slots[n] = slot_of(b, lens[b] + done[b]);
                for (int i = 0; i < ROW; i++) rows[n * ROW + i] = tpla_f32_to_bf16(uniform());
                done[b]++;
                n++;
                left = 1;
            }
        }
    }
    for (int start = 0; start < n; start += MAX_APPEND) {
        int k = n - start < MAX_APPEND ? n - start : MAX_APPEND;
        MUST(call_append(plan, slots + start, rows + start * ROW, (size_t)k));
    }
    for (int b = 0; b < BATCH; b++) lens[b] += counts[b];
}

/* Naive attention of query `q` (one sequence) over `len` tokens read through `pages`, in double
 * from the bf16 values. */
static void reference(const uint16_t *q, const int32_t *pages, int len, double *out, double *lse) {
    for (int h = 0; h < HEADS; h++) {
        double scores[PPS * PAGE], m = -INFINITY, total = 0.0;
        for (int t = 0; t < len; t++) {
            const uint16_t *k = pool + ((size_t)pages[t / PAGE] * PAGE + t % PAGE) * ROW;
            double s = 0.0;
            for (int i = 0; i < ROW; i++) s += widen(q[h * ROW + i]) * widen(k[i]);
            scores[t] = (double)SCALE * s;
            if (scores[t] > m) m = scores[t];
        }
        for (int i = 0; i < LAT; i++) out[h * LAT + i] = 0.0;
        for (int t = 0; t < len; t++) {
            const uint16_t *v = pool + ((size_t)pages[t / PAGE] * PAGE + t % PAGE) * ROW;
            double p = exp(scores[t] - m);
            total += p;
            for (int i = 0; i < LAT; i++) out[h * LAT + i] += p * widen(v[i]);
        }
        for (int i = 0; i < LAT && len > 0; i++) out[h * LAT + i] /= total;
        lse[h] = len > 0 ? m + log(total) : -INFINITY;
    }
}

/* Checks one sequence's `out` and `lse` (as tpla wrote them) against the reference: 1e-2
 * relative to the largest reference value; an empty sequence has zero output and LSE < -1e29. */
static void check_sequence(const char *what, const float *out, const float *lse, const uint16_t *q,
                           const int32_t *pages, int len) {
    double ref[HEADS * LAT], ref_lse[HEADS], err = 0.0, scale = 1e-6;
    reference(q, pages, len, ref, ref_lse);
    for (int i = 0; i < HEADS * LAT; i++) {
        double d = fabs((double)out[i] - ref[i]);
        if (!(d <= err)) err = isnan(d) ? INFINITY : d; /* NaN counts as a failure */
        if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
    }
    CHECK(err <= 1e-2 * scale, "%s (len %d): out differs from the reference by %g (scale %g)",
          what, len, err, scale);
    for (int h = 0; h < HEADS; h++) {
        if (len == 0) {
            CHECK(lse[h] < -1e29f, "%s: empty sequence, head %d: lse %g", what, h, lse[h]);
        } else {
            double d = fabs((double)lse[h] - ref_lse[h]);
            CHECK(d <= 1e-2 * (1.0 + fabs(ref_lse[h])), "%s (len %d), head %d: lse %g, reference %g",
                  what, len, h, lse[h], ref_lse[h]);
        }
    }
}

static void poison(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

static int all_nan(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isnan(x[i])) return 0;
    return 1;
}

static int message_has(const char *needle) { return strstr(tpla_last_error(), needle) != NULL; }

static const tpla_capacities_t CAPS = {
    .max_batch = BATCH,
    .heads = HEADS,
    .lat = LAT,
    .rope = ROPE,
    .page_size = PAGE,
    .max_pages_per_seq = PPS,
    .max_append = MAX_APPEND,
};

_Alignas(16) static uint16_t q[BATCH * HEADS * ROW];
static float out[BATCH * HEADS * LAT], lse[BATCH * HEADS];

/* Decode of every sequence with `plan`, checked against the reference. */
static void decode_and_check(tpla_plan_t *plan, const char *what) {
    poison(out, sizeof out / sizeof *out);
    poison(lse, sizeof lse / sizeof *lse);
    MUST(call_decode(plan, &table[0][0], PPS, lens, q, out, lse, BATCH));
    CHECK(strcmp(tpla_last_error(), "") == 0, "a success leaves an empty message");
    for (int b = 0; b < BATCH; b++)
        check_sequence(what, out + b * HEADS * LAT, lse + b * HEADS, q + b * HEADS * ROW, table[b],
                       lens[b]);
}

/* Cascade: sequence `b` split at a page boundary, each half decoded as its own sequence, then
 * combined, equals attention over the whole. */
static void combine_and_check(tpla_plan_t *plan, int b) {
    int half = (lens[b] / 2 / PAGE) * PAGE;
    int32_t parts_table[2][PPS], parts_lens[2] = {half, lens[b] - half};
    uint16_t parts_q[2 * HEADS * ROW];
    float parts_out[2 * HEADS * LAT], parts_lse[2 * HEADS], merged[HEADS * LAT], merged_lse[HEADS];
    memset(parts_table, 0, sizeof parts_table);
    for (int p = 0; p < PPS; p++) {
        parts_table[0][p] = table[b][p];
        parts_table[1][p] = p + half / PAGE < PPS ? table[b][p + half / PAGE] : 0;
    }
    memcpy(parts_q, q + b * HEADS * ROW, sizeof parts_q / 2);
    memcpy(parts_q + HEADS * ROW, q + b * HEADS * ROW, sizeof parts_q / 2);
    MUST(call_decode(plan, &parts_table[0][0], PPS, parts_lens, parts_q, parts_out, parts_lse, 2));
    poison(merged, HEADS * LAT);
    poison(merged_lse, HEADS);
    /* n = 2 states of batch 1: [2, HEADS, LAT] is [2, 1, HEADS, LAT]. */
    MUST(call_combine(plan, parts_out, parts_lse, 2, merged, merged_lse));
    check_sequence("combine", merged, merged_lse, q + b * HEADS * ROW, table[b], lens[b]);
}

static void error_cases(tpla_plan_t *plan) {
    tpla_status_t s;
    tpla_plan_t *none = NULL;

    s = tpla_decode(NULL, pool, PAGES, &table[0][0], PPS, lens, q, out, lse, BATCH);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("plan"), "null plan: status %d", (int)s);

    poison(out, sizeof out / sizeof *out);
    s = tpla_decode(plan, pool, PAGES, &table[0][0], PPS, lens, NULL, out, lse, BATCH);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("`q`"), "null q: status %d", (int)s);
    CHECK(all_nan(out, sizeof out / sizeof *out), "null q: out was written");

    s = tpla_decode(plan, pool, PAGES, &table[0][0], PPS, lens, q, out, lse, BATCH + 1);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("max_batch"),
          "batch past capacity: status %d", (int)s);

    s = tpla_decode(plan, pool, PAGES, &table[0][0], PPS, lens, q, out, lse, 0);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT, "batch 0: status %d", (int)s);

    s = tpla_decode(plan, pool, PAGES, &table[0][0], PPS + 1, lens, q, out, lse, BATCH);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("max_pages_per_seq"),
          "table wider than the plan: status %d", (int)s);

    /* A length past the block table: rejected on the host, nothing written. */
    int32_t long_lens[BATCH] = {PPS * PAGE + 1, 1, 1};
    poison(out, sizeof out / sizeof *out);
    s = tpla_decode(plan, pool, PAGES, &table[0][0], PPS, long_lens, q, out, lse, BATCH);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT, "length past the table: status %d", (int)s);
    CHECK(all_nan(out, sizeof out / sizeof *out), "length past the table: out was written");

    /* A page id outside the pool. */
    int32_t bad_table[BATCH][PPS];
    memcpy(bad_table, table, sizeof bad_table);
    bad_table[0][0] = PAGES;
    int32_t one[BATCH] = {1, 1, 1};
    s = tpla_decode(plan, pool, PAGES, &bad_table[0][0], PPS, one, q, out, lse, BATCH);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT, "page outside the pool: status %d", (int)s);

    /* Outputs overlapping an input. */
    s = tpla_decode(plan, pool, PAGES, &table[0][0], PPS, lens, q, (float *)(void *)q, lse, 1);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("overlap"), "out over q: status %d",
          (int)s);

    /* Misaligned. */
    s = tpla_decode(plan, pool, PAGES, &table[0][0], PPS, lens, q, (float *)((char *)out + 1), lse,
                    1);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("aligned"), "misaligned out: status %d",
          (int)s);

    /* Appends: a repeated slot, a slot outside the pool, too many rows; the pool is untouched. */
    static uint16_t before[PAGES * PAGE * ROW];
    memcpy(before, pool, sizeof pool);
    uint16_t rows[2 * ROW];
    for (int i = 0; i < 2 * ROW; i++) rows[i] = tpla_f32_to_bf16(1.0f);
    int32_t twice[2] = {5, 5}, outside[2] = {0, PAGES * PAGE};
    s = tpla_append(plan, pool, PAGES, twice, rows, 2);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("twice"), "repeated slot: status %d",
          (int)s);
    s = tpla_append(plan, pool, PAGES, outside, rows, 2);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT, "slot outside the pool: status %d", (int)s);
    s = tpla_append(plan, pool, PAGES, twice, rows, MAX_APPEND + 1);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("max_append"),
          "append past capacity: status %d", (int)s);
    s = tpla_append(plan, pool, PAGES, NULL, rows, 2);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("`slots`"), "null slots: status %d",
          (int)s);
    CHECK(memcmp(before, pool, sizeof pool) == 0, "a failed append wrote the pool");
    s = tpla_append(plan, pool, PAGES, NULL, NULL, 0);
    CHECK(s == TPLA_STATUS_OK, "an empty append: status %d", (int)s);

    s = tpla_combine(plan, out, lse, 0, 1, HEADS, LAT, out, lse);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT, "combine of 0 states: status %d", (int)s);

    /* Plan creation. */
    tpla_capacities_t zero = CAPS;
    zero.max_batch = 0;
    s = tpla_plan_create(NULL, SCALE, 0, TPLA_BACKEND_CPU, 0, NULL, &none);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && none == NULL, "null caps: status %d", (int)s);
    s = tpla_plan_create(&zero, SCALE, 0, TPLA_BACKEND_CPU, 0, NULL, &none);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("max_batch") && none == NULL,
          "max_batch 0: status %d", (int)s);
    s = tpla_plan_create(&CAPS, SCALE, 0, 7, 0, NULL, &none);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("backend"), "backend 7: status %d",
          (int)s);
    s = tpla_plan_create(&CAPS, NAN, 0, TPLA_BACKEND_CPU, 0, NULL, &none);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("scale"), "NaN scale: status %d", (int)s);
    s = tpla_plan_create(&CAPS, SCALE, 0, TPLA_BACKEND_CPU, 0, NULL, NULL);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("`out`"), "null out: status %d", (int)s);
    if (!tpla_cuda_available()) {
        s = tpla_plan_create(&CAPS, SCALE, 0, TPLA_BACKEND_CUDA, 0, NULL, &none);
        CHECK(s == TPLA_STATUS_UNAVAILABLE && none == NULL, "CUDA without a device: status %d",
              (int)s);
    }
    size_t splits = 0;
    s = tpla_plan_splits(plan, NULL);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT, "null splits: status %d", (int)s);
    s = tpla_plan_splits(plan, &splits);
    CHECK(s == TPLA_STATUS_OK && strcmp(tpla_last_error(), "") == 0,
          "a success after a failure clears the message");
    tpla_plan_destroy(NULL);
}

/* The balanced schedule once per step: tpla_schedule, then tpla_decode_scheduled per layer
 * (here two "layers" over the same lengths), each checked against the reference; a reuse
 * before any schedule or for another batch is refused with nothing written. Capacities for
 * 1024-token sequences give the balanced plan (splits = 0) two splits, so it has tables. */
static void scheduled_cases(void) {
    tpla_capacities_t caps = CAPS;
    caps.max_pages_per_seq = 64;
    tpla_plan_t *plan = NULL;
    MUST(tpla_plan_create(&caps, SCALE, 0, TPLA_BACKEND_CPU, 0, NULL, &plan));
    size_t splits = 0;
    MUST(tpla_plan_splits(plan, &splits));
    CHECK(splits == 2, "balanced plan for 1024-token sequences: %zu splits, want 2", splits);
    poison(out, sizeof out / sizeof *out);
    poison(lse, sizeof lse / sizeof *lse);
    tpla_status_t s = tpla_decode_scheduled(plan, pool, PAGES, &table[0][0], PPS, lens, q, out,
                                            lse, BATCH);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("schedule first") &&
              all_nan(out, sizeof out / sizeof *out),
          "decode_scheduled before a schedule: status %d, %s", (int)s, tpla_last_error());
    s = tpla_schedule(plan, NULL, BATCH);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT, "schedule of null lengths: status %d", (int)s);
    s = tpla_schedule(plan, lens, 0);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT, "schedule of batch 0: status %d", (int)s);
    MUST(tpla_schedule(plan, lens, BATCH));
    for (int layer = 0; layer < 2; layer++) {
        poison(out, sizeof out / sizeof *out);
        poison(lse, sizeof lse / sizeof *lse);
        MUST(tpla_decode_scheduled(plan, pool, PAGES, &table[0][0], PPS, lens, q, out, lse,
                                   BATCH));
        for (int b = 0; b < BATCH; b++)
            check_sequence("scheduled", out + b * HEADS * LAT, lse + b * HEADS,
                           q + b * HEADS * ROW, table[b], lens[b]);
    }
    poison(out, sizeof out / sizeof *out);
    s = tpla_decode_scheduled(plan, pool, PAGES, &table[0][0], PPS, lens, q, out, lse, BATCH - 1);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("call schedule again") &&
              all_nan(out, sizeof out / sizeof *out),
          "decode_scheduled for another batch: status %d, %s", (int)s, tpla_last_error());
    tpla_plan_destroy(plan);
}

/* The FP8 latent cache (TPLA_KV_FP8): tpla_append quantises bf16 rows into the pool, whose
 * bytes this test decodes itself (e4m3, per-128-column float scales, bf16 RoPE) to build the
 * reference; decode must match attention over those dequantised rows. */
#define LAT8 128
#define ROPE8 32
#define ROW8 (LAT8 + ROPE8)
#define PPS8 4
#define PAGES8 9

static double e4m3(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e == 0 ? ldexp(m / 8.0, -6) : ldexp(1.0 + m / 8.0, e - 7);
    return (b & 0x80) ? -v : v;
}

/* f rounded to bf16 (nearest even), as the kernels widen a dequantised value. */
static double round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, sizeof f);
    return (double)f;
}

static void fp8_cases(void) {
    tpla_capacities_t caps = {.max_batch = 2, .heads = HEADS, .lat = LAT8, .rope = ROPE8,
                              .page_size = PAGE, .max_pages_per_seq = PPS8, .max_append = 64,
                              .kv_dtype = TPLA_KV_FP8};
    size_t prow = 0;
    MUST(tpla_pool_row(&caps, &prow));
    /* 128 e4m3 + one scale padded to 16 + 32 bf16 = 208 bytes. */
    CHECK(prow == 104, "FP8 pool row of %zu uint16_t, want 104", prow);
    if (prow != 104) return;
    static uint16_t pool8[PAGES8 * PAGE * 104];
    for (size_t i = 0; i < sizeof pool8 / sizeof *pool8; i++) pool8[i] = 0xffff; /* NaN bytes */
    tpla_plan_t *plan = NULL;
    MUST(tpla_plan_create(&caps, SCALE, 2, TPLA_BACKEND_CPU, 0, NULL, &plan));
    int32_t tab[2][PPS8] = {{3, 7, 1, 5}, {0, 8, 2, 6}}, lens8[2] = {45, 20};
    static uint16_t rows[64 * ROW8];
    static int32_t slots[64];
    static uint16_t given[2][PPS8 * PAGE][ROW8];
    for (int b = 0; b < 2; b++) {
        for (int t = 0; t < lens8[b]; t++) {
            for (int i = 0; i < ROW8; i++)
                given[b][t][i] = tpla_f32_to_bf16((i < 64 ? 4.0f : 0.5f) * uniform());
            slots[t] = tab[b][t / PAGE] * PAGE + t % PAGE;
            memcpy(rows + t * ROW8, given[b][t], sizeof given[b][t]);
        }
        MUST(tpla_append(plan, pool8, PAGES8, slots, rows, (size_t)lens8[b]));
    }
    /* Decode the stored bytes here; RoPE must be stored exactly, the latent to e4m3 precision. */
    static double deq[2][PPS8 * PAGE][ROW8];
    double worst = 0.0;
    int rope_exact = 1;
    for (int b = 0; b < 2; b++) {
        for (int t = 0; t < lens8[b]; t++) {
            const uint8_t *r = (const uint8_t *)(pool8 + (size_t)(tab[b][t / PAGE] * PAGE + t % PAGE) * 104);
            float scale;
            memcpy(&scale, r + LAT8, sizeof scale);
            for (int i = 0; i < LAT8; i++) {
                deq[b][t][i] = round_bf16((float)e4m3(r[i]) * scale);
                double d = fabs(deq[b][t][i] - widen(given[b][t][i]));
                if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
            }
            for (int i = 0; i < ROPE8; i++) {
                uint16_t bits;
                memcpy(&bits, r + LAT8 + 16 + 2 * i, sizeof bits);
                rope_exact &= bits == given[b][t][LAT8 + i];
                deq[b][t][LAT8 + i] = widen(bits);
            }
        }
    }
    CHECK(rope_exact, "FP8 rows keep the RoPE key's bf16 bits");
    /* Half an e4m3 step at the top of a group whose largest value is below 4: < 4 / 16. */
    CHECK(worst > 0.0 && worst < 0.25, "FP8 latent read-back error %g", worst);
    static uint16_t q8[2 * HEADS * ROW8];
    for (int i = 0; i < 2 * HEADS * ROW8; i++) q8[i] = tpla_f32_to_bf16(2.0f * uniform());
    float o8[2 * HEADS * LAT8], l8[2 * HEADS];
    poison(o8, 2 * HEADS * LAT8);
    poison(l8, 2 * HEADS);
    MUST(tpla_decode(plan, pool8, PAGES8, &tab[0][0], PPS8, lens8, q8, o8, l8, 2));
    for (int b = 0; b < 2; b++) {
        for (int h = 0; h < HEADS; h++) {
            const uint16_t *qh = q8 + (b * HEADS + h) * ROW8;
            double sc[PPS8 * PAGE], m = -INFINITY, total = 0.0, ref[LAT8] = {0}, err = 0.0, mag = 1e-6;
            for (int t = 0; t < lens8[b]; t++) {
                double s = 0.0;
                for (int i = 0; i < ROW8; i++) s += widen(qh[i]) * deq[b][t][i];
                sc[t] = (double)SCALE * s;
                if (sc[t] > m) m = sc[t];
            }
            for (int t = 0; t < lens8[b]; t++) {
                double p = exp(sc[t] - m);
                total += p;
                for (int i = 0; i < LAT8; i++) ref[i] += p * deq[b][t][i];
            }
            for (int i = 0; i < LAT8; i++) {
                ref[i] /= total;
                double d = fabs((double)o8[(b * HEADS + h) * LAT8 + i] - ref[i]);
                if (!(d <= err)) err = isnan(d) ? INFINITY : d;
                if (fabs(ref[i]) > mag) mag = fabs(ref[i]);
            }
            CHECK(err <= 1e-3 * mag, "FP8 seq %d head %d: out differs by %g (scale %g)", b, h, err,
                  mag);
            double dl = fabs((double)l8[b * HEADS + h] - (m + log(total)));
            CHECK(dl <= 1e-3 * (1.0 + fabs(m)), "FP8 seq %d head %d: lse off by %g", b, h, dl);
        }
    }
    /* FP8 needs a latent width of whole 128-column groups; an unknown kv_dtype is refused. */
    tpla_plan_t *none = NULL;
    tpla_capacities_t bad = caps;
    bad.lat = 64;
    tpla_status_t s = tpla_plan_create(&bad, SCALE, 1, TPLA_BACKEND_CPU, 0, NULL, &none);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("multiple of 128") && none == NULL,
          "FP8 at lat 64: status %d", (int)s);
    bad = caps;
    bad.kv_dtype = 9;
    s = tpla_plan_create(&bad, SCALE, 1, TPLA_BACKEND_CPU, 0, NULL, &none);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT && message_has("kv_dtype") && none == NULL,
          "kv_dtype 9: status %d", (int)s);
    tpla_plan_destroy(plan);
}

/* The same engine steps on a CUDA plan (default stream) when a device is present. */
static void gpu_variant(void) {
    if (!tpla_cuda_available()) {
        const char *require = getenv("TPLA_REQUIRE_GPU");
        if (require && strcmp(require, "1") == 0) {
            CHECK(0, "TPLA_REQUIRE_GPU=1 but no CUDA device");
        } else {
            printf("SKIP: no CUDA device, the GPU variant did not run\n");
        }
        return;
    }
    MUST(tpla_plan_create(&CAPS, SCALE, 0, TPLA_BACKEND_CUDA, 0, NULL, &gpu_plan));
    d_pool = to_device(pool, sizeof pool);
    int step[BATCH] = {2, 3, 1};
    append_tokens(gpu_plan, step);
    decode_and_check(gpu_plan, "CUDA");
    combine_and_check(gpu_plan, 2);
    tpla_status_t s = tpla_decode(gpu_plan, d_pool, PAGES, NULL, PPS, NULL, NULL, NULL, NULL, 1);
    CHECK(s == TPLA_STATUS_INVALID_ARGUMENT, "CUDA, null buffers: status %d", (int)s);
    MUST(tpla_synchronize(gpu_plan));
    MUST(tpla_cuda_free(gpu_plan, d_pool));
    tpla_plan_destroy(gpu_plan);
    printf("GPU variant ran on CUDA device 0\n");
}

int main(void) {
    printf("tpla %s, CUDA available: %d\n", tpla_version(), tpla_cuda_available());

    /* Pages handed out shuffled. */
    int32_t perm[PAGES];
    for (int i = 0; i < PAGES; i++) perm[i] = i;
    for (int i = PAGES - 1; i > 0; i--) {
        int j = (int)(next_u32() % (uint32_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int b = 0; b < BATCH; b++)
        for (int p = 0; p < PPS; p++) table[b][p] = perm[b * PPS + p];

    /* Two plans: three KV splits (partials then combine) and one (direct). */
    tpla_plan_t *split3 = NULL, *split1 = NULL;
    MUST(tpla_plan_create(&CAPS, SCALE, 3, TPLA_BACKEND_CPU, 0, NULL, &split3));
    MUST(tpla_plan_create(&CAPS, SCALE, 1, TPLA_BACKEND_CPU, 0, NULL, &split1));
    size_t splits = 0;
    MUST(tpla_plan_splits(split3, &splits));
    CHECK(splits == 3, "splits %zu, asked for 3", splits);

    /* Prefill of variable lengths (one empty), then a decode step appending one token to two
     * sequences. */
    int prefill[BATCH] = {37, 0, 90};
    append_tokens(split3, prefill);
    for (int i = 0; i < BATCH * HEADS * ROW; i++) q[i] = tpla_f32_to_bf16(6.0f * uniform());
    decode_and_check(split3, "prefill, 3 splits");
    decode_and_check(split1, "prefill, 1 split");
    int step[BATCH] = {1, 0, 1};
    append_tokens(split1, step);
    decode_and_check(split3, "after a step, 3 splits");
    combine_and_check(split3, 2);
    combine_and_check(split1, 0);

    error_cases(split3);
    /* The plan still works after the errors. */
    decode_and_check(split3, "after the errors");
    scheduled_cases();

    tpla_plan_destroy(split3);
    tpla_plan_destroy(split1);
    fp8_cases();
    gpu_variant();
    printf("test_decode: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

/* The smallest engine-style program over tpla's C ABI: the engine owns the KV page pool, the
 * block table, the lengths and the slot mapping; tpla appends through the slots and decodes
 * over that memory, returning the output and its log-sum-exp.
 *
 * Build and run (from the repository root):
 *   cargo build --release -p tpla-capi
 *   cc -std=c11 -I capi/include examples/c/decode.c target/release/libtpla_capi.so \
 *      -Wl,-rpath,target/release -lm -o decode
 *   ./decode          # CPU backend: host pointers
 *   ./decode cuda     # CUDA device 0, default stream: device pointers (tpla_cuda_* helpers) */
#include "tpla.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADS 16
#define LAT 512
#define ROPE 64
#define ROW (LAT + ROPE)
#define PAGE 64
#define PPS 16
#define PAGES 32
#define BATCH 2

static tpla_plan_t *plan;
static int on_gpu;

static void check(tpla_status_t s, const char *what) {
    if (s != TPLA_STATUS_OK) {
        fprintf(stderr, "%s failed (%d): %s\n", what, (int)s, tpla_last_error());
        exit(1);
    }
}

/* The buffer the library reads: the host array itself on the CPU, a device copy on CUDA. */
static void *place(void *host, size_t bytes) {
    if (!on_gpu) return host;
    void *dev = NULL;
    check(tpla_cuda_malloc(plan, bytes, &dev), "tpla_cuda_malloc");
    check(tpla_cuda_upload(plan, dev, host, bytes), "tpla_cuda_upload");
    return dev;
}

static void fetch(void *host, void *placed, size_t bytes) {
    if (on_gpu) check(tpla_cuda_download(plan, host, placed, bytes), "tpla_cuda_download");
}

static void release(void *placed) {
    if (on_gpu) check(tpla_cuda_free(plan, placed), "tpla_cuda_free");
}

static uint16_t random_bf16(void) { return tpla_f32_to_bf16((float)rand() / RAND_MAX * 2.0f - 1.0f); }

int main(int argc, char **argv) {
    on_gpu = argc > 1 && strcmp(argv[1], "cuda") == 0;
    tpla_capacities_t caps = {.max_batch = BATCH, .heads = HEADS, .lat = LAT, .rope = ROPE,
                              .page_size = PAGE, .max_pages_per_seq = PPS, .max_append = 256};
    check(tpla_plan_create(&caps, 0.1352f, 0, on_gpu ? TPLA_BACKEND_CUDA : TPLA_BACKEND_CPU, 0,
                           NULL, &plan),
          "tpla_plan_create");

    /* The engine's memory: sequence 0 on pages 7, 3, 9; sequence 1 on pages 12, 0. */
    static uint16_t pool[PAGES * PAGE * ROW];
    int32_t table[BATCH][PPS] = {{7, 3, 9}, {12, 0}};
    int32_t lens[BATCH] = {150, 90};

    /* Prefill: the engine maps each token to its slot (page * PAGE + offset). */
    static int32_t slots[240];
    static uint16_t rows[240 * ROW];
    int n = 0;
    for (int b = 0; b < BATCH; b++)
        for (int t = 0; t < lens[b]; t++) slots[n++] = table[b][t / PAGE] * PAGE + t % PAGE;
    for (int i = 0; i < n * ROW; i++) rows[i] = random_bf16();

    static uint16_t q[BATCH * HEADS * ROW];
    for (int i = 0; i < BATCH * HEADS * ROW; i++) q[i] = random_bf16();
    static float out[BATCH * HEADS * LAT], lse[BATCH * HEADS];

    void *d_pool = place(pool, sizeof pool), *d_slots = place(slots, sizeof slots),
         *d_rows = place(rows, sizeof rows), *d_table = place(table, sizeof table),
         *d_lens = place(lens, sizeof lens), *d_q = place(q, sizeof q),
         *d_out = place(out, sizeof out), *d_lse = place(lse, sizeof lse);

    check(tpla_append(plan, d_pool, PAGES, d_slots, d_rows, (size_t)n), "tpla_append");
    /* One decode step with an absorbed query per sequence. */
    check(tpla_decode(plan, d_pool, PAGES, d_table, PPS, d_lens, d_q, d_out, d_lse, BATCH),
          "tpla_decode");
    fetch(out, d_out, sizeof out);
    fetch(lse, d_lse, sizeof lse);

    size_t splits = 0;
    check(tpla_plan_splits(plan, &splits), "tpla_plan_splits");
    printf("%s: lengths [%d, %d], %zu splits; lse of sequence 0, head 0: %.4f; out[0..4] = "
           "[%.5f, %.5f, %.5f, %.5f]\n",
           on_gpu ? "cuda" : "cpu", lens[0], lens[1], splits, lse[0], out[0], out[1], out[2],
           out[3]);

    void *placed[] = {d_pool, d_slots, d_rows, d_table, d_lens, d_q, d_out, d_lse};
    for (size_t i = 0; i < sizeof placed / sizeof *placed; i++) release(placed[i]);
    tpla_plan_destroy(plan);
    return 0;
}

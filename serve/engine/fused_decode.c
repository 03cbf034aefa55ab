/* A decode step of dense ERNIE 4.5 for a few rows (one new token each), in float32, as one call:
 * RMSNorm, fused QKV, interleaved RoPE, GQA softmax attention over the KV cache, o-projection,
 * SwiGLU MLP, final norm and LM head, the weights' products split over a team of threads that
 * wait for the next product spinning (the gaps between products are microseconds).
 *
 * Why compiled (fused_decode.py has the figures): a decode step reads every weight once, and in
 * numpy the small operations between the products (norms, RoPE, attention, SwiGLU, Python) left the
 * memory idle for ~6% of a lone row's step, and each product's thread hand-off cost microseconds.
 *
 * The arithmetic is forward.py's `DenseForward.forward` (the tests hold the two together); the
 * layouts are its arrays': linear weights as [out, in] rows, the KV cache [rows, kv_heads, capacity,
 * head_dim] a layer, keys stored rotated. Only the C library and POSIX threads; the kernels
 * (fused_kernels.h) in plain C vectors (GCC / Clang vector extensions), compiled for AVX-512, for
 * AVX2 and for any CPU, the widest this CPU runs chosen at start (`ernie_fused_kernels`).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ABI 3 /* fused_decode.py checks it: a stale build is not used */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RELAX() _mm_pause()
#else
#define RELAX() ((void)0)
#endif

struct dims {
    int32_t layers, hidden, heads, kv_heads, head_dim, inner, vocab;
    float eps, scale;
};

/* ---- a team of threads that take a job's tasks from a shared counter ------------------------
 * Each helper has a state word: IDLE, ASSIGNED (a job is waiting for it) or RUNNING. The caller
 * assigns a job to every helper, runs tasks itself, then takes back the assignment of a helper
 * that has not started (CAS ASSIGNED -> IDLE) and waits only for the helpers that are running:
 * a helper that another process keeps off its core leaves its share to the caller instead of
 * holding up the step. A helper spins SPIN_NS for its next job, then sleeps on a condition. */

enum { IDLE, ASSIGNED, RUNNING };
#define MAX_HELPERS 63
/* 100 us: past the gaps within a step (microseconds), not through the ~1 ms of Python between steps,
 * where a spinning helper held a core that the engine's and its clients' threads wanted (2 ms of
 * spin: one row 17.1 tok/s through the engine, 100 / 50 / 20 us: 17.6-18.3, interleaved) */
#define SPIN_NS 100000L

typedef void (*task_fn)(const void *ctx, int task);

struct helper {
    _Atomic int state;
    int sleeping; /* under team.lock */
    char pad[64 - 2 * sizeof(int)];
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_mutex_t busy; /* one job at a time: two engines in a process share the team */
    int helpers;
    task_fn fn;
    const void *ctx;
    int tasks;
    _Atomic int next;
    struct helper helper[MAX_HELPERS];
} team = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER};

static void take_tasks(void) {
    int i;
    while ((i = atomic_fetch_add_explicit(&team.next, 1, memory_order_relaxed)) < team.tasks)
        team.fn(team.ctx, i);
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *helper_main(void *arg) {
    struct helper *me = arg;
    for (;;) {
        long since = now_ns();
        for (int spins = 0; atomic_load(&me->state) != ASSIGNED; spins++) {
            RELAX();
            if ((spins & 1023) || now_ns() - since < SPIN_NS) continue;
            pthread_mutex_lock(&team.lock);
            me->sleeping = 1;
            while (atomic_load(&me->state) != ASSIGNED) pthread_cond_wait(&team.wake, &team.lock);
            me->sleeping = 0;
            pthread_mutex_unlock(&team.lock);
        }
        int expected = ASSIGNED;
        if (atomic_compare_exchange_strong(&me->state, &expected, RUNNING)) {
            take_tasks();
            atomic_store(&me->state, IDLE);
        }
    }
    return NULL;
}

/* A forked child has none of the helpers, and may have copied a lock or a state that one held: its
 * steps run on the calling thread alone, over fresh locks. */
static void forked_child(void) {
    pthread_mutex_init(&team.lock, NULL);
    pthread_cond_init(&team.wake, NULL);
    pthread_mutex_init(&team.busy, NULL);
    for (int h = 0; h < team.helpers; h++) {
        atomic_store(&team.helper[h].state, IDLE);
        team.helper[h].sleeping = 0;
    }
    team.helpers = 0;
}

/* Start the helpers (once; later calls return the count started). */
int ernie_fused_start(int helpers) {
    pthread_mutex_lock(&team.busy);
    if (team.helpers == 0) {
        static int registered;
        if (!registered) registered = pthread_atfork(NULL, NULL, forked_child) == 0;
        if (helpers > MAX_HELPERS) helpers = MAX_HELPERS;
        for (int i = 0; i < helpers; i++) {
            pthread_t thread;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            int failed = pthread_create(&thread, &attr, helper_main, &team.helper[i]);
            pthread_attr_destroy(&attr);
            if (failed) break;
            team.helpers++;
        }
    }
    int started = team.helpers;
    pthread_mutex_unlock(&team.busy);
    return started;
}

/* fn(ctx, 0 .. tasks - 1) on this thread and the helpers (the caller holds team.busy or runs alone). */
static void run(task_fn fn, const void *ctx, int tasks, int shared) {
    if (!shared || team.helpers == 0 || tasks < 2) {
        for (int i = 0; i < tasks; i++) fn(ctx, i);
        return;
    }
    team.fn = fn, team.ctx = ctx, team.tasks = tasks;
    atomic_store(&team.next, 0);
    int sleepers = 0;
    for (int h = 0; h < team.helpers; h++) {
        atomic_store(&team.helper[h].state, ASSIGNED);
    }
    pthread_mutex_lock(&team.lock);
    for (int h = 0; h < team.helpers; h++) sleepers += team.helper[h].sleeping;
    if (sleepers) pthread_cond_broadcast(&team.wake);
    pthread_mutex_unlock(&team.lock);
    take_tasks();
    for (int h = 0; h < team.helpers; h++) {
        int expected = ASSIGNED;
        if (atomic_compare_exchange_strong(&team.helper[h].state, &expected, IDLE)) continue;
        while (atomic_load(&team.helper[h].state) != IDLE) RELAX();
    }
}

/* ---- kernels (fused_kernels.h), one set per vector width ------------------------------------ */

struct kernels {
    int width; /* bits a vector */
    void (*product_rows)(const float *w, const float *x, int rows, int n, float *y, size_t ys, int lo, int hi);
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float p, const float *v, float *out, int n);
};

/* AVX-512: 16 lanes, 4 x 4 accumulators of its 32 registers; AVX2: 8 lanes, 4 x 2 of 16 (4 x 4
 * spilled: 0.3x the 8-row step); both only where GCC compiles for a target by pragma */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#define X86_SETS 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#define LANES 16
#define XTILE 4
#define NAME(x) x##_avx512
#include "fused_kernels.h"
#undef LANES
#undef XTILE
#undef NAME
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define LANES 8
#define XTILE 2
#define NAME(x) x##_avx2
#include "fused_kernels.h"
#undef LANES
#undef XTILE
#undef NAME
#pragma GCC pop_options
#endif
#define LANES 4
#define XTILE 2
#define NAME(x) x##_any
#include "fused_kernels.h"
#undef LANES
#undef XTILE
#undef NAME

static const struct kernels *kernels = &kernels_any;

/* Use the kernels for vectors of WIDTH bits (512, 256, 128), or 0: the widest this CPU runs; below
 * 0: none other. Returns the width in use (unchanged when this CPU or build has none of WIDTH). */
int ernie_fused_kernels(int width) {
    if (width < 0) return kernels->width;
    const struct kernels *sets[3] = {NULL, NULL, &kernels_any};
#ifdef X86_SETS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        sets[0] = &kernels_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) sets[1] = &kernels_avx2;
#endif
    for (int i = 0; i < 3; i++)
        if (sets[i] && (width == 0 || width == sets[i]->width)) {
            kernels = sets[i];
            break;
        }
    return kernels->width;
}

#define ROWS_PER_TASK 64 /* 256 KB of a 1024-wide weight: thousands of tasks in the LM head */

struct product {
    const float *w, *x;
    float *y;
    int rows, out, in;
};

static void product_task(const void *ctx, int task) {
    const struct product *p = ctx;
    int lo = task * ROWS_PER_TASK, hi = lo + ROWS_PER_TASK < p->out ? lo + ROWS_PER_TASK : p->out;
    kernels->product_rows(p->w, p->x, p->rows, p->in, p->y, p->out, lo, hi);
}

/* y [rows, out] = x [rows, in] @ w [out, in].T */
static void product(const float *w, const float *x, int rows, float *y, int out, int in, int shared) {
    struct product p = {w, x, y, rows, out, in};
    run(product_task, &p, (out + ROWS_PER_TASK - 1) / ROWS_PER_TASK, shared);
}

/* out = x / sqrt(mean(x^2) + eps) * weight */
static void rms_norm(const float *x, const float *weight, float *out, int n, float eps) {
    float variance = kernels->dot(x, x, n) / (float)n;
    float denominator = sqrtf(variance + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] / denominator * weight[i];
}

/* the interleaved pairs (x[2i], x[2i+1]) of N heads of D, rotated by (cos_i, sin_i) * scale, into OUT */
static void rope(const float *x, const float *cs, float scale, float *out, int heads, int d) {
    for (int h = 0; h < heads; h++, x += d, out += d)
        for (int i = 0; i < d / 2; i++) {
            float c = cs[2 * i] * scale, s = cs[2 * i + 1] * scale;
            float a = x[2 * i], b = x[2 * i + 1];
            out[2 * i] = a * c - b * s;
            out[2 * i + 1] = a * s + b * c;
        }
}

struct attention {
    const struct dims *d;
    const float *q, *bias;
    float *const *cache; /* this layer's keys, values */
    float *scores, *out;
    int length, capacity, bias_stride;
};

/* one query head of one row over the first LENGTH columns of the row's KV head */
static void attention_task(const void *ctx, int task) {
    const struct attention *a = ctx;
    int dim = a->d->head_dim, heads = a->d->heads, group = heads / a->d->kv_heads;
    int row = task / heads, head = task % heads;
    size_t kv = ((size_t)row * a->d->kv_heads + head / group) * a->capacity * dim;
    const float *q = a->q + (size_t)task * dim, *keys = a->cache[0] + kv, *values = a->cache[1] + kv;
    const float *bias = a->bias + (size_t)row * a->bias_stride;
    float *scores = a->scores + (size_t)task * a->capacity, *out = a->out + (size_t)task * dim;
    float top = -INFINITY, total = 0;
    for (int j = 0; j < a->length; j++) {
        scores[j] = kernels->dot(q, keys + (size_t)j * dim, dim) + bias[j];
        top = scores[j] > top ? scores[j] : top;
    }
    for (int j = 0; j < a->length; j++) total += scores[j] = expf(scores[j] - top);
    memset(out, 0, dim * sizeof(float));
    for (int j = 0; j < a->length; j++) kernels->axpy(scores[j] / total, values + (size_t)j * dim, out, dim);
}

int ernie_fused_abi(void) { return ABI; }

/* The scratch floats a step of ROWS rows needs at CAPACITY cache columns. */
long ernie_fused_scratch(const struct dims *d, int rows, int capacity) {
    long qkv = (long)(d->heads + 2 * d->kv_heads) * d->head_dim;
    return rows * (2L * d->hidden + qkv + 2L * d->heads * d->head_dim + 3L * d->inner +
                   (long)d->heads * capacity + d->head_dim);
}

/* One token for each of ROWS rows: the embedding rows of TOKENS at POSITIONS; their keys and values
 * written into column AT of every layer's cache (keys[i], values[i]: [rows, kv_heads, capacity,
 * head_dim]); attention over columns [0, AT] with the additive BIAS (a row every BIAS_STRIDE floats);
 * the LM head's logits [rows, vocab] into LOGITS. WEIGHTS: per layer ln1, ln2, qkv, o, up_gate,
 * down. Returns 0, or -1 when the team was busy with another caller's step (this one then ran on
 * the calling thread alone: still correct). */
int ernie_fused_step(const struct dims *d, const float *const *weights, const float *norm,
                     const float *head, const float *inv_freq, const float *embed, int rows,
                     const int64_t *tokens, const int64_t *positions, float *const *keys,
                     float *const *values, int capacity, int at, const float *bias, int bias_stride,
                     float *scratch, float *logits) {
    int shared = pthread_mutex_trylock(&team.busy) == 0;
    int hidden = d->hidden, dim = d->head_dim, heads = d->heads, kv = d->kv_heads, inner = d->inner;
    int width = (heads + 2 * kv) * dim;
    float *x = scratch, *h = x + (size_t)rows * hidden, *qkv = h + (size_t)rows * hidden,
          *q = qkv + (size_t)rows * width, *attended = q + (size_t)rows * heads * dim,
          *gate_up = attended + (size_t)rows * heads * dim, *act = gate_up + (size_t)rows * 2 * inner,
          *scores = act + (size_t)rows * inner, *cs = scores + (size_t)rows * heads * capacity;
    for (int m = 0; m < rows; m++) {
        for (int i = 0; i < dim / 2; i++) {
            float angle = (float)positions[m] * inv_freq[i];
            cs[m * dim + 2 * i] = cosf(angle), cs[m * dim + 2 * i + 1] = sinf(angle);
        }
        memcpy(x + (size_t)m * hidden, embed + (size_t)tokens[m] * hidden, hidden * sizeof(float));
    }
    for (int layer = 0; layer < d->layers; layer++) {
        const float *const *w = weights + 6 * layer;
        for (int m = 0; m < rows; m++) rms_norm(x + (size_t)m * hidden, w[0], h + (size_t)m * hidden, hidden, d->eps);
        product(w[2], h, rows, qkv, width, hidden, shared);
        for (int m = 0; m < rows; m++) {
            const float *row = qkv + (size_t)m * width, *turns = cs + m * dim;
            rope(row, turns, d->scale, q + (size_t)m * heads * dim, heads, dim);
            for (int g = 0; g < kv; g++) {
                size_t column = (((size_t)m * kv + g) * capacity + at) * dim;
                rope(row + (heads + g) * dim, turns, 1.0f, keys[layer] + column, 1, dim);
                memcpy(values[layer] + column, row + (heads + kv + g) * dim, dim * sizeof(float));
            }
        }
        float *const cache[2] = {keys[layer], values[layer]};
        struct attention a = {d, q, bias, cache, scores, attended, at + 1, capacity, bias_stride};
        run(attention_task, &a, rows * heads, shared);
        product(w[3], attended, rows, h, hidden, heads * dim, shared);
        for (size_t i = 0; i < (size_t)rows * hidden; i++) x[i] += h[i];
        for (int m = 0; m < rows; m++) rms_norm(x + (size_t)m * hidden, w[1], h + (size_t)m * hidden, hidden, d->eps);
        product(w[4], h, rows, gate_up, 2 * inner, hidden, shared);
        for (int m = 0; m < rows; m++) {
            const float *gu = gate_up + (size_t)m * 2 * inner;
            for (int i = 0; i < inner; i++) act[(size_t)m * inner + i] = gu[i] / (1.0f + expf(-gu[i])) * gu[inner + i];
        }
        product(w[5], act, rows, h, hidden, inner, shared);
        for (size_t i = 0; i < (size_t)rows * hidden; i++) x[i] += h[i];
    }
    for (int m = 0; m < rows; m++) rms_norm(x + (size_t)m * hidden, norm, h + (size_t)m * hidden, hidden, d->eps);
    product(head, h, rows, logits, d->vocab, hidden, shared);
    if (shared) pthread_mutex_unlock(&team.busy);
    return shared ? 0 : -1;
}

/* One decode step of dense ERNIE 4.5 for a lone sequence (batch 1), in float32, as one call:
 * RMSNorm, fused QKV, interleaved RoPE, GQA softmax attention over the KV cache, o-projection,
 * SwiGLU MLP, final norm and LM head, the weights' products split over a team of threads that
 * wait for the next product spinning (the gaps between products are microseconds).
 *
 * Why compiled (serve/engine/fused_decode.py has the figures): a lone sequence's step is bound by
 * memory bandwidth (every weight read once a token), and in numpy ~6% of it went to the small
 * operations between products (norms, RoPE, attention, SwiGLU, Python), with the memory idle,
 * and each product's thread hand-off cost microseconds more.
 *
 * The arithmetic is forward.py's `DenseForward.forward` (the tests hold the two together); the
 * layouts are its arrays': linear weights as [out, in] rows, the KV cache [kv_heads, capacity,
 * head_dim] a layer, keys stored rotated. Only the C library and POSIX threads; plain C vectors
 * (GCC / Clang vector extensions) in clones for AVX-512, AVX2 and baseline x86-64 chosen at load.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ABI 1 /* fused_decode.py checks it: a stale build is not used */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#include <immintrin.h>
#define RELAX() _mm_pause()
#else
#define CLONES
#define RELAX() ((void)0)
#endif

#define LANES 16
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
typedef float vec_u __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float))));
#define LOAD(p) (*(const vec_u *)(p))

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
#define SPIN_NS 2000000L /* 2 ms: past a token's gaps, short beside a scheduler's idle time */

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

/* Start the helpers (once; later calls return the count started). */
int ernie_fused_start(int helpers) {
    pthread_mutex_lock(&team.busy);
    if (team.helpers == 0) {
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

/* ---- kernels ---------------------------------------------------------------------------------- */

static inline float hsum(vec v) {
    float s = 0;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

/* y[r] = rows[r] . x for 4 rows of N (a stride apart), each weight read once */
CLONES static void dot4(const float *w, size_t stride, const float *x, int n, float *y) {
    vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES) {
        vec xv = LOAD(x + k);
        a0 += LOAD(w + k) * xv;
        a1 += LOAD(w + stride + k) * xv;
        a2 += LOAD(w + 2 * stride + k) * xv;
        a3 += LOAD(w + 3 * stride + k) * xv;
    }
    float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
    for (; k < n; k++)
        for (int r = 0; r < 4; r++) s[r] += w[r * stride + k] * x[k];
    memcpy(y, s, sizeof s);
}

CLONES static float dot(const float *a, const float *b, int n) {
    vec acc = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES) acc += LOAD(a + k) * LOAD(b + k);
    float s = hsum(acc);
    for (; k < n; k++) s += a[k] * b[k];
    return s;
}

/* out += p * v over N */
CLONES static void axpy(float p, const float *v, float *out, int n) {
    for (int k = 0; k < n; k++) out[k] += p * v[k];
}

#define ROWS_PER_TASK 64 /* 256 KB of a 1024-wide weight: thousands of tasks in the LM head */

struct product {
    const float *w, *x;
    float *y;
    int out, in;
};

static void product_task(const void *ctx, int task) {
    const struct product *p = ctx;
    int lo = task * ROWS_PER_TASK, hi = lo + ROWS_PER_TASK < p->out ? lo + ROWS_PER_TASK : p->out;
    int r = lo;
    for (; r + 4 <= hi; r += 4) dot4(p->w + (size_t)r * p->in, p->in, p->x, p->in, p->y + r);
    for (; r < hi; r++) p->y[r] = dot(p->w + (size_t)r * p->in, p->x, p->in);
}

/* y [out] = w [out, in] @ x [in] */
static void product(const float *w, const float *x, float *y, int out, int in, int shared) {
    struct product p = {w, x, y, out, in};
    run(product_task, &p, (out + ROWS_PER_TASK - 1) / ROWS_PER_TASK, shared);
}

/* out = x / sqrt(mean(x^2) + eps) * weight */
static void rms_norm(const float *x, const float *weight, float *out, int n, float eps) {
    float variance = dot(x, x, n) / (float)n;
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
    const float *q, *keys, *values, *bias;
    float *scores, *out;
    int length, capacity;
};

/* one query head over the cache's first LENGTH columns of its KV head */
static void attention_task(const void *ctx, int head) {
    const struct attention *a = ctx;
    int dim = a->d->head_dim, group = a->d->heads / a->d->kv_heads;
    size_t kv = (size_t)(head / group) * a->capacity * dim;
    const float *q = a->q + head * dim;
    float *scores = a->scores + (size_t)head * a->capacity, *out = a->out + head * dim;
    float top = -INFINITY, total = 0;
    for (int j = 0; j < a->length; j++) {
        scores[j] = dot(q, a->keys + kv + (size_t)j * dim, dim) + a->bias[j];
        top = scores[j] > top ? scores[j] : top;
    }
    for (int j = 0; j < a->length; j++) total += scores[j] = expf(scores[j] - top);
    memset(out, 0, dim * sizeof(float));
    for (int j = 0; j < a->length; j++) axpy(scores[j] / total, a->values + kv + (size_t)j * dim, out, dim);
}

int ernie_fused_abi(void) { return ABI; }

/* The scratch floats a step needs at CAPACITY cache columns. */
long ernie_fused_scratch(const struct dims *d, int capacity) {
    long qkv = (long)(d->heads + 2 * d->kv_heads) * d->head_dim;
    return 2L * d->hidden + 2 * qkv + (long)d->heads * d->head_dim + 3L * d->inner +
           (long)d->heads * capacity + d->head_dim;
}

/* One token: EMBEDDING (the token's row) at POSITION; its key and value written into column AT of
 * every layer's cache (keys[i], values[i]: [kv_heads, capacity, head_dim]); attention over columns
 * [0, AT] with the additive BIAS; the LM head's logits [vocab] into LOGITS. WEIGHTS: per layer
 * ln1, ln2, qkv, o, up_gate, down. Returns 0, or -1 when the team is busy with another caller's
 * step (the step then ran on this thread alone: still correct). */
int ernie_fused_step(const struct dims *d, const float *const *weights, const float *norm,
                     const float *head, const float *inv_freq, const float *embedding, float position,
                     float *const *keys, float *const *values, int capacity, int at, const float *bias,
                     float *scratch, float *logits) {
    int shared = pthread_mutex_trylock(&team.busy) == 0;
    int hidden = d->hidden, dim = d->head_dim, heads = d->heads, kv = d->kv_heads, inner = d->inner;
    int width = (heads + 2 * kv) * dim;
    float *x = scratch, *h = x + hidden, *qkv = h + hidden, *q = qkv + width, *attended = q + heads * dim,
          *gate_up = attended + heads * dim, *act = gate_up + 2 * inner, *scores = act + inner,
          *cs = scores + (size_t)heads * capacity;
    for (int i = 0; i < dim / 2; i++) {
        float angle = position * inv_freq[i];
        cs[2 * i] = cosf(angle), cs[2 * i + 1] = sinf(angle);
    }
    memcpy(x, embedding, hidden * sizeof(float));
    for (int layer = 0; layer < d->layers; layer++) {
        const float *const *w = weights + 6 * layer;
        rms_norm(x, w[0], h, hidden, d->eps);
        product(w[2], h, qkv, width, hidden, shared);
        size_t column = (size_t)at * dim;
        rope(qkv, cs, d->scale, q, heads, dim);
        for (int g = 0; g < kv; g++) {
            rope(qkv + (heads + g) * dim, cs, 1.0f, keys[layer] + (size_t)g * capacity * dim + column, 1, dim);
            memcpy(values[layer] + (size_t)g * capacity * dim + column, qkv + (heads + kv + g) * dim,
                   dim * sizeof(float));
        }
        struct attention a = {d, q, keys[layer], values[layer], bias, scores, attended, at + 1, capacity};
        run(attention_task, &a, heads, shared);
        product(w[3], attended, h, hidden, heads * dim, shared);
        for (int i = 0; i < hidden; i++) x[i] += h[i];
        rms_norm(x, w[1], h, hidden, d->eps);
        product(w[4], h, gate_up, 2 * inner, hidden, shared);
        for (int i = 0; i < inner; i++) {
            float gate = gate_up[i];
            act[i] = gate / (1.0f + expf(-gate)) * gate_up[inner + i];
        }
        product(w[5], act, h, hidden, inner, shared);
        for (int i = 0; i < hidden; i++) x[i] += h[i];
    }
    rms_norm(x, norm, h, hidden, d->eps);
    product(head, h, logits, d->vocab, hidden, shared);
    if (shared) pthread_mutex_unlock(&team.busy);
    return shared ? 0 : -1;
}

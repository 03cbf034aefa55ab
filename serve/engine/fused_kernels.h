/* The compiled decode step's kernels for one vector width, included by fused_decode.c once per
 * instruction set with LANES (floats a vector), XTILE (rows of x a tile: its accumulators are
 * 4 x XTILE vectors, within the set's registers) and NAME(x) (the set's suffix) defined. */

typedef float NAME(vec) __attribute__((vector_size(LANES * sizeof(float))));
typedef float NAME(vec_u) __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float))));
#define LOAD(p) (*(const NAME(vec_u) *)(p))

static inline float NAME(hsum)(NAME(vec) v) {
    float s = 0;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

/* y[m * ys + j] = x[m * n ..] . w[j * n ..] for XS rows of x and R rows of the weight (both N
 * wide): each weight vector loaded once for all XS rows. Constant R and XS (`product_rows`) unroll
 * it into R x XS vector accumulators. NEXT (or NULL): 4 weight rows to prefetch into L2 meanwhile. */
static inline __attribute__((always_inline)) void NAME(tile)(const float *w, const float *x, int n, float *y,
                                                             size_t ys, const int r, const int xs,
                                                             const float *next) {
    NAME(vec) acc[XTILE][4] = {{{0}}};
    int k = 0;
    for (; k + LANES <= n; k += LANES) {
        NAME(vec) wv[4];
        for (int j = 0; j < r; j++) wv[j] = LOAD(w + (size_t)j * n + k);
        if (next)
            for (int j = 0; j < 4; j++) __builtin_prefetch(next + (size_t)j * n + k, 0, 2);
        for (int m = 0; m < xs; m++) {
            NAME(vec) xv = LOAD(x + (size_t)m * n + k);
            for (int j = 0; j < r; j++) acc[m][j] += wv[j] * xv;
        }
    }
    for (int m = 0; m < xs; m++)
        for (int j = 0; j < r; j++) {
            float s = NAME(hsum)(acc[m][j]);
            for (int t = k; t < n; t++) s += w[(size_t)j * n + t] * x[(size_t)m * n + t];
            y[m * ys + j] = s;
        }
}

/* `tile` of R weight rows (a constant) against XS rows of x (1 to XTILE) */
static inline __attribute__((always_inline)) void NAME(tiles)(const float *w, const float *x, int n, float *y,
                                                              size_t ys, const int r, int xs, const float *next) {
    switch (xs) {
#if XTILE == 4
    case 4: NAME(tile)(w, x, n, y, ys, r, 4, next); break;
    case 3: NAME(tile)(w, x, n, y, ys, r, 3, next); break;
#endif
    case 2: NAME(tile)(w, x, n, y, ys, r, 2, next); break;
    default: NAME(tile)(w, x, n, y, ys, r, 1, next); break;
    }
}

/* columns [LO, HI) of y [rows, ys] = x [rows, n] @ w [out, n].T: 4 weight rows at a time against up
 * to XTILE rows of x. A weight row comes from memory once; for more rows of x it is read again from
 * the L1 / L2 cache, and those passes prefetch the next 4 weight rows into L2 (the memory would idle
 * through them otherwise: 8 rows' step 1.05-1.08x faster so, a lone row's unchanged). */
static void NAME(product_rows)(const float *w, const float *x, int rows, int n, float *y, size_t ys, int lo,
                               int hi) {
    for (int j = lo; j < hi;) {
        int four = hi - j >= 4;
        for (int m = 0; m < rows; m += XTILE) {
            const float *wj = w + (size_t)j * n, *xm = x + (size_t)m * n;
            const float *next = j + 8 <= hi && m > 0 ? wj + 4 * (size_t)n : NULL;
            int xs = rows - m >= XTILE ? XTILE : rows - m;
            if (four)
                NAME(tiles)(wj, xm, n, y + (size_t)m * ys + j, ys, 4, xs, next);
            else
                NAME(tiles)(wj, xm, n, y + (size_t)m * ys + j, ys, 1, xs, next);
        }
        j += four ? 4 : 1;
    }
}

static float NAME(dot)(const float *a, const float *b, int n) {
    NAME(vec) acc = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES) acc += LOAD(a + k) * LOAD(b + k);
    float s = NAME(hsum)(acc);
    for (; k < n; k++) s += a[k] * b[k];
    return s;
}

/* out += p * v over N */
static void NAME(axpy)(float p, const float *v, float *out, int n) {
    for (int k = 0; k < n; k++) out[k] += p * v[k];
}

static const struct kernels NAME(kernels) = {LANES * 32, NAME(product_rows), NAME(dot), NAME(axpy)};

#undef LOAD

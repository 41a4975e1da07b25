/* One compiled pass for the shard's SGD update, for bench.update_passes only (not a part of
 * the project): what a compiled kernel would save against the NumPy calls the shard makes.
 * Built at run time with the system's C compiler into a temporary folder; no Python headers. */
#include <stddef.h>
#include <stdint.h>

/* 1 when no value of g[0..n) is NaN or +-Inf (exponent bits all set), else 0. Reads only. */
int all_finite_f32(const float *restrict g, size_t n) {
    const uint32_t *bits = (const uint32_t *)g;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        uint32_t bad = 0;
        for (int j = 0; j < 64; j++) bad |= (bits[i + j] & 0x7f800000u) == 0x7f800000u;
        if (bad) return 0;
    }
    uint32_t bad = 0;
    for (; i < n; i++) bad |= (bits[i] & 0x7f800000u) == 0x7f800000u;
    return !bad;
}

/* w -= lr * g and out = w, in one pass over the three arrays (none may overlap). */
void sgd_update_f32(float *restrict w, const float *restrict g, size_t n, float lr, float *restrict out) {
    for (size_t i = 0; i < n; i++) {
        float v = w[i] - lr * g[i];
        w[i] = v;
        out[i] = v;
    }
}

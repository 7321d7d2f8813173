/* The decoder layer's elementwise steps, one pass over memory each instead of one torch op per
 * arithmetic step: residual add + RMSNorm, SiLU(gate) * up, and rotary embedding in place.
 * Float32 math on float32 or bfloat16 storage, in chunks of CHUNK values; in bfloat16, results
 * are rounded where torch's separate ops round, so both paths agree with the Hugging Face models.
 */
#include <math.h>
#include <stdint.h>

#include "rows.h"

#define CHUNK 256
/* Below this, one thread: a decode step's tensors (64 rows of 768-4096) are 15-80 us of work,
 * while a parallel region on cores shared with other processes waits for a descheduled sibling
 * thread (0.5-1.6 ms a call measured under load; 41 calls a decode step). Prefill chunks of
 * thousands of rows stay parallel. A/B on 64 mixed requests, alternated: 1.70-1.72x under load,
 * 1.03x near idle (bench/results/vllm_cpu.md). */
#define PARALLEL_MIN_ELEMENTS (1 << 20)

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* x [rows, width] (the residual stream, contiguous) += pending (same shape, or NULL); then
 * out = weight * (x / rms(x)). */
void add_rms_norm(void *x, const void *pending, const void *weight, void *out, int64_t rows,
                  int64_t width, float eps, int bf16, int num_threads) {
    const int64_t elem = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(num_threads) if (rows * width >= PARALLEL_MIN_ELEMENTS)
    for (int64_t r = 0; r < rows; r++) {
        float v[CHUNK], add[CHUNK], w[CHUNK];
        char *xr = (char *)x + r * width * elem;
        float sum = 0.0f;
        for (int64_t start = 0; start < width; start += CHUNK) {
            const int64_t n = min64(CHUNK, width - start);
            load_row(xr + start * elem, v, n, bf16);
            if (pending != NULL) {
                load_row((const char *)pending + (r * width + start) * elem, add, n, bf16);
                for (int64_t i = 0; i < n; i++) v[i] = round_to(v[i] + add[i], bf16);
                store_row(v, xr + start * elem, n, bf16);
            }
#pragma omp simd reduction(+ : sum)
            for (int64_t i = 0; i < n; i++) sum += v[i] * v[i];
        }
        const float scale = 1.0f / sqrtf(sum / (float)width + eps);
        for (int64_t start = 0; start < width; start += CHUNK) {
            const int64_t n = min64(CHUNK, width - start);
            load_row(xr + start * elem, v, n, bf16);
            load_row((const char *)weight + start * elem, w, n, bf16);
            for (int64_t i = 0; i < n; i++) v[i] = round_to(w[i] * round_to(v[i] * scale, bf16), bf16);
            store_row(v, (char *)out + (r * width + start) * elem, n, bf16);
        }
    }
}

static inline __attribute__((always_inline)) void silu_mul_row(const char *in, char *out,
                                                                int64_t width, int bf16) {
    const int64_t elem = bf16 ? 2 : 4;
    float gate[CHUNK], up[CHUNK];
    for (int64_t start = 0; start < width; start += CHUNK) {
        const int64_t n = min64(CHUNK, width - start);
        load_row(in + start * elem, gate, n, bf16);
        load_row(in + (width + start) * elem, up, n, bf16);
        for (int64_t i = 0; i < n; i++) {
            const float g = gate[i];
            gate[i] = round_to(round_to(g / (1.0f + expf(-g)), bf16) * up[i], bf16);
        }
        store_row(gate, out + start * elem, n, bf16);
    }
}

/* gate_up [rows, 2 * width] -> out [rows, width] = silu(gate) * up. */
void silu_mul(const void *gate_up, void *out, int64_t rows, int64_t width, int bf16,
              int num_threads) {
    const int64_t elem = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(num_threads) if (rows * width >= PARALLEL_MIN_ELEMENTS)
    for (int64_t r = 0; r < rows; r++) {
        const char *in = (const char *)gate_up + r * 2 * width * elem;
        char *o = (char *)out + r * width * elem;
        /* A constant flag: the float32 loop compiles to vector code (expf included). */
        bf16 ? silu_mul_row(in, o, width, 1) : silu_mul_row(in, o, width, 0);
    }
}

/* Rotate, in place, `heads` heads of head_dim values per row (row r starts at r * row_stride
 * elements): halves (a, b) -> (a cos - b sin, b cos + a sin), cos/sin [rows, head_dim / 2]. */
void rotate_halves(void *x, const void *cos, const void *sin, int64_t rows, int64_t heads,
                   int64_t head_dim, int64_t row_stride, int bf16, int num_threads) {
    const int64_t half = head_dim / 2, elem = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(num_threads) if (rows * heads * head_dim >= PARALLEL_MIN_ELEMENTS)
    for (int64_t r = 0; r < rows; r++) {
        float c[CHUNK], s[CHUNK], a[CHUNK], b[CHUNK];
        for (int64_t start = 0; start < half; start += CHUNK) {
            const int64_t n = min64(CHUNK, half - start);
            load_row((const char *)cos + (r * half + start) * elem, c, n, bf16);
            load_row((const char *)sin + (r * half + start) * elem, s, n, bf16);
            for (int64_t h = 0; h < heads; h++) {
                char *first = (char *)x + (r * row_stride + h * head_dim + start) * elem;
                char *second = first + half * elem;
                load_row(first, a, n, bf16);
                load_row(second, b, n, bf16);
                for (int64_t i = 0; i < n; i++) {
                    const float ac = round_to(a[i] * c[i], bf16), bs = round_to(b[i] * s[i], bf16);
                    const float bc = round_to(b[i] * c[i], bf16), as = round_to(a[i] * s[i], bf16);
                    a[i] = round_to(ac - bs, bf16);
                    b[i] = round_to(bc + as, bf16);
                }
                store_row(a, first, n, bf16);
                store_row(b, second, n, bf16);
            }
        }
    }
}

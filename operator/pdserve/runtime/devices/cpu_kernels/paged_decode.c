/* Paged decode attention for CPU: each decoding sequence's query attends over its context read
 * straight out of the paged KV cache (no gathered copy), one pass over K and V with an online
 * softmax per block. One task per sequence; the query heads of a KV group share each K/V row
 * read (grouped-query attention). Math in float32; float32 or bfloat16 storage.
 *
 * Layouts (contiguous): q, out [num_seqs, num_q_heads, head_dim];
 * k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim];
 * block_tables int64 [num_seqs, max_blocks]; context_lens int64 [num_seqs].
 * Returns 0, or 1 when a size is over the limits below (the caller checks them first).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "rows.h"

#define MAX_Q_HEADS 256
#define MAX_HEAD_DIM 512
#define MAX_Q_WIDTH 16384 /* query heads x head_dim (held on the stack twice) */
#define MAX_BLOCK_SIZE 128
#define MAX_SCORES 8192 /* query heads x block_size */

/* One sequence, every head: K/V blocks are read whole ([block_size, kv_heads, head_dim] is
 * contiguous), which the hardware prefetcher streams far better than one head's strided rows. */
static inline __attribute__((always_inline)) void attend_seq(const char *q, const char *k_cache, const char *v_cache,
                       const int64_t *blocks, int64_t length, char *out, int64_t num_q_heads,
                       int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale,
                       int64_t elem, int bf16) {
    float qf[MAX_Q_WIDTH], acc[MAX_Q_WIDTH], row[MAX_HEAD_DIM];
    float scores[MAX_SCORES], running_max[MAX_Q_HEADS], running_sum[MAX_Q_HEADS];
    const int64_t group = num_q_heads / num_kv_heads;
    const int64_t width = num_q_heads * head_dim, token_stride = num_kv_heads * head_dim;
    load_row(q, qf, width, bf16);
    for (int64_t i = 0; i < width; i++) qf[i] *= scale;
    memset(acc, 0, sizeof(float) * width);
    for (int64_t j = 0; j < num_q_heads; j++) {
        running_max[j] = -FLT_MAX; /* finite: built with -ffast-math */
        running_sum[j] = 0.0f;
    }
    for (int64_t start = 0; start < length; start += block_size) {
        const int64_t n = length - start < block_size ? length - start : block_size;
        const int64_t base = blocks[start / block_size] * block_size * token_stride * elem;
        if (start + block_size < length) { /* fetch the next block while this one is used */
            const int64_t next = blocks[start / block_size + 1] * block_size * token_stride * elem;
            for (int64_t b = 0; b < block_size * token_stride * elem; b += 64) {
                __builtin_prefetch(k_cache + next + b);
                __builtin_prefetch(v_cache + next + b);
            }
        }
        /* Both passes walk the block in memory order: token by token, every head's row. */
        for (int64_t t = 0; t < n; t++) { /* scores = q . k */
            const char *kt_row = k_cache + base + t * token_stride * elem;
            for (int64_t h = 0; h < num_kv_heads; h++) {
                const float *kt = as_float(kt_row + h * head_dim * elem, row, head_dim, bf16);
                for (int64_t j = h * group; j < (h + 1) * group; j++) {
                    const float *qj = qf + j * head_dim;
                    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                    for (int64_t d = 0; d < head_dim; d++) dot += qj[d] * kt[d];
                    scores[j * block_size + t] = dot;
                }
            }
        }
        for (int64_t j = 0; j < num_q_heads; j++) { /* online softmax: rescale what came before */
            float *sj = scores + j * block_size;
            float block_max = running_max[j];
            for (int64_t t = 0; t < n; t++) block_max = fmaxf(block_max, sj[t]);
            const float rescale = expf(running_max[j] - block_max);
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int64_t t = 0; t < n; t++) {
                sj[t] = expf(sj[t] - block_max);
                sum += sj[t];
            }
            running_sum[j] = running_sum[j] * rescale + sum;
            running_max[j] = block_max;
            float *aj = acc + j * head_dim;
            for (int64_t d = 0; d < head_dim; d++) aj[d] *= rescale;
        }
        for (int64_t t = 0; t < n; t++) { /* acc += p * v */
            const char *vt_row = v_cache + base + t * token_stride * elem;
            for (int64_t h = 0; h < num_kv_heads; h++) {
                const float *vt = as_float(vt_row + h * head_dim * elem, row, head_dim, bf16);
                for (int64_t j = h * group; j < (h + 1) * group; j++) {
                    const float p = scores[j * block_size + t];
                    float *aj = acc + j * head_dim;
#pragma omp simd
                    for (int64_t d = 0; d < head_dim; d++) aj[d] += p * vt[d];
                }
            }
        }
    }
    for (int64_t j = 0; j < num_q_heads; j++) {
        const float inv = running_sum[j] > 0.0f ? 1.0f / running_sum[j] : 0.0f;
        for (int64_t d = 0; d < head_dim; d++) acc[j * head_dim + d] *= inv;
    }
    store_row(acc, out, width, bf16);
}

int paged_decode(const void *q, const void *k_cache, const void *v_cache,
                 const int64_t *block_tables, const int64_t *context_lens, void *out,
                 int64_t num_seqs, int64_t num_q_heads, int64_t num_kv_heads, int64_t head_dim,
                 int64_t block_size, int64_t max_blocks, float scale, int bf16, int num_threads) {
    if (num_q_heads * block_size > MAX_SCORES || num_q_heads > MAX_Q_HEADS ||
        head_dim > MAX_HEAD_DIM || num_q_heads * head_dim > MAX_Q_WIDTH ||
        block_size > MAX_BLOCK_SIZE)
        return 1;
    const int64_t elem = bf16 ? 2 : 4;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t s = 0; s < num_seqs; s++) {
        const int64_t offset = s * num_q_heads * head_dim * elem;
/* Common head sizes run code compiled for their constant size (fully unrolled loops). */
#define ATTEND(HEAD_DIM, BF16)                                                                   \
    attend_seq((const char *)q + offset, (const char *)k_cache, (const char *)v_cache,          \
               block_tables + s * max_blocks, context_lens[s], (char *)out + offset,             \
               num_q_heads, num_kv_heads, HEAD_DIM, block_size, scale, (BF16) ? 2 : 4, BF16)
        if (head_dim == 64)
            bf16 ? ATTEND(64, 1) : ATTEND(64, 0);
        else if (head_dim == 128)
            bf16 ? ATTEND(128, 1) : ATTEND(128, 0);
        else
            ATTEND(head_dim, bf16);
    }
    return 0;
}

/* Rows of float32 or bfloat16 values, read and written as float32 (the kernels' math type). */
#ifndef PDSERVE_ROWS_H
#define PDSERVE_ROWS_H

#include <stdint.h>
#include <string.h>

/* Row of n elements (float32, or bfloat16 when bf16) -> float32. */
static inline void load_row(const void *src, float *dst, int64_t n, int bf16) {
    if (bf16) {
        const uint16_t *s = (const uint16_t *)src;
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)s[i] << 16;
            memcpy(&dst[i], &bits, sizeof bits);
        }
    } else {
        memcpy(dst, src, sizeof(float) * n);
    }
}

/* A float32 view of a row: the row itself, or for bfloat16 its conversion into buf. */
static inline const float *as_float(const char *src, float *buf, int64_t n, int bf16) {
    if (!bf16) return (const float *)src;
    load_row(src, buf, n, 1);
    return buf;
}

/* float32 row -> float32, or bfloat16 rounded to nearest even (as torch rounds). */
static inline void store_row(const float *src, void *dst, int64_t n, int bf16) {
    if (!bf16) {
        memcpy(dst, src, sizeof(float) * n);
        return;
    }
    uint16_t *d = (uint16_t *)dst;
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &src[i], sizeof bits);
        d[i] = (bits & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((bits >> 16) | 0x40u)
                                                  : (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    }
}

/* A float32 value rounded to bfloat16 precision when bf16 (torch rounds after every op). */
static inline float round_to(float value, int bf16) {
    if (!bf16) return value;
    uint16_t half;
    store_row(&value, &half, 1, 1);
    float out;
    load_row(&half, &out, 1, 1);
    return out;
}

#endif

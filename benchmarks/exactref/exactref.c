/* exactref: the exact table set of docs/FORMAT.md §7.3-§7.4 in C, written from that text alone
 * (a third implementation beside Python's runtime/exact.py and JavaScript's web/exact.js).
 *
 * Build: cc -O2 -std=c11 -ffp-contract=off -o exactref exactref.c
 * (-ffp-contract=off: no fused multiply-add, as §7.3 requires.)
 *
 * Usage: exactref BUCKET_BITS [INPUT]
 *   Prints "name = value" lines: each table's CRC-32 and the fingerprint (§7.3.8). With INPUT
 *   (written by benchmarks/exact_parity.py), also the CRC-32 of the per-symbol tables (§7.4) that
 *   a coder builds for those network outputs, in the order described at symbol_tables() below.
 *
 * INPUT, little-endian: int32 N, D, K, P; int32 mean_index[N][D], logvar_index[N][D];
 * int32 logit_index[N][K][P], mean_index[N][K][P], log_scale_index[N][K][P]; uint8 pixels[N][P].
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- CRC-32 (zlib's) ---- */
static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}
static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}
static uint32_t crc_i32(uint32_t crc, const int64_t *v, size_t n) { /* values as int32 LE */
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)(int32_t)v[i];
        uint8_t b[4] = {u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF, u >> 24};
        crc = crc32_update(crc, b, 4);
    }
    return crc;
}
static uint32_t crc_i64(uint32_t crc, const int64_t *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint64_t u = (uint64_t)v[i];
        uint8_t b[8];
        for (int k = 0; k < 8; k++) b[k] = (u >> (8 * k)) & 0xFF;
        crc = crc32_update(crc, b, 8);
    }
    return crc;
}

/* ---- §7.3.1 exp_exact ---- */
static const double INV_LN2 = 0x1.71547652b82fep+0, LN2_HI = 0x1.62e42feep-1, LN2_LO = 0x1.a39ef35793c76p-33;
static const double C[14] = {1.0, 1.0, 0.5, 0.16666666666666666, 0.041666666666666664, 0.008333333333333333,
                             0.001388888888888889, 0.0001984126984126984, 2.48015873015873e-05,
                             2.7557319223985893e-06, 2.755731922398589e-07, 2.505210838544172e-08,
                             2.08767569878681e-09, 1.6059043836821613e-10};
static double exp_exact(double x) {
    double k = floor(x * INV_LN2 + 0.5);
    double r = (x - k * LN2_HI) - k * LN2_LO;
    double p = C[13];
    for (int n = 12; n >= 0; n--) p = p * r + C[n];
    return ldexp(p, (int)k);
}

/* ---- §7.3.2 PHI and phi_lin ---- */
enum { PHI_CELLS = 69632 };
static const int64_t ORIGIN = 8912896, END = 17825792;
static const double SIMPSON_SCALE = 0x1.1058377e2cee0p-16;
static int64_t PHI[PHI_CELLS + 1];
static double xk(int64_t k) { return ((double)k - 34816.0) / 4096.0; }
static double dens(double x) { return exp_exact(-0.5 * (x * x)); }
static void build_phi(void) {
    double S = 0.0;
    for (int64_t k = 0; k <= PHI_CELLS; k++) {
        PHI[k] = (int64_t)floor((S * SIMPSON_SCALE) * 268435456.0 + 0.5);
        if (k < PHI_CELLS) {
            double x = xk(k), m = x + 1.0 / 8192.0;
            double s = (dens(x) + 4.0 * dens(m)) + dens(xk(k + 1));
            S = S + s;
        }
    }
}
static int64_t phi_lin(int64_t X) {
    if (X < 0) X = 0;
    if (X > END) X = END;
    int64_t c = X >> 8;
    if (c > PHI_CELLS - 1) c = PHI_CELLS - 1;
    int64_t r = X - 256 * c;
    return PHI[c] + ((PHI[c + 1] - PHI[c]) * r) / 256; /* non-negative: floor */
}

/* ---- §7.3.3 quantiles, edges, centres ---- */
static int64_t quantile(int64_t j, int L) {
    int64_t target = j << (28 - L), lo = 0, hi = END;
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (phi_lin(mid) >= target) hi = mid; else lo = mid + 1;
    }
    return lo;
}
static int64_t floor_shift(int64_t v, int s) { /* floor(v / 2^s) for any sign */
    return v >= 0 ? v >> s : -((-v + ((int64_t)1 << s) - 1) >> s);
}
static int64_t latent_of(int64_t X) {
    int64_t z = floor_shift(X - ORIGIN + 2048, 12);
    return z < -2048 ? -2048 : z > 2048 ? 2048 : z;
}

/* ---- §7.3.4-§7.3.6 ---- */
static int64_t SIGMA_INV[2049], WEIGHT[513];
static int64_t *G; /* [129][32][511] */
static void build_rest(void) {
    for (int l = 0; l <= 2048; l++) SIGMA_INV[l] = (int64_t)floor(exp_exact(12.0 - (double)l / 128.0) * 1048576.0 + 0.5);
    for (int d = 0; d <= 512; d++) {
        int64_t w = (int64_t)floor(exp_exact(-(double)d / 16.0) * 1073741824.0);
        WEIGHT[d] = w < 1 ? 1 : w;
    }
    G = malloc(sizeof(int64_t) * 129 * 32 * 511);
    for (int s = 0; s <= 128; s++) {
        double scale = exp_exact(-7.0 + (double)s / 16.0) * 127.5;
        for (int f = 0; f < 32; f++) {
            int64_t run = 0;
            for (int j = 0; j < 511; j++) {
                double t = ((((double)j - 255.0) + 0.5) - (double)f / 32.0) / scale;
                double u = -t;
                if (u < -64.0) u = -64.0;
                if (u > 64.0) u = 64.0;
                int64_t g = (int64_t)floor((1.0 / (1.0 + exp_exact(u))) * 16776960.0);
                if (j == 0 || g > run) run = g;
                G[(s * 32 + f) * 511 + j] = run;
            }
        }
    }
}

/* ---- §7.3.7 renorm: masses p (not p - 1) ---- */
enum { MAX_ROW = 299 }; /* the widest row here: 2^(b - b/2) <= 256 places */
static void renorm(const int64_t *c, int n, int64_t *p) { /* c[0..n] -> p[0..n-1], 2 <= n <= MAX_ROW */
    int64_t a[MAX_ROW + 1], T;
    if (n < 2 || n > MAX_ROW) { fprintf(stderr, "exactref: row of %d symbols\n", n); exit(2); }
    for (int i = 0; i <= n; i++) a[i] = c[i] - c[0];
    T = c[n] - c[0];
    if (T == 0) { for (int i = 0; i <= n; i++) a[i] = i; T = n; }
    int sh = 0;
    while ((T >> sh) >= ((int64_t)1 << 29)) sh++;
    for (int i = 0; i <= n; i++) a[i] >>= sh;
    T >>= sh;
    int64_t m = ((int64_t)1 << 24) - n, q_prev = 0;
    for (int i = 1; i <= n; i++) {
        int64_t q = (a[i] * m) / T;
        p[i - 1] = q - q_prev + 1;
        q_prev = q;
    }
}
static void categorical(const int64_t *w, int n, int64_t *p) {
    int64_t c[MAX_ROW + 1];
    c[0] = 0;
    for (int i = 0; i < n; i++) c[i + 1] = c[i] + w[i];
    renorm(c, n, p);
}

/* ---- §7.4 per-symbol tables ---- */
static int64_t level_cdf(int64_t u, int64_t s, int v) { /* C(v) of a component */
    if (v <= 0) return 0;
    if (v >= 256) return (int64_t)1 << 24;
    int64_t L = u / 32, f = u % 32;
    return G[(s * 32 + f) * 511 + (v - 1 - L + 255)] + v;
}

static int64_t *E, *centre, *group_centre;
static int B;

/* The tables a coder builds for one image, CRC'd as int32 masses in this order:
 * per latent dimension d: the posterior's stage 1 (2^(b/2) groups), then stage 2 of the mode's group;
 * per pixel p: if K > 1 the mixture weights (K) and the component posterior at the pixel's level
 * (K); then stage 1 (16 groups) and stage 2 (16 places, the level's group) of the first most
 * probable component. */
static uint32_t symbol_tables(uint32_t crc, int D, int K, int P, const int32_t *m, const int32_t *l,
                              const int32_t *a, const int32_t *u, const int32_t *s, const uint8_t *pix) {
    int half = B / 2, groups = 1 << half, fine = 1 << (B - half), buckets = 1 << B;
    int64_t cum[MAX_ROW + 1], p[MAX_ROW + 1];
    for (int d = 0; d < D; d++) {
        int64_t mu = (int64_t)m[d] * 1024, S = SIGMA_INV[l[d]];
        #define F(i) ((i) <= 0 ? PHI[0] : (i) >= buckets ? PHI[PHI_CELLS] \
                      : phi_lin(floor_shift((E[(i) - 1] - mu) * S, 20) + ORIGIN))
        for (int g = 0; g <= groups; g++) cum[g] = F(g * fine);
        renorm(cum, groups, p);
        crc = crc_i32(crc, p, groups);
        int64_t mode = 0;
        for (int i = 0; i < buckets - 1; i++) mode += E[i] <= mu;
        int64_t gamma = mode / fine;
        for (int i = 0; i <= fine; i++) cum[i] = F(gamma * fine + i);
        renorm(cum, fine, p);
        crc = crc_i32(crc, p, fine);
        #undef F
    }
    for (int q = 0; q < P; q++) {
        int v = pix[q], best = 0;
        if (K > 1) {
            int64_t top = a[q], w[16], joint[16];
            for (int k = 1; k < K; k++) if (a[k * P + q] > top) top = a[k * P + q];
            for (int k = 0; k < K; k++) {
                int64_t dd = top - a[k * P + q];
                w[k] = WEIGHT[dd > 512 ? 512 : dd];
            }
            categorical(w, K, p);
            crc = crc_i32(crc, p, K);
            int64_t wk[16];
            memcpy(wk, p, sizeof(int64_t) * K);
            for (int k = 0; k < K; k++) {
                joint[k] = wk[k] * (level_cdf(u[k * P + q], s[k * P + q], v + 1) - level_cdf(u[k * P + q], s[k * P + q], v));
                if (joint[k] > joint[best]) best = k;
            }
            categorical(joint, K, p);
            crc = crc_i32(crc, p, K);
        }
        int64_t uu = u[best * P + q], ss = s[best * P + q];
        for (int g = 0; g < 16; g++) p[g] = level_cdf(uu, ss, 16 * g + 16) - level_cdf(uu, ss, 16 * g);
        crc = crc_i32(crc, p, 16);
        int gamma = v / 16;
        for (int i = 0; i <= 16; i++) cum[i] = level_cdf(uu, ss, 16 * gamma + i);
        renorm(cum, 16, p);
        crc = crc_i32(crc, p, 16);
    }
    return crc;
}

static void *read_all(FILE *f, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (fread(p, 1, bytes, f) != bytes) { fprintf(stderr, "exactref: input is truncated\n"); exit(2); }
    return p;
}

int main(int argc, char **argv) {
    if (argc < 2 || (B = atoi(argv[1])) < 6 || B > 16) {
        fprintf(stderr, "usage: exactref BUCKET_BITS(6..16) [INPUT]\n");
        return 2;
    }
    crc_init();
    build_phi();
    build_rest();
    int nb = 1 << B, half = B / 2;
    E = malloc(sizeof(int64_t) * nb);
    centre = malloc(sizeof(int64_t) * nb);
    group_centre = malloc(sizeof(int64_t) * (1 << half));
    for (int i = 1; i < nb; i++) E[i - 1] = quantile(i, B) - ORIGIN;
    for (int i = 0; i < nb; i++) centre[i] = latent_of(quantile(2 * (int64_t)i + 1, B + 1));
    for (int g = 0; g < (1 << half); g++) group_centre[g] = latent_of(quantile(2 * (int64_t)g + 1, half + 1));
    uint32_t crcs[7] = {crc_i32(0, G, 129 * 32 * 511), crc_i32(0, WEIGHT, 513), crc_i64(0, SIGMA_INV, 2049),
                        crc_i32(0, PHI, PHI_CELLS + 1), crc_i32(0, E, nb - 1), crc_i32(0, centre, nb),
                        crc_i32(0, group_centre, 1 << half)};
    uint32_t fp = crc_i32(0, G, 129 * 32 * 511);
    fp = crc_i32(fp, WEIGHT, 513);
    fp = crc_i64(fp, SIGMA_INV, 2049);
    fp = crc_i32(fp, PHI, PHI_CELLS + 1);
    fp = crc_i32(fp, E, nb - 1);
    fp = crc_i32(fp, centre, nb);
    fp = crc_i32(fp, group_centre, 1 << half);
    const char *names[7] = {"G", "WEIGHT", "SIGMA_INV", "PHI", "E", "centre", "group_centre"};
    for (int i = 0; i < 7; i++) printf("crc(%s) = %u\n", names[i], crcs[i]);
    printf("fingerprint = %u\n", fp);
    if (argc > 2) {
        FILE *f = fopen(argv[2], "rb");
        if (!f) { fprintf(stderr, "exactref: cannot open %s\n", argv[2]); return 2; }
        int32_t *hdr = read_all(f, 16);
        int N = hdr[0], D = hdr[1], K = hdr[2], P = hdr[3];
        if (N < 0 || D < 1 || K < 1 || K > 16 || P < 1) { fprintf(stderr, "exactref: bad input sizes\n"); return 2; }
        int32_t *m = read_all(f, 4 * (size_t)N * D), *l = read_all(f, 4 * (size_t)N * D);
        int32_t *a = read_all(f, 4 * (size_t)N * K * P), *u = read_all(f, 4 * (size_t)N * K * P);
        int32_t *s = read_all(f, 4 * (size_t)N * K * P);
        uint8_t *pix = read_all(f, (size_t)N * P);
        fclose(f);
        uint32_t crc = 0;
        for (int n = 0; n < N; n++)
            crc = symbol_tables(crc, D, K, P, m + (size_t)n * D, l + (size_t)n * D, a + (size_t)n * K * P,
                                u + (size_t)n * K * P, s + (size_t)n * K * P, pix + (size_t)n * P);
        printf("images = %d\nsymbol tables crc = %u\n", N, crc);
    }
    return 0;
}

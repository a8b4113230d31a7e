/*
 * unit_codec.c -- unit tests for the value tree, the pickle codec and
 * framing.  Prints "N passed, M failed" last; exits non-zero on failure.
 *
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror \
 *       -o build/unit_codec test/unit_codec.c
 */
#define PF_NO_MAIN
#include "../pytest_fast.c"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>

static int passed, failed;

#define CHECK(cond) check_((cond), #cond, __LINE__)
#define CHECK_MSG(cond, ...) \
    (check_((cond), #cond, __LINE__) ? (void)0 : (void)fprintf(stderr, "    " __VA_ARGS__))

static bool check_(bool ok, const char *what, int line)
{
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL line %d: %s\n", line, what);
    }
    return ok;
}

/* ------------------------------------------------------------ helpers */

static char last_err[512];

static pf_value *decode_in(pf_arena *a, const void *p, size_t n)
{
    pf_value *v = NULL;
    if (pf_decode(a, p, n, &v, last_err, sizeof last_err) < 0)
        return NULL;
    return v;
}

/* A literal's bytes, without the terminating NUL. */
#define LIT(s) (const uint8_t *)(s), sizeof(s) - 1

/* Decode expecting failure with a reason that contains needle. */
static bool rejects(const void *p, size_t n, const char *needle)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *v = decode_in(a, p, n);
    bool ok = !v && last_err[0] && strstr(last_err, needle);
    if (!ok)
        fprintf(stderr, "    expected rejection containing \"%s\", got %s\"%s\"\n", needle,
                v ? "success, " : "", last_err);
    pf_arena_free(a);
    return ok;
}

static bool accepts(const void *p, size_t n)
{
    pf_arena *a = pf_arena_new(0);
    bool ok = decode_in(a, p, n) != NULL;
    if (!ok)
        fprintf(stderr, "    unexpected rejection: %s\n", last_err);
    pf_arena_free(a);
    return ok;
}

static pf_value *bigint(pf_arena *a, const char *le, size_t n)
{
    pf_value *v = pf_new_bytes(a, le, n);
    v->kind = PF_BIGINT;
    return v;
}

static pf_value *list_of(pf_arena *a, pf_kind kind, int n, ...)
{
    pf_value *c = pf_new_container(a, kind);
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        pf_value *item = va_arg(ap, pf_value *);
        if (kind == PF_DICT)
            pf_dict_set(a, c, item, va_arg(ap, pf_value *));
        else
            pf_append(a, c, item);
    }
    va_end(ap);
    return c;
}

/* Encode v, decode it, and check the copy is equal and re-encodes to the
 * same bytes. */
static bool roundtrip(const pf_value *v)
{
    pf_buf b1 = {0}, b2 = {0};
    pf_arena *a = pf_arena_new(0);
    bool ok = pf_encode(&b1, v) == 0;
    pf_value *w = ok ? decode_in(a, b1.data, b1.len) : NULL;
    ok = w && pf_value_equal(v, w) && pf_encode(&b2, w) == 0 && b1.len == b2.len &&
         memcmp(b1.data, b2.data, b1.len) == 0;
    if (!ok)
        fprintf(stderr, "    round trip failed: %s\n", w ? "values differ" : last_err);
    pf_buf_free(&b1);
    pf_buf_free(&b2);
    pf_arena_free(a);
    return ok;
}

static bool encodes_to(const pf_value *v, const void *want, size_t n)
{
    pf_buf b = {0};
    bool ok = pf_encode(&b, v) == 0 && b.len == n && memcmp(b.data, want, n) == 0;
    if (!ok) {
        fprintf(stderr, "    got");
        for (size_t i = 0; i < b.len; i++)
            fprintf(stderr, " %02x", b.data[i]);
        fprintf(stderr, "\n");
    }
    pf_buf_free(&b);
    return ok;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* Python-made pickles (see the comment above each for the value). */

/* pickle.dumps([1, 'a', (2, 3), {'k': None}, 2**70, -1.5, True, s, s], 2), s = ["s"] */
static const char py_p2[] =
    "\x80\x02\x5d\x71\x00\x28\x4b\x01\x58\x01\x00\x00\x00\x61\x71\x01"
    "\x4b\x02\x4b\x03\x86\x71\x02\x7d\x71\x03\x58\x01\x00\x00\x00\x6b"
    "\x71\x04\x4e\x73\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40\x47"
    "\xbf\xf8\x00\x00\x00\x00\x00\x00\x88\x5d\x71\x05\x58\x01\x00\x00"
    "\x00\x73\x71\x06\x61\x68\x05\x65\x2e";
/* pickle.dumps([b'xy', 'caf\u00e9', (), {1: 2}, -2**64], 3) */
static const char py_p3[] =
    "\x80\x03\x5d\x71\x00\x28\x43\x02\x78\x79\x71\x01\x58\x05\x00\x00"
    "\x00\x63\x61\x66\xc3\xa9\x71\x02\x29\x7d\x71\x03\x4b\x01\x4b\x02"
    "\x73\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xff\x65\x2e";
/* pickle.dumps({'set': {1, 2}, 'fs': frozenset({3}), 'l': [s, s],
 *               'u': '\U0001f600\udc80'}, 4), s = ["s"] */
static const char py_p4[] =
    "\x80\x04\x95\x3c\x00\x00\x00\x00\x00\x00\x00\x7d\x94\x28\x8c\x03"
    "\x73\x65\x74\x94\x8f\x94\x28\x4b\x01\x4b\x02\x90\x8c\x02\x66\x73"
    "\x94\x28\x4b\x03\x91\x94\x8c\x01\x6c\x94\x5d\x94\x28\x5d\x94\x8c"
    "\x01\x73\x94\x61\x68\x07\x65\x8c\x01\x75\x94\x8c\x07\xf0\x9f\x98"
    "\x80\xed\xb2\x80\x94\x75\x2e";
/* pickle.dumps([bytearray(b'ab'), b'cd', 1e100, None, (1, 2, 3, 4)], 5) */
static const char py_p5[] =
    "\x80\x05\x95\x2b\x00\x00\x00\x00\x00\x00\x00\x5d\x94\x28\x96\x02"
    "\x00\x00\x00\x00\x00\x00\x00\x61\x62\x94\x43\x02\x63\x64\x94\x47"
    "\x54\xb2\x49\xad\x25\x94\xc3\x7d\x4e\x28\x4b\x01\x4b\x02\x4b\x03"
    "\x4b\x04\x74\x94\x65\x2e";
/* pickle.dumps([1, 2**70, 1.5, 'a\u20ac', True, None, {'k': (1,)}], 0) */
static const char py_p0[] =
    "\x28\x6c\x70\x30\x0a\x49\x31\x0a\x61\x4c\x31\x31\x38\x30\x35\x39"
    "\x31\x36\x32\x30\x37\x31\x37\x34\x31\x31\x33\x30\x33\x34\x32\x34"
    "\x4c\x0a\x61\x46\x31\x2e\x35\x0a\x61\x56\x61\x5c\x75\x32\x30\x61"
    "\x63\x0a\x70\x31\x0a\x61\x49\x30\x31\x0a\x61\x4e\x61\x28\x64\x70"
    "\x32\x0a\x56\x6b\x0a\x70\x33\x0a\x28\x49\x31\x0a\x74\x70\x34\x0a"
    "\x73\x61\x2e";

static const struct {
    const char *data;
    size_t len;
} py_pickles[] = {
    {py_p0, sizeof py_p0 - 1}, {py_p2, sizeof py_p2 - 1}, {py_p3, sizeof py_p3 - 1},
    {py_p4, sizeof py_p4 - 1}, {py_p5, sizeof py_p5 - 1},
};

/* A value holding every kind, built through the public API. */
static pf_value *every_kind(pf_arena *a)
{
    static const char big[] = "\x00\x00\x00\x00\x00\x00\x00\x00\x40";     /* 2**70 */
    static const char neg[] = "\x00\x00\x00\x00\x00\x00\x00\x00\xff";     /* -2**64 */
    static const char lone[] = "\xed\xa0\x80 \xf0\x9f\x98\x80 \xc3\xa9"; /* U+D800, astral */
    char long_s[300], long_b[70000];
    memset(long_s, 'x', sizeof long_s);
    memset(long_b, 0xab, sizeof long_b);
    pf_value *ba = pf_new_bytes(a, "\x00\x01", 2);
    ba->kind = PF_BYTEARRAY;
    pf_value *empty_ba = pf_new_bytes(a, "", 0);
    empty_ba->kind = PF_BYTEARRAY;
    pf_value *big_long = pf_new_bytes(a, long_b, 300);
    big_long->u.s.ptr[299] = 0x7f; /* positive, so already minimal */
    big_long->kind = PF_BIGINT;
    pf_value *l = pf_new_container(a, PF_LIST);
    pf_value *items[] = {
        pf_new_none(a), pf_new_bool(a, true), pf_new_bool(a, false), pf_new_int(a, 0),
        pf_new_int(a, 255), pf_new_int(a, 256), pf_new_int(a, 65535), pf_new_int(a, 65536),
        pf_new_int(a, -1), pf_new_int(a, INT32_MIN), pf_new_int(a, INT32_MAX),
        pf_new_int(a, (int64_t)INT32_MAX + 1), pf_new_int(a, (int64_t)INT32_MIN - 1),
        pf_new_int(a, INT64_MAX), pf_new_int(a, INT64_MIN), bigint(a, big, 9), bigint(a, neg, 9),
        big_long, pf_new_float(a, 1.5), pf_new_float(a, -0.0), pf_new_float(a, NAN),
        pf_new_float(a, INFINITY), pf_new_float(a, -INFINITY), pf_new_float(a, 5e-324),
        pf_new_cstr(a, ""), pf_new_cstr(a, "ascii"), pf_new_str(a, lone, sizeof lone - 1),
        pf_new_str(a, long_s, sizeof long_s), pf_new_bytes(a, "", 0),
        pf_new_bytes(a, "\x00\xff", 2), pf_new_bytes(a, long_b, sizeof long_b), ba, empty_ba,
        pf_new_container(a, PF_TUPLE),
        list_of(a, PF_TUPLE, 1, pf_new_int(a, 1)),
        list_of(a, PF_TUPLE, 2, pf_new_int(a, 1), pf_new_int(a, 2)),
        list_of(a, PF_TUPLE, 3, pf_new_int(a, 1), pf_new_int(a, 2), pf_new_int(a, 3)),
        list_of(a, PF_TUPLE, 4, pf_new_int(a, 1), pf_new_int(a, 2), pf_new_int(a, 3),
                pf_new_int(a, 4)),
        pf_new_container(a, PF_LIST), pf_new_container(a, PF_DICT), pf_new_container(a, PF_SET),
        pf_new_container(a, PF_FROZENSET),
        list_of(a, PF_DICT, 2, pf_new_cstr(a, "k"), pf_new_none(a),
                list_of(a, PF_TUPLE, 2, pf_new_int(a, 1), pf_new_cstr(a, "t")),
                list_of(a, PF_LIST, 1, pf_new_container(a, PF_DICT))),
        list_of(a, PF_SET, 3, pf_new_int(a, 1), pf_new_cstr(a, "s"),
                list_of(a, PF_FROZENSET, 1, pf_new_int(a, 2))),
        list_of(a, PF_FROZENSET, 2, pf_new_int(a, 7), pf_new_cstr(a, "f")),
    };
    for (size_t i = 0; i < sizeof items / sizeof *items; i++)
        pf_append(a, l, items[i]);
    return l;
}

static pf_value *nested_lists(pf_arena *a, int depth)
{
    pf_value *v = pf_new_container(a, PF_LIST);
    for (int i = 1; i < depth; i++)
        v = list_of(a, PF_LIST, 1, v);
    return v;
}

/* "\x80\x04" + k EMPTY_LISTs + (k - 1) APPENDs + STOP: k nested lists. */
static uint8_t *nested_pickle(size_t k, size_t *len)
{
    uint8_t *p = malloc(2 * k + 3);
    size_t n = 0;
    p[n++] = 0x80;
    p[n++] = 4;
    memset(p + n, ']', k), n += k;
    memset(p + n, 'a', k - 1), n += k - 1;
    p[n++] = '.';
    *len = n;
    return p;
}

/* ------------------------------------------------------- value tree */

static void test_arena(void)
{
    pf_arena *a = pf_arena_new(0);
    CHECK(pf_arena_used(a) == 0);
    CHECK(pf_new_int(a, 1) != NULL);
    CHECK(pf_arena_used(a) > 0);
    char *big = malloc(1 << 20);
    memset(big, 'z', 1 << 20);
    pf_value *s = pf_new_str(a, big, 1 << 20);
    CHECK(s && s->u.s.len == 1u << 20 && s->u.s.ptr[1 << 20] == '\0');
    CHECK(pf_arena_used(a) >= 1u << 20);
    pf_arena_free(a);
    pf_arena_free(NULL);
    CHECK(pf_arena_used(NULL) == 0);

    a = pf_arena_new(16 * 1024);
    int made = 0;
    while (pf_new_int(a, made) && made < 100000)
        made++;
    CHECK(made > 10 && made < 100000);
    CHECK(errno == E2BIG);
    CHECK(pf_arena_used(a) <= 16 * 1024);
    CHECK(pf_new_str(a, big, 1 << 20) == NULL);
    pf_arena_free(a);
    free(big);
}

static void test_values_api(void)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *d = pf_new_container(a, PF_DICT);
    CHECK(pf_dict_set(a, d, pf_new_cstr(a, "name"), pf_new_cstr(a, "x")) == 0);
    CHECK(pf_dict_set(a, d, pf_new_cstr(a, "n"), pf_new_int(a, 7)) == 0);
    CHECK(pf_dict_set(a, d, pf_new_cstr(a, "name"), pf_new_cstr(a, "y")) == 0);
    CHECK(d->u.seq.len == 2);
    CHECK(pf_dict_str(d, "name") && strcmp(pf_dict_str(d, "name"), "y") == 0);
    int64_t n = 0;
    CHECK(pf_dict_int(d, "n", &n) && n == 7);
    CHECK(!pf_dict_int(d, "name", &n));
    CHECK(pf_dict_str(d, "n") == NULL);
    CHECK(pf_dict_get(d, "missing") == NULL);
    CHECK(pf_dict_get(pf_new_int(a, 1), "n") == NULL);
    CHECK(pf_dict_get(NULL, "n") == NULL);
    for (int i = 0; i < 100; i++)
        CHECK(pf_dict_set(a, d, pf_new_int(a, i), pf_new_int(a, i * i)) == 0);
    CHECK(d->u.seq.len == 102 && d->u.seq.cap >= 102);
    CHECK(d->u.seq.items[2 * 101 + 1]->u.i == 99 * 99);

    pf_value *l = pf_new_container(a, PF_LIST);
    for (int i = 0; i < 1000; i++)
        CHECK(pf_append(a, l, pf_new_int(a, i)) == 0);
    CHECK(l->u.seq.len == 1000 && l->u.seq.items[999]->u.i == 999);
    CHECK(pf_is_seq(l) && pf_is_seq(pf_new_container(a, PF_TUPLE)));
    CHECK(!pf_is_seq(d) && !pf_is_seq(NULL) && !pf_is_seq(pf_new_container(a, PF_SET)));
    errno = 0;
    CHECK(pf_append(a, d, l) == -1 && errno == EINVAL);
    CHECK(pf_append(a, pf_new_int(a, 1), l) == -1);
    CHECK(pf_dict_set(a, l, l, l) == -1 && errno == EINVAL);
    CHECK(pf_new_container(a, PF_STR) == NULL && errno == EINVAL);
    CHECK(pf_new_cstr(a, NULL) != NULL);
    CHECK(pf_new_str(a, NULL, 3) == NULL);
    pf_arena_free(a);
}

static void test_equal(void)
{
    pf_arena *a = pf_arena_new(0);
    CHECK(pf_value_equal(pf_new_float(a, NAN), pf_new_float(a, NAN)));
    CHECK(!pf_value_equal(pf_new_float(a, 0.0), pf_new_float(a, -0.0)));
    CHECK(!pf_value_equal(pf_new_int(a, 1), pf_new_bool(a, true)));
    CHECK(!pf_value_equal(pf_new_int(a, 1), pf_new_float(a, 1.0)));
    CHECK(pf_value_equal(pf_new_cstr(a, "ab"), pf_new_str(a, "ab", 2)));
    CHECK(!pf_value_equal(pf_new_cstr(a, "ab"), pf_new_bytes(a, "ab", 2)));
    CHECK(!pf_value_equal(pf_new_cstr(a, "ab"), pf_new_cstr(a, "abc")));
    CHECK(pf_value_equal(every_kind(a), every_kind(a)));
    pf_value *t1 = list_of(a, PF_TUPLE, 2, pf_new_int(a, 1), pf_new_int(a, 2));
    pf_value *t2 = list_of(a, PF_TUPLE, 2, pf_new_int(a, 2), pf_new_int(a, 1));
    CHECK(!pf_value_equal(t1, t2));
    t2->kind = PF_LIST;
    CHECK(!pf_value_equal(t1, t2));
    CHECK(pf_value_equal(NULL, NULL) && !pf_value_equal(t1, NULL));
    CHECK(pf_value_equal(nested_lists(a, 200), nested_lists(a, 200)));
    CHECK(!pf_value_equal(nested_lists(a, 201), nested_lists(a, 201))); /* too deep to tell */
    pf_value *cyc1 = pf_new_container(a, PF_LIST), *cyc2 = pf_new_container(a, PF_LIST);
    pf_append(a, cyc1, cyc1);
    pf_append(a, cyc2, cyc2);
    CHECK(!pf_value_equal(cyc1, cyc2)); /* terminates */
    pf_arena_free(a);
}

static void test_buf(void)
{
    pf_buf b = {0};
    CHECK(pf_buf_put(&b, "ab", 2) == 0 && b.len == 2);
    CHECK(pf_buf_printf(&b, "%d-%s", 42, "x") == 0 && b.len == 6);
    CHECK(memcmp(b.data, "ab42-x", 6) == 0 && b.data[6] == '\0');
    CHECK(pf_buf_reserve(&b, 1000) == 0 && b.cap >= 1006);
    CHECK(pf_buf_put(&b, NULL, 0) == 0 && b.len == 6);
    CHECK(pf_buf_reserve(&b, SIZE_MAX) == -1 && errno == ENOMEM);
    pf_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
}

/* ------------------------------------------------------------ encoder */

static void test_encode_exact(void)
{
    pf_arena *a = pf_arena_new(0);
    CHECK(encodes_to(pf_new_none(a), LIT("\x80\x04N.")));
    CHECK(encodes_to(pf_new_bool(a, true), LIT("\x80\x04\x88.")));
    CHECK(encodes_to(pf_new_bool(a, false), LIT("\x80\x04\x89.")));
    CHECK(encodes_to(pf_new_int(a, 255), LIT("\x80\x04K\xff.")));
    CHECK(encodes_to(pf_new_int(a, 256), LIT("\x80\x04M\x00\x01.")));
    CHECK(encodes_to(pf_new_int(a, 65536), LIT("\x80\x04J\x00\x00\x01\x00.")));
    CHECK(encodes_to(pf_new_int(a, -1), LIT("\x80\x04J\xff\xff\xff\xff.")));
    CHECK(encodes_to(pf_new_int(a, (int64_t)1 << 31), LIT("\x80\x04\x8a\x05\x00\x00\x00\x80\x00.")));
    CHECK(encodes_to(pf_new_int(a, INT64_MIN),
                     LIT("\x80\x04\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.")));
    CHECK(encodes_to(bigint(a, "\x00\x00\x00\x00\x00\x00\x00\x00\x40", 9),
                     LIT("\x80\x04\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40.")));
    CHECK(encodes_to(pf_new_float(a, 1.5), LIT("\x80\x04G\x3f\xf8\x00\x00\x00\x00\x00\x00.")));
    CHECK(encodes_to(pf_new_cstr(a, "a"), LIT("\x80\x04\x8c\x01\x61.")));
    CHECK(encodes_to(pf_new_bytes(a, "a", 1), LIT("\x80\x04\x43\x01\x61.")));
    pf_value *ba = pf_new_bytes(a, "a", 1);
    ba->kind = PF_BYTEARRAY;
    CHECK(encodes_to(ba, LIT("\x80\x04\x96\x01\x00\x00\x00\x00\x00\x00\x00\x61.")));
    CHECK(encodes_to(pf_new_container(a, PF_TUPLE), LIT("\x80\x04).")));
    CHECK(encodes_to(list_of(a, PF_TUPLE, 1, pf_new_none(a)), LIT("\x80\x04N\x85.")));
    CHECK(encodes_to(list_of(a, PF_TUPLE, 4, pf_new_none(a), pf_new_none(a), pf_new_none(a),
                             pf_new_none(a)),
                     LIT("\x80\x04(NNNNt.")));
    CHECK(encodes_to(pf_new_container(a, PF_LIST), LIT("\x80\x04].")));
    CHECK(encodes_to(list_of(a, PF_LIST, 2, pf_new_none(a), pf_new_none(a)), LIT("\x80\x04](NNe.")));
    CHECK(encodes_to(list_of(a, PF_DICT, 1, pf_new_none(a), pf_new_none(a)), LIT("\x80\x04}(NNu.")));
    CHECK(encodes_to(list_of(a, PF_SET, 1, pf_new_none(a)), LIT("\x80\x04\x8f(N\x90.")));
    CHECK(encodes_to(pf_new_container(a, PF_FROZENSET), LIT("\x80\x04(\x91.")));

    /* Long forms. */
    char s[300];
    memset(s, 's', sizeof s);
    pf_buf b = {0};
    CHECK(pf_encode(&b, pf_new_str(a, s, 300)) == 0 && b.data[2] == 'X' && b.len == 2 + 5 + 300 + 1);
    b.len = 0;
    CHECK(pf_encode(&b, pf_new_bytes(a, s, 300)) == 0 && b.data[2] == 'B');
    b.len = 0;
    CHECK(pf_encode(&b, bigint(a, s, 300)) == 0 && b.data[2] == 0x8b);

    /* Failure leaves the buffer as it was. */
    b.len = 0;
    CHECK(pf_buf_put(&b, "keep", 4) == 0);
    errno = 0;
    CHECK(pf_encode(&b, nested_lists(a, 201)) == -1 && errno == ELOOP && b.len == 4);
    CHECK(pf_encode(&b, nested_lists(a, 200)) == 0 && b.len == 4 + 2 + 200 + 199 * 2 + 1);
    pf_value *cyc = pf_new_container(a, PF_LIST);
    pf_append(a, cyc, cyc);
    b.len = 0;
    CHECK(pf_encode(&b, cyc) == -1 && errno == ELOOP && b.len == 0);
    pf_value *bad = pf_new_none(a);
    bad->kind = (pf_kind)99;
    CHECK(pf_encode(&b, bad) == -1 && errno == EINVAL);
    pf_buf_free(&b);
    pf_arena_free(a);
}

static void test_roundtrip_kinds(void)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *all = every_kind(a);
    CHECK(roundtrip(all));
    for (size_t i = 0; i < all->u.seq.len; i++)
        CHECK_MSG(roundtrip(all->u.seq.items[i]), "item %zu\n", i);
    CHECK(roundtrip(nested_lists(a, 200)));

    /* Shared references (a DAG) are written out twice and come back equal. */
    pf_value *shared = list_of(a, PF_LIST, 1, pf_new_cstr(a, "x"));
    CHECK(roundtrip(list_of(a, PF_LIST, 3, shared, shared, list_of(a, PF_TUPLE, 1, shared))));
    pf_arena_free(a);
}

/* ------------------------------------------------------------ decoder */

static void test_python_pickles(void)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *v = decode_in(a, py_p2, sizeof py_p2 - 1);
    CHECK(v && v->kind == PF_LIST && v->u.seq.len == 9);
    if (v && v->u.seq.len == 9) {
        pf_value **it = v->u.seq.items;
        CHECK(it[0]->kind == PF_INT && it[0]->u.i == 1);
        CHECK(it[1]->kind == PF_STR && strcmp(it[1]->u.s.ptr, "a") == 0);
        CHECK(it[2]->kind == PF_TUPLE && it[2]->u.seq.len == 2);
        CHECK(it[3]->kind == PF_DICT && pf_dict_get(it[3], "k")->kind == PF_NONE);
        CHECK(it[4]->kind == PF_BIGINT && it[4]->u.s.len == 9 &&
              memcmp(it[4]->u.s.ptr, "\x00\x00\x00\x00\x00\x00\x00\x00\x40", 9) == 0);
        CHECK(it[5]->kind == PF_FLOAT && it[5]->u.f == -1.5);
        CHECK(it[6]->kind == PF_BOOL && it[6]->u.b);
        CHECK(it[7] == it[8] && it[7]->kind == PF_LIST); /* memo: the same object */
    }
    v = decode_in(a, py_p3, sizeof py_p3 - 1);
    CHECK(v && v->u.seq.len == 5);
    if (v && v->u.seq.len == 5) {
        CHECK(v->u.seq.items[0]->kind == PF_BYTES && v->u.seq.items[0]->u.s.len == 2);
        CHECK(strcmp(v->u.seq.items[1]->u.s.ptr, "caf\xc3\xa9") == 0);
        CHECK(v->u.seq.items[2]->kind == PF_TUPLE && v->u.seq.items[2]->u.seq.len == 0);
        CHECK(v->u.seq.items[4]->kind == PF_BIGINT); /* -2**64 */
    }
    v = decode_in(a, py_p4, sizeof py_p4 - 1);
    CHECK(v && v->kind == PF_DICT && v->u.seq.len == 4);
    if (v && v->kind == PF_DICT) {
        CHECK(pf_dict_get(v, "set")->kind == PF_SET && pf_dict_get(v, "set")->u.seq.len == 2);
        CHECK(pf_dict_get(v, "fs")->kind == PF_FROZENSET);
        const pf_value *l = pf_dict_get(v, "l");
        CHECK(l && l->u.seq.len == 2 && l->u.seq.items[0] == l->u.seq.items[1]);
        CHECK(pf_dict_str(v, "u") && strcmp(pf_dict_str(v, "u"), "\xf0\x9f\x98\x80\xed\xb2\x80") == 0);
    }
    v = decode_in(a, py_p5, sizeof py_p5 - 1);
    CHECK(v && v->u.seq.len == 5);
    if (v && v->u.seq.len == 5) {
        CHECK(v->u.seq.items[0]->kind == PF_BYTEARRAY);
        CHECK(v->u.seq.items[2]->u.f == 1e100);
        CHECK(v->u.seq.items[4]->kind == PF_TUPLE && v->u.seq.items[4]->u.seq.len == 4);
    }
    v = decode_in(a, py_p0, sizeof py_p0 - 1);
    CHECK(v && v->u.seq.len == 7);
    if (v && v->u.seq.len == 7) {
        CHECK(v->u.seq.items[1]->kind == PF_BIGINT);
        CHECK(v->u.seq.items[2]->u.f == 1.5);
        CHECK(strcmp(v->u.seq.items[3]->u.s.ptr, "a\xe2\x82\xac") == 0);
        CHECK(v->u.seq.items[4]->kind == PF_BOOL && v->u.seq.items[4]->u.b);
        CHECK(v->u.seq.items[6]->kind == PF_DICT);
    }
    /* The text and binary spellings of the same ints agree. */
    pf_value *p2 = decode_in(a, py_p2, sizeof py_p2 - 1);
    CHECK(p2 && v && pf_value_equal(p2->u.seq.items[4], v->u.seq.items[1]));
    pf_arena_free(a);
}

static void test_memo(void)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *v = decode_in(a, LIT("\x80\x04](]\x94h\x00h\x00" "e."));
    CHECK(v && v->u.seq.len == 3 && v->u.seq.items[0] == v->u.seq.items[2]);
    /* MEMOIZE stores at len(memo), which counts entries, not the top index. */
    v = decode_in(a, LIT("\x80\x04(NNNNNNNNq\x03K\x07\x94h\x01h\x03t."));
    CHECK(v && v->u.seq.len == 11 && v->u.seq.items[9]->u.i == 7 &&
          v->u.seq.items[10]->kind == PF_NONE);
    /* PUT may overwrite. */
    v = decode_in(a, LIT("\x80\x04(K\x01q\x00K\x02q\x00h\x00t."));
    CHECK(v && v->u.seq.items[2]->u.i == 2);
    /* Text PUT/GET. */
    v = decode_in(a, LIT("(lp0\nVabc\np1\nag1\na."));
    CHECK(v && v->u.seq.len == 2 && v->u.seq.items[0] == v->u.seq.items[1]);
    pf_arena_free(a);

    CHECK(rejects(LIT("\x80\x04j\xff\xff\xff\xff."), "LONG_BINGET"));
    CHECK(rejects(LIT("\x80\x04j\xff\xff\xff\xff."), "not found"));
    CHECK(rejects(LIT("\x80\x04Nr\xff\xff\xff\xff."), "LONG_BINPUT"));
    CHECK(rejects(LIT("\x80\x04Nr\xff\xff\xff\xff."), "out of range"));
    CHECK(rejects(LIT("Np99999999999\n."), "out of range"));
    CHECK(rejects(LIT("Np9999999999999999999999\n."), "malformed memo index"));
    CHECK(rejects(LIT("Npx\n."), "malformed memo index"));
    CHECK(rejects(LIT("\x80\x04h\x00."), "not found"));
    CHECK(rejects(LIT("\x80\x04\x94."), "stack underflow"));
    CHECK(rejects(LIT("\x80\x04(q\x00."), "stack underflow")); /* nothing above the MARK */
    /* A few indices ahead are tolerated, far ahead are not, and never one
       past the input's length.  (The N/0 pairs only pad the input.) */
    static const char near[] = "\x80\x04NNNNNNNNNNNNNNNN0000000000000000Nq\x0fh\x0f\x86.";
    CHECK(accepts(near, sizeof near - 1));
    static const char far[] = "\x80\x04NNNNNNNNNNNNNNNN0000000000000000Nq\x10h\x10\x86.";
    CHECK(rejects(far, sizeof far - 1, "memo index 16 out of range (0 entries so far)"));
    CHECK(rejects(LIT("\x80\x04Nq\x0f" "0."), "memo index 15 out of range")); /* 15 >= length 8 */
}

static void test_cycles(void)
{
    CHECK(rejects(LIT("\x80\x04]\x94h\x00" "a."), "cycle"));                  /* l.append(l) */
    CHECK(rejects(LIT("\x80\x04]2a."), "cycle"));                          /* via DUP */
    CHECK(rejects(LIT("\x80\x04}\x94K\x01h\x00s."), "cycle"));             /* d[1] = d */
    CHECK(rejects(LIT("\x80\x04]\x94h\x00\x85\x94" "a."), "cycle"));          /* l = [(l,)] */
    CHECK(rejects(LIT("\x80\x04]\x94]\x94h\x00" "aa."), "cycle"));            /* a=[b], b=[a] */
    CHECK(rejects(LIT("\x80\x04]\x94(]\x94h\x01h\x00" "e\x94h\x00" "a."), "cycle"));
    /* A DAG is not a cycle. */
    CHECK(accepts(LIT("\x80\x04](]\x94h\x00h\x00" "e.")));
}

static void test_forbidden(void)
{
    static const struct {
        uint8_t op;
        const char *name;
    } ops[] = {
        {'c', "GLOBAL"},   {0x93, "STACK_GLOBAL"}, {'R', "REDUCE"},      {'b', "BUILD"},
        {'i', "INST"},     {'o', "OBJ"},           {0x81, "NEWOBJ"},     {0x92, "NEWOBJ_EX"},
        {0x82, "EXT1"},    {0x83, "EXT2"},         {0x84, "EXT4"},       {'P', "PERSID"},
        {'Q', "BINPERSID"}, {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"},
    };
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        uint8_t p[] = {0x80, 4, ops[i].op, 'x', '\n', 'y', '\n', '.'};
        CHECK_MSG(rejects(p, sizeof p, ops[i].name), "%s\n", ops[i].name);
        CHECK_MSG(rejects(p, sizeof p, "refused"), "%s\n", ops[i].name);
        /* Also when the stack holds what the opcode would use. */
        uint8_t q[] = {0x80, 4, 0x8c, 1, 'm', 0x8c, 1, 'n', ')', ops[i].op, '.'};
        CHECK_MSG(rejects(q, sizeof q, ops[i].name), "%s after operands\n", ops[i].name);
    }
    CHECK(rejects(LIT("\x80\x02" "cbuiltins\neval\n."), "GLOBAL at offset 2: refused (builtins.eval)"));
    CHECK(rejects(LIT("\x80\x04\x8c\x08" "builtins\x8c\x04""eval\x93."), "(builtins.eval)"));
    /* Protocol 2 spells bytes as _codecs.encode(...) -- a global. */
    CHECK(rejects(LIT("\x80\x02" "c_codecs\nencode\nq\x00X\x03\x00\x00\x00""abcq\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04."),
                  "GLOBAL at offset 2: refused (_codecs.encode)"));
    CHECK(rejects(LIT("\x80\x02U\x03""abc."), "SHORT_BINSTRING"));
    CHECK(rejects(LIT("\x80\x02T\x03\x00\x00\x00""abc."), "BINSTRING"));
    CHECK(rejects(LIT("S'abc'\n."), "STRING"));
    CHECK(rejects(LIT("S'abc'\n."), "Python 2 str"));

    int unknown = 0;
    for (int op = 0; op < 256; op++) {
        if (codec_opnames[op])
            continue;
        uint8_t p[] = {0x80, 4, (uint8_t)op, '.'};
        char want[40];
        snprintf(want, sizeof want, "opcode 0x%02x at offset 2: unknown", op);
        CHECK_MSG(rejects(p, sizeof p, want), "0x%02x\n", op);
        unknown++;
    }
    CHECK(unknown == 256 - 68);
}

static void test_depth(void)
{
    size_t n;
    uint8_t *p = nested_pickle(200, &n);
    pf_arena *a = pf_arena_new(0);
    pf_value *v = decode_in(a, p, n);
    CHECK(v && pf_value_equal(v, nested_lists(a, 200)));
    pf_arena_free(a);
    free(p);
    p = nested_pickle(201, &n);
    CHECK(rejects(p, n, "nested deeper than 200"));
    free(p);
    p = nested_pickle(1000000, &n);
    CHECK(rejects(p, n, "nested deeper than 200"));
    free(p);

    /* MARKs: 200 nested LIST constructions are fine, a 201st MARK is not. */
    uint8_t m[2 + 201 + 201 + 1];
    m[0] = 0x80, m[1] = 4;
    memset(m + 2, '(', 200);
    memset(m + 202, 'l', 200);
    m[402] = '.';
    CHECK(accepts(m, 403));
    memset(m + 2, '(', 201);
    memset(m + 203, 'l', 201);
    m[404] = '.';
    CHECK(rejects(m, 405, "MARKs nested deeper than 200"));

    /* Nested tuples are refused as they are built: () in 199 1-tuples is
       200 deep, in 200 it is too deep. */
    uint8_t *t = malloc(100004);
    t[0] = 0x80, t[1] = 4, t[2] = ')';
    memset(t + 3, 0x85, 100000);
    t[202] = '.';
    CHECK(accepts(t, 203));
    t[202] = 0x85, t[203] = '.';
    CHECK(rejects(t, 204, "TUPLE1 at offset 202: containers nested deeper than 200"));
    t[203] = 0x85, t[100003] = '.';
    CHECK(rejects(t, 100004, "TUPLE1 at offset 202: containers nested deeper than 200"));
    free(t);

    /* Depth that only shows once the graph is complete: E is put 60 deep
       first, then a 150-deep list is appended to E. */
    pf_buf b = {0};
    pf_buf_put(&b, "\x80\x04]]\x94" "a", 6); /* R = [E], memo 0 = E */
    for (int i = 0; i < 60; i++)
        pf_buf_put(&b, "]", 1);
    pf_buf_put(&b, "h\x00", 2);
    for (int i = 0; i < 61; i++)
        pf_buf_put(&b, "a", 1); /* W60.append(E) ... R.append(W1) */
    pf_buf_put(&b, "h\x00", 2);
    for (int i = 0; i < 150; i++)
        pf_buf_put(&b, "]", 1);
    for (int i = 0; i < 149; i++)
        pf_buf_put(&b, "a", 1);
    pf_buf_put(&b, "a0.", 3); /* E.append(D); pop E */
    CHECK(rejects(b.data, b.len, "containers nested deeper than 200"));
    pf_buf_free(&b);
}

static void test_lengths(void)
{
    CHECK(rejects(LIT("\x80\x04X\x00\x00\x00\x80""abc."), "BINUNICODE at offset 2: length 2147483648 exceeds"));
    CHECK(rejects(LIT("\x80\x04\x42\x00\x00\x00\x80""abc."), "BINBYTES at offset 2: length 2147483648 exceeds"));
    CHECK(rejects(LIT("\x80\x04\x8d\x00\x00\x00\x00\x00\x01\x00\x00""abc."), "BINUNICODE8 at offset 2: length 1099511627776"));
    CHECK(rejects(LIT("\x80\x04\x8e\x00\x00\x00\x80\x00\x00\x00\x00""abc."), "BINBYTES8 at offset 2: length 2147483648"));
    CHECK(rejects(LIT("\x80\x04\x96\x00\x00\x00\x00\x00\x01\x00\x00""abc."), "BYTEARRAY8 at offset 2: length 1099511627776"));
    CHECK(rejects(LIT("\x80\x04\x96\xff\xff\xff\xff\xff\xff\xff\xff."), "exceeds"));
    CHECK(rejects(LIT("\x80\x04\x8c\x05""ab."), "SHORT_BINUNICODE at offset 2: length 5 exceeds the 3 bytes left"));
    CHECK(rejects(LIT("\x80\x04\x43\x05""ab."), "SHORT_BINBYTES"));
    CHECK(rejects(LIT("\x80\x04\x8a\x05""ab."), "LONG1"));
    CHECK(rejects(LIT("\x80\x04\x8b\xff\xff\xff\x7f""ab."), "LONG4 at offset 2: length 2147483647 exceeds"));
    CHECK(rejects(LIT("\x80\x04\x8b\xff\xff\xff\xff""ab."), "LONG4 at offset 2: negative length"));
    CHECK(rejects(LIT("\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x40N."), "FRAME at offset 2: length 4611686018427387904 exceeds"));
    CHECK(accepts(LIT("\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00N.")));

    /* Too large to be a frame: refused before the bytes are looked at. */
    size_t big = (size_t)PF_MAX_FRAME + 1;
    uint8_t *huge = malloc(big);
    if (huge) {
        CHECK(rejects(huge, big, "larger than"));
        free(huge);
    }
    CHECK(rejects("", 0, "empty pickle"));
    pf_value *v;
    pf_arena *a = pf_arena_new(0);
    CHECK(pf_decode(a, NULL, 3, &v, last_err, sizeof last_err) == -1 && errno == EINVAL);
    CHECK(pf_decode(NULL, (const uint8_t *)"N.", 2, &v, NULL, 0) == -1);
    CHECK(pf_decode(a, (const uint8_t *)"N.", 2, &v, NULL, 0) == 0 && v->kind == PF_NONE);
    char tiny[8];
    CHECK(pf_decode(a, (const uint8_t *)"\x80\x04\xff.", 4, &v, tiny, sizeof tiny) == -1 &&
          strlen(tiny) == 7);
    pf_arena_free(a);
}

static void test_alloc_budget(void)
{
    /* A limit the caller set is kept. */
    pf_buf b = {0};
    pf_buf_put(&b, "\x80\x04](", 4);
    for (int i = 0; i < 5000; i++) {
        uint8_t j[5] = {'J', (uint8_t)i, (uint8_t)(i >> 8), 1, 0};
        pf_buf_put(&b, j, 5);
    }
    pf_buf_put(&b, "e.", 2);
    pf_arena *a = pf_arena_new(64 * 1024);
    CHECK(decode_in(a, b.data, b.len) == NULL && strstr(last_err, "allocation limit exceeded"));
    CHECK(pf_arena_used(a) <= 64 * 1024);
    pf_arena_free(a);

    /* The budget counts from what the arena held at entry, and the arena
       is unlimited again afterwards. */
    a = pf_arena_new(0);
    char *filler = calloc(1, 8 << 20);
    CHECK(pf_new_bytes(a, filler, 8 << 20) != NULL);
    size_t before = pf_arena_used(a);
    CHECK(decode_in(a, b.data, b.len) != NULL);
    CHECK(pf_arena_used(a) - before <= b.len * PF_DECODE_FACTOR + PF_DECODE_SLACK);
    CHECK(pf_new_bytes(a, filler, 8 << 20) != NULL);
    free(filler);
    pf_arena_free(a);
    pf_buf_free(&b);

    /* The densest inputs stay within the budget. */
    static const char *const dense[] = {"]", "}", "\x8f", ")", "N", "K\x01", "\x8c\x01x", "(\x91"};
    for (size_t k = 0; k < sizeof dense / sizeof *dense; k++) {
        b.len = 0;
        pf_buf_put(&b, "\x80\x04(", 3);
        for (int i = 0; i < 200000; i++)
            pf_buf_put(&b, dense[k], strlen(dense[k]));
        pf_buf_put(&b, "l.", 2);
        a = pf_arena_new(0);
        CHECK_MSG(decode_in(a, b.data, b.len) != NULL, "%s: %s\n", dense[k], last_err);
        CHECK(pf_arena_used(a) <= b.len * PF_DECODE_FACTOR + PF_DECODE_SLACK);
        pf_arena_free(a);
    }
    /* Empty lists appended one by one (the list grows by doubling). */
    b.len = 0;
    pf_buf_put(&b, "\x80\x04]", 3);
    for (int i = 0; i < 200000; i++)
        pf_buf_put(&b, "]a", 2);
    pf_buf_put(&b, ".", 1);
    a = pf_arena_new(0);
    CHECK(decode_in(a, b.data, b.len) != NULL);
    CHECK(pf_arena_used(a) <= b.len * PF_DECODE_FACTOR + PF_DECODE_SLACK);
    pf_arena_free(a);
    pf_buf_free(&b);
}

static void test_truncation(void)
{
    pf_arena *a = pf_arena_new(0);
    pf_buf enc = {0};
    CHECK(pf_encode(&enc, every_kind(a)) == 0);
    struct {
        const uint8_t *p;
        size_t n;
    } cases[8];
    size_t nc = 0;
    for (size_t i = 0; i < sizeof py_pickles / sizeof *py_pickles; i++)
        cases[nc].p = (const uint8_t *)py_pickles[i].data, cases[nc++].n = py_pickles[i].len;
    cases[nc].p = enc.data, cases[nc++].n = enc.len;
    for (size_t c = 0; c < nc; c++) {
        int bad = 0;
        for (size_t n = 0; n < cases[c].n; n++) {
            /* A copy of exactly n bytes, so ASan sees any read past it. */
            uint8_t *copy = malloc(n ? n : 1);
            memcpy(copy, cases[c].p, n);
            pf_value *v;
            pf_arena *t = pf_arena_new(0);
            if (pf_decode(t, copy, n, &v, last_err, sizeof last_err) == 0 || !last_err[0])
                bad++;
            pf_arena_free(t);
            free(copy);
        }
        CHECK_MSG(bad == 0, "case %zu: %d prefixes accepted\n", c, bad);
        CHECK(accepts(cases[c].p, cases[c].n));
    }
    pf_buf_free(&enc);
    pf_arena_free(a);
}

static void test_dicts_and_sets(void)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *v = decode_in(a, LIT("\x80\x04}(K\x01K\x02K\x01K\x03u."));
    CHECK(v && v->u.seq.len == 1 && v->u.seq.items[1]->u.i == 3); /* last value wins */
    v = decode_in(a, LIT("\x80\x04}(K\x01K\x02\x86NK\x01K\x02\x86K\x05u."));
    CHECK(v && v->u.seq.len == 1 && v->u.seq.items[1]->u.i == 5); /* equal tuple keys */
    v = decode_in(a, LIT("\x80\x04}(K\x01N\x88NG\x3f\xf0\x00\x00\x00\x00\x00\x00Nu."));
    CHECK(v && v->u.seq.len == 3); /* 1, True and 1.0 are different kinds here */
    v = decode_in(a, LIT("\x80\x04\x8f(K\x01K\x01K\x02\x90(K\x02K\x03\x90."));
    CHECK(v && v->kind == PF_SET && v->u.seq.len == 3);
    v = decode_in(a, LIT("\x80\x04(K\x01K\x01\x91."));
    CHECK(v && v->kind == PF_FROZENSET && v->u.seq.len == 1);
    v = decode_in(a, LIT("\x80\x04}(\x8c\x01k\x8c\x01v\x8c\x01k\x8c\x02v2u."));
    CHECK(v && v->u.seq.len == 1 && strcmp(pf_dict_str(v, "k"), "v2") == 0);

    /* 10^5 distinct keys, then 10^5 copies of one key: both fast. */
    for (int dup = 0; dup < 2; dup++) {
        pf_buf b = {0};
        pf_buf_put(&b, "\x80\x04}(", 4);
        for (int i = 0; i < 100000; i++) {
            int k = dup ? 7 : i;
            uint8_t j[6] = {'J', (uint8_t)k, (uint8_t)(k >> 8), (uint8_t)(k >> 16), 0, 'N'};
            pf_buf_put(&b, j, 6);
        }
        pf_buf_put(&b, "u.", 2);
        double t0 = now_s();
        v = decode_in(a, b.data, b.len);
        double dt = now_s() - t0;
        CHECK(v && v->u.seq.len == (dup ? 1u : 100000u));
        /* ~0.05s normally; a quadratic dict would take minutes.  The bound
           is loose for sanitizers, valgrind and busy machines. */
        CHECK_MSG(dt < 5.0, "%.3fs for 10^5 dict items\n", dt);
        pf_buf_free(&b);
    }
    pf_buf sb = {0};
    pf_buf_put(&sb, "\x80\x04\x8f(", 4);
    for (int i = 0; i < 100000; i++) {
        uint8_t j[5] = {'J', (uint8_t)(i % 5000), (uint8_t)((i % 5000) >> 8), 0, 0};
        pf_buf_put(&sb, j, 5);
    }
    pf_buf_put(&sb, "\x90.", 2);
    v = decode_in(a, sb.data, sb.len);
    CHECK(v && v->kind == PF_SET && v->u.seq.len == 5000);
    pf_buf_free(&sb);
    pf_arena_free(a);

    CHECK(rejects(LIT("\x80\x04}]Ns."), "unhashable list as a dict key"));
    CHECK(rejects(LIT("\x80\x04}}Ns."), "unhashable dict as a dict key"));
    CHECK(rejects(LIT("\x80\x04}\x8fNs."), "unhashable set as a dict key"));
    CHECK(rejects(LIT("\x80\x04}\x96\x00\x00\x00\x00\x00\x00\x00\x00Ns."), "unhashable bytearray"));
    CHECK(rejects(LIT("\x80\x04}]\x85Ns."), "unhashable tuple as a dict key"));
    CHECK(rejects(LIT("\x80\x04\x8f(]\x90."), "unhashable list as a set item"));
    CHECK(rejects(LIT("\x80\x04(}\x91."), "unhashable dict as a frozenset item"));
    CHECK(rejects(LIT("\x80\x04(K\x01" "d."), "odd number"));
    CHECK(accepts(LIT("\x80\x04}(\x91Ns.")));                  /* frozenset key */
    CHECK(accepts(LIT("\x80\x04}K\x01K\x02\x86\x85Ns.")));   /* nested tuple key */
    CHECK(accepts(LIT("\x80\x04(K\x01\x85N\x8c\x01sC\x01" "b\x91."))); /* mixed frozenset */
}

static void test_utf8(void)
{
    CHECK(accepts(LIT("\x80\x04\x8c\x03\xed\xa0\x80.")));         /* lone high surrogate */
    CHECK(accepts(LIT("\x80\x04\x8c\x06\xed\xa0\xbd\xed\xb8\x80."))); /* a pair, kept as two */
    CHECK(accepts(LIT("\x80\x04\x8c\x04\xf4\x8f\xbf\xbf.")));     /* U+10FFFF */
    CHECK(accepts(LIT("\x80\x04\x8c\x02\xdf\xbf.")));
    static const char *const bad[] = {
        "\xff", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf", "\xf0\x80\x80\x80",
        "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xe2\x82", "\x80", "a\xc3",
        "\xc3\x28", "\xed\xa0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint8_t p[16] = {0x80, 4, 0x8c, (uint8_t)strlen(bad[i])};
        memcpy(p + 4, bad[i], strlen(bad[i]));
        p[4 + strlen(bad[i])] = '.';
        CHECK_MSG(rejects(p, 5 + strlen(bad[i]), "invalid UTF-8"), "case %zu\n", i);
    }
    /* Bytes are not text. */
    CHECK(accepts(LIT("\x80\x04\x43\x02\xff\xfe.")));
}

static void test_ints(void)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *v;
#define INT_IS(lit, want) (v = decode_in(a, LIT(lit)), v && v->kind == PF_INT && v->u.i == (want))
    CHECK(INT_IS("\x80\x04\x8a\x00.", 0));
    CHECK(INT_IS("\x80\x04\x8a\x01\xff.", -1));
    CHECK(INT_IS("\x80\x04\x8a\x09\x05\x00\x00\x00\x00\x00\x00\x00\x00.", 5)); /* not minimal */
    CHECK(INT_IS("\x80\x04\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff.", -1));
    CHECK(INT_IS("\x80\x04\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.", INT64_MIN));
    CHECK(INT_IS("\x80\x04\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f.", INT64_MAX));
    CHECK(INT_IS("\x80\x04\x8b\x02\x00\x00\x00\x34\x12.", 0x1234));
    CHECK(INT_IS("\x80\x04J\xff\xff\xff\xff.", -1));
    CHECK(INT_IS("\x80\x04M\xff\xff.", 65535));
    CHECK(INT_IS("I-9223372036854775808\n.", INT64_MIN));
    CHECK(INT_IS("I0\n.", 0));
    CHECK(INT_IS("I+12\n.", 12));
    CHECK(INT_IS("L-5L\n.", -5));
    CHECK(INT_IS("L42\n.", 42));
    v = decode_in(a, LIT("I01\n."));
    CHECK(v && v->kind == PF_BOOL && v->u.b);
    v = decode_in(a, LIT("I00\n."));
    CHECK(v && v->kind == PF_BOOL && !v->u.b);
    /* 2**63 needs nine bytes. */
    v = decode_in(a, LIT("\x80\x04\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00."));
    CHECK(v && v->kind == PF_BIGINT && v->u.s.len == 9);
    pf_value *w = decode_in(a, LIT("L9223372036854775808L\n."));
    CHECK(w && pf_value_equal(v, w));
    w = decode_in(a, LIT("I9223372036854775808\n."));
    CHECK(w && pf_value_equal(v, w));
    /* -2**63 - 1, and a non-minimal negative bigint. */
    v = decode_in(a, LIT("L-9223372036854775809\n."));
    w = decode_in(a, LIT("\x80\x04\x8a\x0b\xff\xff\xff\xff\xff\xff\xff\x7f\xff\xff\xff."));
    CHECK(v && w && v->kind == PF_BIGINT && pf_value_equal(v, w) && w->u.s.len == 9);
    /* 10**40 in text and in binary. */
    v = decode_in(a, LIT("L10000000000000000000000000000000000000000L\n."));
    w = decode_in(a, LIT("\x80\x04\x8a\x11\x00\x00\x00\x00\x00\x61\xf5\xb9\xab\xbf\xa4\x5c\xc3\xf1\x29\x63\x1d."));
    CHECK(v && w && pf_value_equal(v, w));
    pf_arena_free(a);
#undef INT_IS

    char digits[4400];
    digits[0] = 'L';
    memset(digits + 1, '9', 4300);
    memcpy(digits + 4301, "\n.", 2);
    CHECK(accepts(digits, 4303));
    memset(digits + 1, '9', 4301);
    memcpy(digits + 4302, "\n.", 2);
    CHECK(rejects(digits, 4304, "malformed integer"));
    CHECK(rejects(LIT("I010\n."), "malformed integer"));
    CHECK(rejects(LIT("I0x10\n."), "malformed integer"));
    CHECK(rejects(LIT("I\n."), "malformed integer"));
    CHECK(rejects(LIT("I-\n."), "malformed integer"));
    CHECK(rejects(LIT("I 1\n."), "malformed integer"));
    CHECK(rejects(LIT("I1"), "no newline"));
}

static void test_text_opcodes(void)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *v;
    v = decode_in(a, LIT("F1.5\n."));
    CHECK(v && v->kind == PF_FLOAT && v->u.f == 1.5);
    v = decode_in(a, LIT("F-2.5e-3\n."));
    CHECK(v && v->u.f == -2.5e-3);
    v = decode_in(a, LIT("Fnan\n."));
    CHECK(v && isnan(v->u.f));
    v = decode_in(a, LIT("F-inf\n."));
    CHECK(v && isinf(v->u.f) && v->u.f < 0);
    v = decode_in(a, LIT("F1e400\n."));
    CHECK(v && isinf(v->u.f));
    v = decode_in(a, LIT("F-0.0\n."));
    CHECK(v && v->u.f == 0 && signbit(v->u.f));
    CHECK(rejects(LIT("F0x1p3\n."), "malformed float"));
    CHECK(rejects(LIT("F1.5x\n."), "malformed float"));
    CHECK(rejects(LIT("Fnan(1)\n."), "malformed float"));
    CHECK(rejects(LIT("F.\n."), "malformed float"));
    CHECK(rejects(LIT("F1e\n."), "malformed float"));
    CHECK(rejects(LIT("F\n."), "malformed float"));

    v = decode_in(a, LIT("Va\\u20ac\\U0001F600\\ud800\xe9\\x\\\\u0041\n."));
    CHECK(v && v->kind == PF_STR &&
          strcmp(v->u.s.ptr, "a\xe2\x82\xac\xf0\x9f\x98\x80\xed\xa0\x80\xc3\xa9\\x\\\\u0041") == 0);
    v = decode_in(a, LIT("Vend\\\n."));
    CHECK(v && strcmp(v->u.s.ptr, "end\\") == 0);
    CHECK(rejects(LIT("V\\u12\n."), "\\u escape"));
    CHECK(rejects(LIT("V\\u12zz\n."), "\\u escape"));
    CHECK(rejects(LIT("V\\U00110000\n."), "out of range"));
    CHECK(rejects(LIT("Vabc"), "no newline"));

    /* A protocol-0 container soup. */
    v = decode_in(a, LIT("(lp0\n(dp1\nVk\np2\n(I1\nI2\ntp3\nsag3\nag2\na."));
    CHECK(v && v->kind == PF_LIST && v->u.seq.len == 3 && v->u.seq.items[0]->kind == PF_DICT);
    CHECK(v && v->u.seq.items[1] == pf_dict_get(v->u.seq.items[0], "k"));
    pf_arena_free(a);
}

static void test_stack_rules(void)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *v = decode_in(a, LIT("\x80\x04](K\x01\x32\x30(K\x02\x31K\x03\x32" "e."));
    CHECK(v && v->u.seq.len == 3 && v->u.seq.items[0]->u.i == 1 && v->u.seq.items[2]->u.i == 3);
    /* POP with nothing above the MARK drops the MARK, like CPython. */
    v = decode_in(a, LIT("\x80\x04N(0."));
    CHECK(v && v->kind == PF_NONE);
    v = decode_in(a, LIT("\x80\x04(l."));
    CHECK(v && v->kind == PF_LIST && v->u.seq.len == 0);
    v = decode_in(a, LIT("\x80\x04(t."));
    CHECK(v && v->kind == PF_TUPLE && v->u.seq.len == 0);
    pf_arena_free(a);

    CHECK(rejects(LIT("\x80\x04N.N"), "1 bytes after STOP"));
    CHECK(rejects(LIT("\x80\x04NN."), "2 items and 0 MARKs"));
    CHECK(rejects(LIT("\x80\x04(N."), "1 items and 1 MARKs"));
    CHECK(rejects(LIT("\x80\x04."), "0 items"));
    CHECK(rejects(LIT("\x80\x04N"), "truncated: no STOP"));
    CHECK(rejects(LIT("\x80\x04" "0."), "stack underflow"));
    CHECK(rejects(LIT("\x80\x04" "1."), "no MARK"));
    CHECK(rejects(LIT("\x80\x04" "2."), "stack underflow"));
    CHECK(rejects(LIT("\x80\x04(2."), "stack underflow"));
    CHECK(rejects(LIT("\x80\x04N\x86."), "TUPLE2 at offset 3: stack underflow"));
    CHECK(rejects(LIT("\x80\x04]Ns."), "stack underflow"));
    CHECK(rejects(LIT("\x80\x04)Na."), "target is a tuple, not a list"));
    CHECK(rejects(LIT("\x80\x04]NNs."), "not a dict"));
    CHECK(rejects(LIT("\x80\x04](N\x90."), "target is a list, not a set"));
    CHECK(rejects(LIT("\x80\x04(Ne."), "no list below the MARK"));
    CHECK(rejects(LIT("\x80\x04]((Ne."), "no list below the MARK"));
    CHECK(rejects(LIT("\x80\x04t."), "no MARK"));
    CHECK(rejects(LIT("\x80\x06N."), "unsupported protocol 6"));
    CHECK(accepts(LIT("\x80\x05N.")));
    CHECK(accepts(LIT("N.")));
    CHECK(accepts(LIT("\x80\x02\x80\x04N."))); /* PROTO may repeat */
}

/* ------------------------------------------------------------ framing */

static int sockpair(int sv[2])
{
    return socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void test_frame_basic(void)
{
    int sv[2];
    CHECK(sockpair(sv) == 0);
    CHECK(pf_frame_write(sv[0], "hello", 5, NULL, 0) == 0);
    CHECK(pf_frame_write(sv[0], NULL, 0, NULL, 0) == 0);
    pf_arena *a = pf_arena_new(0);
    CHECK(pf_send_value(sv[0], every_kind(a)) == 0);
    pf_reader r;
    pf_reader_init(&r);
    CHECK(pf_read_frame(&r, sv[1], 1000) == PF_READ_FRAME);
    CHECK(r.need == 5 && memcmp(r.body.data, "hello", 5) == 0 && r.nfds == 0);
    CHECK(pf_read_frame(&r, sv[1], 1000) == PF_READ_FRAME); /* still the same frame */
    CHECK(pf_reader_feed(&r, sv[1]) == PF_READ_FRAME);
    pf_reader_reset(&r);
    CHECK(pf_read_frame(&r, sv[1], 1000) == PF_READ_FRAME);
    CHECK(r.need == 0 && r.body.data != NULL);
    pf_reader_reset(&r);
    CHECK(pf_read_frame(&r, sv[1], 1000) == PF_READ_FRAME);
    pf_value *v = decode_in(a, r.body.data, r.need);
    CHECK(v && pf_value_equal(v, every_kind(a)));
    pf_reader_reset(&r);
    close(sv[0]);
    CHECK(pf_read_frame(&r, sv[1], 1000) == PF_READ_EOF);
    CHECK(pf_reader_feed(&r, sv[1]) == PF_READ_EOF);
    pf_reader_free(&r);
    close(sv[1]);
    pf_arena_free(a);

    /* Argument checks. */
    int fds[PF_MAX_FDS + 1] = {0};
    CHECK(pf_frame_write(1, "x", (size_t)PF_MAX_FRAME + 1, NULL, 0) == -1 && errno == EMSGSIZE);
    CHECK(pf_frame_write(1, "x", 1, fds, PF_MAX_FDS + 1) == -1 && errno == EINVAL);
    CHECK(pf_frame_write(1, "x", 1, NULL, 1) == -1 && errno == EINVAL);
    CHECK(pf_frame_write(1, NULL, 1, NULL, 0) == -1 && errno == EINVAL);
    CHECK(pf_frame_write(-1, "x", 1, NULL, 0) == -1 && errno == EBADF);
    int closed = dup(1);
    close(closed);
    pf_reader_init(&r);
    CHECK(pf_read_frame(&r, closed, 10) == PF_READ_ERROR && errno == EBADF);
    pf_reader_free(&r);
}

/* Bytes dribbled in one at a time, read with a non-blocking fd. */
static void test_frame_fragmented(void)
{
    int sv[2];
    CHECK(sockpair(sv) == 0);
    set_nonblock(sv[1]);
    pf_reader r;
    pf_reader_init(&r);
    CHECK(pf_reader_feed(&r, sv[1]) == PF_READ_AGAIN);
    uint8_t frame[4 + 300];
    frame[0] = 0, frame[1] = 0, frame[2] = 1, frame[3] = 44;
    for (int i = 0; i < 300; i++)
        frame[4 + i] = (uint8_t)(i * 7);
    int again = 0, got = 0;
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof frame; i++) {
            CHECK(write(sv[0], frame + i, 1) == 1);
            int rc = pf_reader_feed(&r, sv[1]);
            if (i + 1 < sizeof frame)
                again += rc == PF_READ_AGAIN;
            else
                got += rc == PF_READ_FRAME;
        }
        CHECK(r.need == 300 && memcmp(r.body.data, frame + 4, 300) == 0);
        pf_reader_reset(&r);
    }
    CHECK(again == 2 * (int)(sizeof frame - 1) && got == 2);
    CHECK(pf_reader_feed(&r, sv[1]) == PF_READ_AGAIN);
    pf_reader_free(&r);
    close(sv[0]);
    close(sv[1]);
}

static volatile sig_atomic_t ticks;

static void on_alarm(int sig)
{
    (void)sig;
    ticks++;
}

/* Reading and writing with a signal interrupting every 200us. */
static void test_frame_eintr(void)
{
    struct sigaction sa = {0}, old;
    sa.sa_handler = on_alarm; /* no SA_RESTART: syscalls fail with EINTR */
    sigaction(SIGALRM, &sa, &old);
    struct itimerval it = {{0, 200}, {0, 200}}, off = {{0, 0}, {0, 0}};

    int sv[2];
    CHECK(sockpair(sv) == 0);
    size_t n = 4 << 20;
    uint8_t *payload = malloc(n);
    for (size_t i = 0; i < n; i++)
        payload[i] = (uint8_t)(i * 31 + (i >> 12));
    pid_t pid = fork();
    if (pid == 0) {
        /* Child: echo back one frame slowly, in small pieces. */
        close(sv[0]);
        pf_reader r;
        pf_reader_init(&r);
        if (pf_read_frame(&r, sv[1], 20000) != PF_READ_FRAME)
            _exit(2);
        for (size_t off = 0; off < 4 + r.need;) {
            uint8_t hdr[4] = {(uint8_t)(r.need >> 24), (uint8_t)(r.need >> 16),
                              (uint8_t)(r.need >> 8), (uint8_t)r.need};
            const uint8_t *src = off < 4 ? hdr + off : r.body.data + off - 4;
            size_t k = off < 4 ? 4 - off : 4 + r.need - off;
            ssize_t w = write(sv[1], src, k < 4093 ? k : 4093);
            if (w <= 0)
                _exit(3);
            off += (size_t)w;
            if ((off & 0xffff) < 4093)
                usleep(100);
        }
        _exit(0);
    }
    close(sv[1]);
    setitimer(ITIMER_REAL, &it, NULL);
    CHECK(pf_frame_write(sv[0], payload, n, NULL, 0) == 0);
    pf_reader r;
    pf_reader_init(&r);
    CHECK(pf_read_frame(&r, sv[0], 20000) == PF_READ_FRAME);
    setitimer(ITIMER_REAL, &off, NULL);
    CHECK(r.need == n && memcmp(r.body.data, payload, n) == 0);
    CHECK_MSG(ticks > 10, "only %d signals\n", (int)ticks);
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    pf_reader_free(&r);
    close(sv[0]);
    free(payload);
    sigaction(SIGALRM, &old, NULL);
}

static void test_frame_errors(void)
{
    int sv[2];
    pf_reader r;

    /* Oversize header: EMSGSIZE, and nothing allocated for it. */
    CHECK(sockpair(sv) == 0);
    CHECK(write(sv[0], "\xff\xff\xff\xff", 4) == 4);
    pf_reader_init(&r);
    errno = 0;
    CHECK(pf_reader_feed(&r, sv[1]) == PF_READ_ERROR && errno == EMSGSIZE);
    CHECK(r.body.cap == 0 && r.body.data == NULL);
    CHECK(pf_reader_feed(&r, sv[1]) == PF_READ_ERROR && errno == EMSGSIZE); /* sticks */
    pf_reader_free(&r);
    uint8_t just_over[4] = {(uint8_t)((PF_MAX_FRAME + 1) >> 24), 0, 0, 1};
    CHECK(write(sv[0], just_over, 4) == 4);
    pf_reader_init(&r);
    CHECK(pf_read_frame(&r, sv[1], 1000) == PF_READ_ERROR && errno == EMSGSIZE);
    CHECK(r.body.cap == 0);
    pf_reader_free(&r);
    /* The largest legal header allocates only as bytes arrive. */
    uint8_t max[4] = {(uint8_t)(PF_MAX_FRAME >> 24), 0, 0, 0};
    CHECK(write(sv[0], max, 4) == 4 && write(sv[0], "abc", 3) == 3);
    pf_reader_init(&r);
    set_nonblock(sv[1]);
    CHECK(pf_reader_feed(&r, sv[1]) == PF_READ_AGAIN);
    CHECK(r.need == PF_MAX_FRAME && r.body.len == 3 && r.body.cap <= 2 * FRAME_CHUNK);
    close(sv[0]);
    CHECK(pf_reader_feed(&r, sv[1]) == PF_READ_ERROR && errno == EPROTO);
    pf_reader_free(&r);
    close(sv[1]);

    /* EOF inside the header, inside the body, and between frames. */
    static const struct {
        const char *bytes;
        size_t n;
        int want;
    } eofs[] = {
        {"\x00\x00", 2, PF_READ_ERROR},
        {"\x00\x00\x00\x0a" "abc", 7, PF_READ_ERROR},
        {"\x00\x00\x00\x0a", 4, PF_READ_ERROR},
        {"", 0, PF_READ_EOF},
    };
    for (size_t i = 0; i < sizeof eofs / sizeof *eofs; i++) {
        for (int blocking = 0; blocking < 2; blocking++) {
            CHECK(sockpair(sv) == 0);
            CHECK(write(sv[0], eofs[i].bytes, eofs[i].n) == (ssize_t)eofs[i].n);
            close(sv[0]);
            pf_reader_init(&r);
            errno = 0;
            int rc = blocking ? pf_read_frame(&r, sv[1], 1000) : pf_reader_feed(&r, sv[1]);
            CHECK_MSG(rc == eofs[i].want, "case %zu: %d\n", i, rc);
            if (eofs[i].want == PF_READ_ERROR)
                CHECK(errno == EPROTO);
            pf_reader_free(&r);
            close(sv[1]);
        }
    }

    /* Timeouts: nothing at all, and a peer stalled mid-frame on a blocking fd. */
    CHECK(sockpair(sv) == 0);
    pf_reader_init(&r);
    double t0 = now_s();
    CHECK(pf_read_frame(&r, sv[1], 50) == PF_READ_ERROR && errno == ETIMEDOUT);
    double dt = now_s() - t0;
    CHECK_MSG(dt >= 0.045 && dt < 5.0, "%.3fs\n", dt);
    CHECK(write(sv[0], "\x00\x00\x00\x09" "half", 8) == 8);
    CHECK(pf_read_frame(&r, sv[1], 50) == PF_READ_ERROR && errno == ETIMEDOUT);
    CHECK(r.hdr_have == 4 && r.body.len == 4);
    CHECK(write(sv[0], "-rest", 5) == 5);
    CHECK(pf_read_frame(&r, sv[1], 0) == PF_READ_FRAME); /* resumes where it was */
    CHECK(memcmp(r.body.data, "half-rest", 9) == 0);
    pf_reader_free(&r);

    /* A dead peer is EPIPE, not SIGPIPE. */
    close(sv[1]);
    errno = 0;
    CHECK(pf_frame_write(sv[0], "x", 1, NULL, 0) == -1 && errno == EPIPE);
    close(sv[0]);
}

static bool fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

static void test_frame_fds(void)
{
    int base = count_fds();
    int sv[2], p1[2], p2[2];
    CHECK(sockpair(sv) == 0 && pipe(p1) == 0 && pipe(p2) == 0);

    /* Two frames, each with its own fd: each arrives with its frame. */
    CHECK(pf_frame_write(sv[0], "one", 3, &p1[1], 1) == 0);
    int two[2] = {p2[1], p1[0]};
    CHECK(pf_frame_write(sv[0], "two", 3, two, 2) == 0);
    pf_reader r;
    pf_reader_init(&r);
    CHECK(pf_read_frame(&r, sv[1], 1000) == PF_READ_FRAME && r.nfds == 1);
    int got = r.fds[0];
    r.nfds = 0; /* claim it */
    CHECK(fcntl(got, F_GETFD) & FD_CLOEXEC);
    CHECK(write(got, "via fd", 6) == 6);
    char buf[16] = {0};
    CHECK(read(p1[0], buf, sizeof buf) == 6 && memcmp(buf, "via fd", 6) == 0);
    close(got);
    pf_reader_reset(&r);
    CHECK(pf_read_frame(&r, sv[1], 1000) == PF_READ_FRAME && r.nfds == 2);
    int unclaimed[2] = {r.fds[0], r.fds[1]};
    CHECK(fd_is_open(unclaimed[0]) && fd_is_open(unclaimed[1]));
    pf_reader_reset(&r); /* unclaimed fds are closed, not leaked */
    CHECK(!fd_is_open(unclaimed[0]) && !fd_is_open(unclaimed[1]));

    /* More fds than a frame may carry, over two sendmsg calls: the reader
       keeps PF_MAX_FDS and closes the rest. */
    int many[6];
    for (int i = 0; i < 6; i++)
        many[i] = dup(p2[0]);
    for (int part = 0; part < 2; part++) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int) * 3)];
        } ctl;
        memset(&ctl, 0, sizeof ctl);
        /* The header with three fds, then the 1-byte body with three more. */
        struct iovec iov = {part ? "z" : "\x00\x00\x00\x01", part ? 1 : 4};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                           .msg_controllen = sizeof ctl.buf};
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * 3);
        memcpy(CMSG_DATA(c), many + 3 * part, sizeof(int) * 3);
        CHECK(sendmsg(sv[0], &m, 0) == (ssize_t)iov.iov_len);
    }
    for (int i = 0; i < 6; i++)
        close(many[i]);
    CHECK(pf_read_frame(&r, sv[1], 1000) == PF_READ_FRAME && r.nfds == PF_MAX_FDS);
    pf_reader_free(&r); /* closes the unclaimed four */

    /* Over a pipe: frames work, fds cannot. */
    CHECK(pf_frame_write(p2[1], "pipe", 4, NULL, 0) == 0);
    CHECK(pf_read_frame(&r, p2[0], 1000) == PF_READ_FRAME && memcmp(r.body.data, "pipe", 4) == 0);
    pf_reader_free(&r);
    errno = 0;
    CHECK(pf_frame_write(p2[1], "pipe", 4, &p1[1], 1) == -1 && errno == ENOTSOCK);

    close(sv[0]);
    close(sv[1]);
    close(p1[0]);
    close(p1[1]);
    close(p2[0]);
    close(p2[1]);
    CHECK_MSG(count_fds() == base, "%d fds open, %d before\n", count_fds(), base);
}

/* A non-blocking writer still writes whole frames. */
static void test_frame_nonblocking_writer(void)
{
    int sv[2];
    CHECK(sockpair(sv) == 0);
    set_nonblock(sv[0]);
    size_t n = 3 << 20;
    uint8_t *payload = malloc(n);
    for (size_t i = 0; i < n; i++)
        payload[i] = (uint8_t)(i ^ (i >> 8));
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        pf_reader r;
        pf_reader_init(&r);
        usleep(20000);
        int ok = pf_read_frame(&r, sv[1], 10000) == PF_READ_FRAME && r.need == n &&
                 memcmp(r.body.data, payload, n) == 0;
        _exit(ok ? 0 : 1);
    }
    close(sv[1]);
    CHECK(pf_frame_write(sv[0], payload, n, NULL, 0) == 0);
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(sv[0]);
    free(payload);
}

int main(void)
{
    /* Tests that fork must not inherit unflushed output. */
    setvbuf(stdout, NULL, _IONBF, 0);
    test_arena();
    test_values_api();
    test_equal();
    test_buf();
    test_encode_exact();
    test_roundtrip_kinds();
    test_python_pickles();
    test_memo();
    test_cycles();
    test_forbidden();
    test_depth();
    test_lengths();
    test_alloc_budget();
    test_truncation();
    test_dicts_and_sets();
    test_utf8();
    test_ints();
    test_text_opcodes();
    test_stack_rules();
    test_frame_basic();
    test_frame_fragmented();
    test_frame_eintr();
    test_frame_errors();
    test_frame_fds();
    test_frame_nonblocking_writer();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/*
 * pytest_fast.c -- a resident, fork-based pytest accelerator.
 *
 * One file, read top to bottom:
 *
 *   Utilities        logging, memory, time, fds, paths, string vectors
 *   Values, codec    the pickle subset spoken on every socket (pf_*)
 *   Framing          4-byte length frames, SCM_RIGHTS (pf_*)
 *   SHA-256          identity and fingerprint hashing (pf_sha256_*)
 *   Worker count     performance cores, affinity, cgroup quota (pf_cores_*)
 *   Arguments        which pytest arguments are per run, which re-collect
 *   Identity         environment fingerprint, address, private directory
 *   Zygote           embedded CPython: pytest collects once, then forks
 *   Daemon           accept loop, staleness, dispatcher, summary
 *   Client           starts the daemon, sends a run, prints the result
 *   main             role dispatch
 *
 * Each section only calls the sections above it.  Processes: the client
 * (never starts Python) talks to the daemon (pure C, owns the socket); the
 * daemon execs the zygote (this binary with an embedded interpreter), which
 * collects once and forks a *leader* per run; the leader forks the workers.
 * Every process below the daemon talks to it over socketpairs made before
 * the fork, in frames that the daemon decodes with a data-only decoder.
 *
 * Build: cc pytest_fast.c $(python3.X-config --cflags --embed --ldflags)
 */
#define _GNU_SOURCE 1    /* as pyconfig.h defines it: an identical redefinition is silent */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sched.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#endif
#ifdef __APPLE__
#include <mach-o/dyld.h>
#include <sys/sysctl.h>
#include <sys/ucred.h>
#endif

#include "pytest_fast.h"

/* Portability.  Linux has all of these; macOS and the BSDs lack some, and
 * the helpers below set the same flags with fcntl instead. */
#ifdef __APPLE__
#define st_mtim st_mtimespec
#define st_ctim st_ctimespec
#endif
#ifndef SOCK_CLOEXEC
#define PF_NO_SOCK_FLAGS 1
#define SOCK_CLOEXEC 0
#define SOCK_NONBLOCK 0
#endif
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0        /* SIGPIPE is ignored in every process that sends */
#endif
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0    /* received fds are set close-on-exec afterwards */
#endif

/* Room for a message that quotes a path. */
#define PF_ERRLEN (PATH_MAX + 512)

#ifndef PF_BUILD_PYTHON
#define PF_BUILD_PYTHON ""   /* build.sh records the interpreter it built for */
#endif

/* ==========================================================================
 * Utilities
 *
 * Owns: the process-wide log prefix and the path of this executable.
 * Small helpers every later section uses; calls nothing but libc.
 * ========================================================================== */

static char util_exe[PATH_MAX];       /* this binary, for re-exec */
static char util_build[64];           /* identity of the binary file: dev:ino:mtime */
static const char *util_role = "pytest-fast";

static void util_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void util_log(const char *fmt, ...)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
    fprintf(stderr, "[%s] [%s %d] ", stamp, util_role, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static void *util_alloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fputs("pytest-fast: out of memory\n", stderr);
        _exit(70);
    }
    return p;
}

static void *util_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fputs("pytest-fast: out of memory\n", stderr);
        _exit(70);
    }
    return q;
}

static char *util_strdup(const char *s)
{
    size_t n = strlen(s);
    char *p = util_alloc(n + 1);
    memcpy(p, s, n);
    return p;
}

static char *util_strndup(const char *s, size_t n)
{
    char *p = util_alloc(n + 1);
    memcpy(p, s, n);
    return p;
}

static char *util_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *util_fmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = util_alloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

static double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void util_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    if (fl >= 0)
        fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

static void util_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* A connected pair of stream sockets, both close-on-exec. */
static int util_socketpair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
#ifdef PF_NO_SOCK_FLAGS
    util_cloexec(sv[0]);
    util_cloexec(sv[1]);
#endif
    return 0;
}

static int util_socket(bool nonblock)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
#ifdef PF_NO_SOCK_FLAGS
    if (fd >= 0) {
        util_cloexec(fd);
        if (nonblock)
            util_nonblock(fd);
    }
#endif
    return fd;
}

static int util_accept(int listen_fd)
{
#ifdef __linux__
    return accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
#else
    int fd = accept(listen_fd, NULL, NULL);
    if (fd >= 0) {
        util_cloexec(fd);
        util_nonblock(fd);
    }
    return fd;
#endif
}

static void util_close(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static bool util_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

/* Read a small text file (sysfs, pyvenv.cfg) into a fresh string. */
static char *util_read_file(const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = util_alloc(max + 1);
    size_t have = 0;
    while (have < max) {
        ssize_t r = read(fd, buf + have, max - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
    }
    close(fd);
    buf[have] = 0;
    return buf;
}

static const char *util_getenv(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static void util_find_exe(const char *argv0)
{
#ifdef __linux__
    ssize_t n = readlink("/proc/self/exe", util_exe, sizeof util_exe - 1);
    if (n > 0) {
        util_exe[n] = 0;
        return;
    }
#elif defined(__APPLE__)
    uint32_t size = sizeof util_exe;
    char raw[PATH_MAX];
    if (_NSGetExecutablePath(raw, &size) == 0 && realpath(raw, util_exe))
        return;
#endif
    if (!realpath(argv0, util_exe))
        snprintf(util_exe, sizeof util_exe, "%s", argv0);
}

/* A rebuilt binary must not talk to a daemon (or exec zygotes) of the old
 * one: both sides compare this identity of the file they were started from. */
static void util_find_build(void)
{
    struct stat st;
#ifdef __linux__
    int rc = stat("/proc/self/exe", &st);
#else
    int rc = stat(util_exe, &st);
#endif
    if (rc == 0)
        snprintf(util_build, sizeof util_build, "%llx:%llx:%lld.%09ld", (unsigned long long)st.st_dev,
                 (unsigned long long)st.st_ino, (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec);
}

/* A growable vector of owned strings, NULL-terminated for execve. */
typedef struct util_strv {
    char **v;
    size_t n, cap;
} util_strv;

static void util_strv_push(util_strv *sv, const char *s)
{
    if (sv->n + 2 > sv->cap) {
        sv->cap = sv->cap ? sv->cap * 2 : 16;
        sv->v = util_realloc(sv->v, sv->cap * sizeof *sv->v);
    }
    sv->v[sv->n++] = util_strdup(s);
    sv->v[sv->n] = NULL;
}

static void util_strv_free(util_strv *sv)
{
    for (size_t i = 0; i < sv->n; i++)
        free(sv->v[i]);
    free(sv->v);
    memset(sv, 0, sizeof *sv);
}

static bool util_strv_equal(const util_strv *a, const util_strv *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return false;
    return true;
}

static int util_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A list value of strings from a string vector. */
static pf_value *util_strv_value(pf_arena *a, const util_strv *sv)
{
    pf_value *list = pf_new_container(a, PF_LIST);
    for (size_t i = 0; list && i < sv->n; i++)
        if (pf_append(a, list, pf_new_cstr(a, sv->v[i])) < 0)
            return NULL;
    return list;
}

/* A message: a dict whose "op" names it. */
static pf_value *util_msg(pf_arena *a, const char *op)
{
    pf_value *d = pf_new_container(a, PF_DICT);
    pf_dict_set(a, d, pf_new_cstr(a, "op"), pf_new_cstr(a, op));
    return d;
}

static void util_set(pf_arena *a, pf_value *d, const char *key, pf_value *v)
{
    pf_dict_set(a, d, pf_new_cstr(a, key), v);
}

/* The strings of a list/tuple value; false if any element is not a str. */
static bool util_value_strv(const pf_value *v, util_strv *out)
{
    if (!v || !pf_is_seq(v))
        return false;
    for (size_t i = 0; i < v->u.seq.len; i++) {
        const pf_value *s = v->u.seq.items[i];
        if (s->kind != PF_STR)
            return false;
        util_strv_push(out, s->u.s.ptr);
    }
    return true;
}



/* ==========================================================================
 * Values and codec
 *
 * Owns the arena, the value tree, pf_buf and the pickle codec (pf_encode,
 * pf_decode).  Calls only libc.  The decoder is a stack machine over a
 * whitelist of data opcodes: everything it returns lives in the caller's
 * arena; its scratch (stack, memo, hash tables) is malloc'd, is linear in
 * the input length, and is freed before it returns.
 * ========================================================================== */

/* ------------------------------------------------------------------ arena */

#define CODEC_ALIGN 8u
#define CODEC_CHUNK_MIN 4096u
#define CODEC_CHUNK_MAX (1024u * 1024u)

typedef struct codec_chunk {
    struct codec_chunk *next;
    size_t size, used; /* bytes of data[] */
    unsigned char data[];
} codec_chunk;

_Static_assert(sizeof(codec_chunk) % CODEC_ALIGN == 0, "chunk data must stay aligned");
_Static_assert(_Alignof(pf_value) <= CODEC_ALIGN, "values need at most CODEC_ALIGN");

/* used counts the bytes handed out, which is what the limit applies to.
 * The memory behind them is that plus a header per chunk plus the unused
 * rest of the current chunk, and a new chunk is never made larger than
 * what the limit leaves, so that rest cannot reach past the limit either.
 * Counting bytes handed out (not chunk sizes) keeps the decode budget
 * exact: see codec_node. */
struct pf_arena {
    codec_chunk *head; /* the chunk small requests are carved from */
    size_t used;
    size_t limit; /* 0: unlimited */
    size_t next;  /* size of the next regular chunk */
};

pf_arena *pf_arena_new(size_t limit)
{
    pf_arena *a = calloc(1, sizeof *a);
    if (a) {
        a->limit = limit;
        a->next = CODEC_CHUNK_MIN;
    }
    return a;
}

void pf_arena_free(pf_arena *a)
{
    if (!a)
        return;
    for (codec_chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(a);
}

size_t pf_arena_used(const pf_arena *a)
{
    return a ? a->used : 0;
}

/* NULL with errno E2BIG when the limit forbids it, ENOMEM when malloc does. */
static void *codec_alloc(pf_arena *a, size_t n)
{
    if (n > SIZE_MAX - CODEC_ALIGN - sizeof(codec_chunk)) {
        errno = ENOMEM;
        return NULL;
    }
    n = (n + CODEC_ALIGN - 1) & ~(size_t)(CODEC_ALIGN - 1);
    size_t room = SIZE_MAX;
    if (a->limit) {
        room = a->limit > a->used ? a->limit - a->used : 0;
        if (n > room) {
            errno = E2BIG;
            return NULL;
        }
    }
    codec_chunk *c = a->head;
    if (!c || c->size - c->used < n) {
        size_t size = n > a->next / 4 ? n : a->next;
        if (size > room)
            size = room;
        if (!(c = malloc(sizeof *c + size))) {
            errno = ENOMEM;
            return NULL;
        }
        c->size = size;
        c->used = 0;
        if (size == n && a->head) {
            /* A chunk for one request goes behind the current one, which
               keeps serving small requests. */
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
            if (a->next < CODEC_CHUNK_MAX)
                a->next *= 2;
        }
    }
    void *p = c->data + c->used;
    c->used += n;
    a->used += n;
    return p;
}

/* ----------------------------------------------------------------- values */

static bool codec_is_container(pf_kind k)
{
    return k >= PF_TUPLE && k <= PF_FROZENSET;
}

static const char *codec_kindname(pf_kind k)
{
    static const char *const names[] = {"None", "bool", "int", "int", "float", "str", "bytes",
                                        "bytearray", "tuple", "list", "dict", "set", "frozenset"};
    return (unsigned)k < sizeof names / sizeof *names ? names[k] : "?";
}

static pf_value *codec_value(pf_arena *a, pf_kind kind)
{
    pf_value *v = codec_alloc(a, sizeof *v);
    if (v) {
        memset(v, 0, sizeof *v);
        v->kind = kind;
    }
    return v;
}

/* A NUL-terminated copy, so string payloads can be used as C strings. */
static char *codec_strdup(pf_arena *a, const void *p, size_t len)
{
    if (len == SIZE_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    char *s = codec_alloc(a, len + 1);
    if (s) {
        if (len)
            memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

pf_value *pf_new_none(pf_arena *a)
{
    return codec_value(a, PF_NONE);
}

pf_value *pf_new_bool(pf_arena *a, bool b)
{
    pf_value *v = codec_value(a, PF_BOOL);
    if (v)
        v->u.b = b;
    return v;
}

pf_value *pf_new_int(pf_arena *a, int64_t i)
{
    pf_value *v = codec_value(a, PF_INT);
    if (v)
        v->u.i = i;
    return v;
}

pf_value *pf_new_float(pf_arena *a, double f)
{
    pf_value *v = codec_value(a, PF_FLOAT);
    if (v)
        v->u.f = f;
    return v;
}

static pf_value *codec_new_blob(pf_arena *a, pf_kind kind, const void *p, size_t len)
{
    if (!p && len) {
        errno = EINVAL;
        return NULL;
    }
    pf_value *v = codec_value(a, kind);
    if (!v || !(v->u.s.ptr = codec_strdup(a, p, len)))
        return NULL;
    v->u.s.len = len;
    return v;
}

pf_value *pf_new_str(pf_arena *a, const char *s, size_t len)
{
    return codec_new_blob(a, PF_STR, s, len);
}

pf_value *pf_new_cstr(pf_arena *a, const char *s)
{
    return codec_new_blob(a, PF_STR, s, s ? strlen(s) : 0);
}

pf_value *pf_new_bytes(pf_arena *a, const void *p, size_t len)
{
    return codec_new_blob(a, PF_BYTES, p, len);
}

pf_value *pf_new_container(pf_arena *a, pf_kind kind)
{
    if (!codec_is_container(kind)) {
        errno = EINVAL;
        return NULL;
    }
    return codec_value(a, kind);
}

/* Make room for extra more entries (pairs for a dict: len and cap count
 * pairs there).  Grows geometrically; the old array stays in the arena. */
static int codec_reserve(pf_arena *a, pf_value *c, size_t extra)
{
    size_t len = c->u.seq.len, cap = c->u.seq.cap;
    size_t stride = c->kind == PF_DICT ? 2 : 1;
    if (extra <= cap - len)
        return 0;
    size_t max = SIZE_MAX / sizeof(pf_value *) / stride;
    if (extra > max - len) {
        errno = ENOMEM;
        return -1;
    }
    size_t ncap = cap ? (cap <= max / 2 ? cap * 2 : max) : 4;
    if (ncap < len + extra)
        ncap = len + extra;
    pf_value **items = codec_alloc(a, ncap * stride * sizeof *items);
    if (!items)
        return -1;
    if (len)
        memcpy(items, c->u.seq.items, len * stride * sizeof *items);
    c->u.seq.items = items;
    c->u.seq.cap = ncap;
    return 0;
}

int pf_append(pf_arena *a, pf_value *container, pf_value *item)
{
    if (!container || !item || !codec_is_container(container->kind) ||
        container->kind == PF_DICT) {
        errno = EINVAL;
        return -1;
    }
    if (codec_reserve(a, container, 1) < 0)
        return -1;
    container->u.seq.items[container->u.seq.len++] = item;
    return 0;
}

int pf_dict_set(pf_arena *a, pf_value *dict, pf_value *key, pf_value *value)
{
    if (!dict || !key || !value || dict->kind != PF_DICT) {
        errno = EINVAL;
        return -1;
    }
    pf_value **items = dict->u.seq.items;
    for (size_t i = 0; i < dict->u.seq.len; i++) {
        if (pf_value_equal(items[2 * i], key)) {
            items[2 * i + 1] = value;
            return 0;
        }
    }
    if (codec_reserve(a, dict, 1) < 0)
        return -1;
    items = dict->u.seq.items;
    items[2 * dict->u.seq.len] = key;
    items[2 * dict->u.seq.len + 1] = value;
    dict->u.seq.len++;
    return 0;
}

const pf_value *pf_dict_get(const pf_value *dict, const char *key)
{
    if (!dict || !key || dict->kind != PF_DICT)
        return NULL;
    size_t n = strlen(key);
    for (size_t i = 0; i < dict->u.seq.len; i++) {
        const pf_value *k = dict->u.seq.items[2 * i];
        if (k->kind == PF_STR && k->u.s.len == n && memcmp(k->u.s.ptr, key, n) == 0)
            return dict->u.seq.items[2 * i + 1];
    }
    return NULL;
}

const char *pf_dict_str(const pf_value *dict, const char *key)
{
    const pf_value *v = pf_dict_get(dict, key);
    return v && v->kind == PF_STR ? v->u.s.ptr : NULL;
}

bool pf_dict_int(const pf_value *dict, const char *key, int64_t *out)
{
    const pf_value *v = pf_dict_get(dict, key);
    if (!v || v->kind != PF_INT)
        return false;
    if (out)
        *out = v->u.i;
    return true;
}

bool pf_is_seq(const pf_value *v)
{
    return v && (v->kind == PF_TUPLE || v->kind == PF_LIST);
}

/* Structural and order-sensitive; floats compare by bit pattern, so NaN
 * equals itself and -0.0 differs from 0.0, which makes a codec round trip
 * an identity check.  Bounded by PF_MAX_DEPTH (deeper counts as unequal)
 * so that a cyclic or absurdly deep tree cannot exhaust the C stack. */
static bool codec_equal(const pf_value *a, const pf_value *b, unsigned depth)
{
    if (a == b)
        return true;
    if (!a || !b || a->kind != b->kind)
        return false;
    switch (a->kind) {
    case PF_NONE:
        return true;
    case PF_BOOL:
        return !a->u.b == !b->u.b;
    case PF_INT:
        return a->u.i == b->u.i;
    case PF_FLOAT:
        return memcmp(&a->u.f, &b->u.f, sizeof a->u.f) == 0;
    case PF_BIGINT:
    case PF_STR:
    case PF_BYTES:
    case PF_BYTEARRAY:
        return a->u.s.len == b->u.s.len &&
               (a->u.s.len == 0 || memcmp(a->u.s.ptr, b->u.s.ptr, a->u.s.len) == 0);
    default:
        break;
    }
    if (!codec_is_container(a->kind) || a->u.seq.len != b->u.seq.len || depth >= PF_MAX_DEPTH)
        return false;
    size_t n = a->u.seq.len * (a->kind == PF_DICT ? 2 : 1);
    for (size_t i = 0; i < n; i++)
        if (!codec_equal(a->u.seq.items[i], b->u.seq.items[i], depth + 1))
            return false;
    return true;
}

bool pf_value_equal(const pf_value *a, const pf_value *b)
{
    return codec_equal(a, b, 0);
}

/* ----------------------------------------------------------------- pf_buf */

int pf_buf_reserve(pf_buf *b, size_t extra)
{
    if (extra <= b->cap - b->len)
        return 0;
    if (extra > SIZE_MAX - b->len) {
        errno = ENOMEM;
        return -1;
    }
    size_t want = b->len + extra, cap = b->cap ? b->cap : 64;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

int pf_buf_put(pf_buf *b, const void *p, size_t n)
{
    if (pf_buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* The text is followed by a NUL that len does not count. */
int pf_buf_printf(pf_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || pf_buf_reserve(b, (size_t)n + 1) < 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void pf_buf_free(pf_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---------------------------------------------------------------- opcodes */

enum {
    CODEC_OP_MARK = '(',
    CODEC_OP_STOP = '.',
    CODEC_OP_POP = '0',
    CODEC_OP_POP_MARK = '1',
    CODEC_OP_DUP = '2',
    CODEC_OP_BINBYTES = 'B',
    CODEC_OP_SHORT_BINBYTES = 'C',
    CODEC_OP_FLOAT = 'F',
    CODEC_OP_BINFLOAT = 'G',
    CODEC_OP_INT = 'I',
    CODEC_OP_BININT = 'J',
    CODEC_OP_BININT1 = 'K',
    CODEC_OP_LONG = 'L',
    CODEC_OP_BININT2 = 'M',
    CODEC_OP_NONE = 'N',
    CODEC_OP_PERSID = 'P',
    CODEC_OP_BINPERSID = 'Q',
    CODEC_OP_REDUCE = 'R',
    CODEC_OP_STRING = 'S',
    CODEC_OP_BINSTRING = 'T',
    CODEC_OP_SHORT_BINSTRING = 'U',
    CODEC_OP_UNICODE = 'V',
    CODEC_OP_BINUNICODE = 'X',
    CODEC_OP_EMPTY_LIST = ']',
    CODEC_OP_APPEND = 'a',
    CODEC_OP_BUILD = 'b',
    CODEC_OP_GLOBAL = 'c',
    CODEC_OP_DICT = 'd',
    CODEC_OP_APPENDS = 'e',
    CODEC_OP_GET = 'g',
    CODEC_OP_BINGET = 'h',
    CODEC_OP_INST = 'i',
    CODEC_OP_LONG_BINGET = 'j',
    CODEC_OP_LIST = 'l',
    CODEC_OP_OBJ = 'o',
    CODEC_OP_PUT = 'p',
    CODEC_OP_BINPUT = 'q',
    CODEC_OP_LONG_BINPUT = 'r',
    CODEC_OP_SETITEM = 's',
    CODEC_OP_TUPLE = 't',
    CODEC_OP_SETITEMS = 'u',
    CODEC_OP_EMPTY_DICT = '}',
    CODEC_OP_EMPTY_TUPLE = ')',
    CODEC_OP_PROTO = 0x80,
    CODEC_OP_NEWOBJ = 0x81,
    CODEC_OP_EXT1 = 0x82,
    CODEC_OP_EXT2 = 0x83,
    CODEC_OP_EXT4 = 0x84,
    CODEC_OP_TUPLE1 = 0x85,
    CODEC_OP_TUPLE2 = 0x86,
    CODEC_OP_TUPLE3 = 0x87,
    CODEC_OP_NEWTRUE = 0x88,
    CODEC_OP_NEWFALSE = 0x89,
    CODEC_OP_LONG1 = 0x8a,
    CODEC_OP_LONG4 = 0x8b,
    CODEC_OP_SHORT_BINUNICODE = 0x8c,
    CODEC_OP_BINUNICODE8 = 0x8d,
    CODEC_OP_BINBYTES8 = 0x8e,
    CODEC_OP_EMPTY_SET = 0x8f,
    CODEC_OP_ADDITEMS = 0x90,
    CODEC_OP_FROZENSET = 0x91,
    CODEC_OP_NEWOBJ_EX = 0x92,
    CODEC_OP_STACK_GLOBAL = 0x93,
    CODEC_OP_MEMOIZE = 0x94,
    CODEC_OP_FRAME = 0x95,
    CODEC_OP_BYTEARRAY8 = 0x96,
    CODEC_OP_NEXT_BUFFER = 0x97,
    CODEC_OP_READONLY_BUFFER = 0x98
};

static const char *const codec_opnames[256] = {
    [CODEC_OP_MARK] = "MARK",
    [CODEC_OP_STOP] = "STOP",
    [CODEC_OP_POP] = "POP",
    [CODEC_OP_POP_MARK] = "POP_MARK",
    [CODEC_OP_DUP] = "DUP",
    [CODEC_OP_BINBYTES] = "BINBYTES",
    [CODEC_OP_SHORT_BINBYTES] = "SHORT_BINBYTES",
    [CODEC_OP_FLOAT] = "FLOAT",
    [CODEC_OP_BINFLOAT] = "BINFLOAT",
    [CODEC_OP_INT] = "INT",
    [CODEC_OP_BININT] = "BININT",
    [CODEC_OP_BININT1] = "BININT1",
    [CODEC_OP_LONG] = "LONG",
    [CODEC_OP_BININT2] = "BININT2",
    [CODEC_OP_NONE] = "NONE",
    [CODEC_OP_PERSID] = "PERSID",
    [CODEC_OP_BINPERSID] = "BINPERSID",
    [CODEC_OP_REDUCE] = "REDUCE",
    [CODEC_OP_STRING] = "STRING",
    [CODEC_OP_BINSTRING] = "BINSTRING",
    [CODEC_OP_SHORT_BINSTRING] = "SHORT_BINSTRING",
    [CODEC_OP_UNICODE] = "UNICODE",
    [CODEC_OP_BINUNICODE] = "BINUNICODE",
    [CODEC_OP_EMPTY_LIST] = "EMPTY_LIST",
    [CODEC_OP_APPEND] = "APPEND",
    [CODEC_OP_BUILD] = "BUILD",
    [CODEC_OP_GLOBAL] = "GLOBAL",
    [CODEC_OP_DICT] = "DICT",
    [CODEC_OP_APPENDS] = "APPENDS",
    [CODEC_OP_GET] = "GET",
    [CODEC_OP_BINGET] = "BINGET",
    [CODEC_OP_INST] = "INST",
    [CODEC_OP_LONG_BINGET] = "LONG_BINGET",
    [CODEC_OP_LIST] = "LIST",
    [CODEC_OP_OBJ] = "OBJ",
    [CODEC_OP_PUT] = "PUT",
    [CODEC_OP_BINPUT] = "BINPUT",
    [CODEC_OP_LONG_BINPUT] = "LONG_BINPUT",
    [CODEC_OP_SETITEM] = "SETITEM",
    [CODEC_OP_TUPLE] = "TUPLE",
    [CODEC_OP_SETITEMS] = "SETITEMS",
    [CODEC_OP_EMPTY_DICT] = "EMPTY_DICT",
    [CODEC_OP_EMPTY_TUPLE] = "EMPTY_TUPLE",
    [CODEC_OP_PROTO] = "PROTO",
    [CODEC_OP_NEWOBJ] = "NEWOBJ",
    [CODEC_OP_EXT1] = "EXT1",
    [CODEC_OP_EXT2] = "EXT2",
    [CODEC_OP_EXT4] = "EXT4",
    [CODEC_OP_TUPLE1] = "TUPLE1",
    [CODEC_OP_TUPLE2] = "TUPLE2",
    [CODEC_OP_TUPLE3] = "TUPLE3",
    [CODEC_OP_NEWTRUE] = "NEWTRUE",
    [CODEC_OP_NEWFALSE] = "NEWFALSE",
    [CODEC_OP_LONG1] = "LONG1",
    [CODEC_OP_LONG4] = "LONG4",
    [CODEC_OP_SHORT_BINUNICODE] = "SHORT_BINUNICODE",
    [CODEC_OP_BINUNICODE8] = "BINUNICODE8",
    [CODEC_OP_BINBYTES8] = "BINBYTES8",
    [CODEC_OP_EMPTY_SET] = "EMPTY_SET",
    [CODEC_OP_ADDITEMS] = "ADDITEMS",
    [CODEC_OP_FROZENSET] = "FROZENSET",
    [CODEC_OP_NEWOBJ_EX] = "NEWOBJ_EX",
    [CODEC_OP_STACK_GLOBAL] = "STACK_GLOBAL",
    [CODEC_OP_MEMOIZE] = "MEMOIZE",
    [CODEC_OP_FRAME] = "FRAME",
    [CODEC_OP_BYTEARRAY8] = "BYTEARRAY8",
    [CODEC_OP_NEXT_BUFFER] = "NEXT_BUFFER",
    [CODEC_OP_READONLY_BUFFER] = "READONLY_BUFFER",
};

/* ---------------------------------------------------------------- encoder */

static void codec_le(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t codec_get_le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = n; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

/* Minimal little-endian two's complement bytes of i, as LONG1 wants. */
static unsigned codec_int_bytes(int64_t i, uint8_t out[8])
{
    uint64_t u;
    memcpy(&u, &i, sizeof u);
    codec_le(out, u, 8);
    unsigned n = 8;
    while (n > 1 && ((out[n - 1] == 0x00 && !(out[n - 2] & 0x80)) ||
                     (out[n - 1] == 0xff && (out[n - 2] & 0x80))))
        n--;
    return n;
}

/* Encoded size of a non-container; codec_encode_value writes exactly this. */
static uint64_t codec_scalar_size(const pf_value *v)
{
    uint8_t tmp[8];
    uint64_t n = v->u.s.len;
    switch (v->kind) {
    case PF_INT:
        if (v->u.i >= 0 && v->u.i < 0x10000)
            return v->u.i < 0x100 ? 2 : 3;
        if (v->u.i >= INT32_MIN && v->u.i <= INT32_MAX)
            return 5;
        return 2 + codec_int_bytes(v->u.i, tmp);
    case PF_FLOAT:
        return 9;
    case PF_BIGINT:
        return (n < 0x100 ? 2 : 5) + n;
    case PF_STR:
    case PF_BYTES:
        return (n < 0x100 ? 2 : n <= UINT32_MAX ? 5 : 9) + n;
    case PF_BYTEARRAY:
        return 9 + n;
    default:
        return 1;
    }
}

static int codec_emit(pf_buf *b, uint8_t op, const void *arg, size_t n)
{
    if (pf_buf_reserve(b, 1 + n) < 0)
        return -1;
    b->data[b->len++] = op;
    if (n)
        memcpy(b->data + b->len, arg, n);
    b->len += n;
    return 0;
}

/* op1/op4/op8 take a 1-, 4- or 8-byte length; 0 where there is none. */
static int codec_emit_sized(pf_buf *b, uint8_t op1, uint8_t op4, uint8_t op8, const char *p,
                            size_t n)
{
    uint8_t hdr[8];
    int rc;
    if (op1 && n < 0x100) {
        hdr[0] = (uint8_t)n;
        rc = codec_emit(b, op1, hdr, 1);
    } else if (op4 && n <= (op4 == CODEC_OP_LONG4 ? (uint64_t)INT32_MAX : UINT32_MAX)) {
        codec_le(hdr, n, 4);
        rc = codec_emit(b, op4, hdr, 4);
    } else if (op8) {
        codec_le(hdr, n, 8);
        rc = codec_emit(b, op8, hdr, 8);
    } else {
        errno = E2BIG;
        return -1;
    }
    return rc < 0 ? -1 : pf_buf_put(b, p, n);
}

static int codec_encode_value(pf_buf *b, const pf_value *v, unsigned depth);

static int codec_encode_items(pf_buf *b, const pf_value *v, unsigned depth)
{
    size_t n = v->u.seq.len * (v->kind == PF_DICT ? 2 : 1);
    for (size_t i = 0; i < n; i++)
        if (codec_encode_value(b, v->u.seq.items[i], depth + 1) < 0)
            return -1;
    return 0;
}

/* Empty container opcode, then MARK, items and the opcode that adds them. */
static int codec_encode_filled(pf_buf *b, const pf_value *v, unsigned depth, uint8_t empty,
                               uint8_t add)
{
    if (codec_emit(b, empty, NULL, 0) < 0)
        return -1;
    if (!v->u.seq.len)
        return 0;
    if (codec_emit(b, CODEC_OP_MARK, NULL, 0) < 0 || codec_encode_items(b, v, depth) < 0)
        return -1;
    return codec_emit(b, add, NULL, 0);
}

static int codec_encode_value(pf_buf *b, const pf_value *v, unsigned depth)
{
    uint8_t arg[8];
    if (!v) {
        errno = EINVAL;
        return -1;
    }
    if (codec_is_container(v->kind) && depth >= PF_MAX_DEPTH) {
        errno = ELOOP;
        return -1;
    }
    switch (v->kind) {
    case PF_NONE:
        return codec_emit(b, CODEC_OP_NONE, NULL, 0);
    case PF_BOOL:
        return codec_emit(b, v->u.b ? CODEC_OP_NEWTRUE : CODEC_OP_NEWFALSE, NULL, 0);
    case PF_INT: {
        int64_t i = v->u.i;
        if (i >= 0 && i < 0x100) {
            arg[0] = (uint8_t)i;
            return codec_emit(b, CODEC_OP_BININT1, arg, 1);
        }
        if (i >= 0 && i < 0x10000) {
            codec_le(arg, (uint64_t)i, 2);
            return codec_emit(b, CODEC_OP_BININT2, arg, 2);
        }
        if (i >= INT32_MIN && i <= INT32_MAX) {
            codec_le(arg, (uint32_t)(int32_t)i, 4);
            return codec_emit(b, CODEC_OP_BININT, arg, 4);
        }
        uint8_t le[8];
        unsigned n = codec_int_bytes(i, le);
        return codec_emit_sized(b, CODEC_OP_LONG1, 0, 0, (const char *)le, n);
    }
    case PF_BIGINT:
        return codec_emit_sized(b, CODEC_OP_LONG1, CODEC_OP_LONG4, 0, v->u.s.ptr, v->u.s.len);
    case PF_FLOAT: {
        uint64_t bits;
        memcpy(&bits, &v->u.f, sizeof bits);
        for (int i = 7; i >= 0; i--, bits >>= 8)
            arg[i] = (uint8_t)bits;
        return codec_emit(b, CODEC_OP_BINFLOAT, arg, 8);
    }
    case PF_STR:
        return codec_emit_sized(b, CODEC_OP_SHORT_BINUNICODE, CODEC_OP_BINUNICODE,
                                CODEC_OP_BINUNICODE8, v->u.s.ptr, v->u.s.len);
    case PF_BYTES:
        return codec_emit_sized(b, CODEC_OP_SHORT_BINBYTES, CODEC_OP_BINBYTES, CODEC_OP_BINBYTES8,
                                v->u.s.ptr, v->u.s.len);
    case PF_BYTEARRAY:
        /* BYTEARRAY8 is a protocol-5 opcode, but Python (3.8+) accepts it in
           any stream and it is the only way to say bytearray without a
           global. */
        return codec_emit_sized(b, 0, 0, CODEC_OP_BYTEARRAY8, v->u.s.ptr, v->u.s.len);
    case PF_TUPLE:
        if (v->u.seq.len == 0)
            return codec_emit(b, CODEC_OP_EMPTY_TUPLE, NULL, 0);
        if (v->u.seq.len <= 3)
            return codec_encode_items(b, v, depth) < 0
                       ? -1
                       : codec_emit(b, (uint8_t)(CODEC_OP_TUPLE1 + v->u.seq.len - 1), NULL, 0);
        if (codec_emit(b, CODEC_OP_MARK, NULL, 0) < 0 || codec_encode_items(b, v, depth) < 0)
            return -1;
        return codec_emit(b, CODEC_OP_TUPLE, NULL, 0);
    case PF_LIST:
        return codec_encode_filled(b, v, depth, CODEC_OP_EMPTY_LIST, CODEC_OP_APPENDS);
    case PF_DICT:
        return codec_encode_filled(b, v, depth, CODEC_OP_EMPTY_DICT, CODEC_OP_SETITEMS);
    case PF_SET:
        return codec_encode_filled(b, v, depth, CODEC_OP_EMPTY_SET, CODEC_OP_ADDITEMS);
    case PF_FROZENSET:
        if (codec_emit(b, CODEC_OP_MARK, NULL, 0) < 0 || codec_encode_items(b, v, depth) < 0)
            return -1;
        return codec_emit(b, CODEC_OP_FROZENSET, NULL, 0);
    }
    errno = EINVAL;
    return -1;
}

int pf_encode(pf_buf *out, const pf_value *v)
{
    static const uint8_t proto[] = {CODEC_OP_PROTO, 4};
    size_t start = out->len;
    if (pf_buf_put(out, proto, sizeof proto) < 0 || codec_encode_value(out, v, 0) < 0 ||
        codec_emit(out, CODEC_OP_STOP, NULL, 0) < 0) {
        out->len = start; /* leave no half pickle behind */
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- decoder */

/* Every value the decoder makes carries this header.  During decoding aux
 * is the hash of a hashable value; the final walk reuses it for the
 * encoded size.  Eight bytes keep a node at 40: a one-byte opcode then
 * costs at most 40 plus 8 in its parent's item array, so even the densest
 * output of pf_encode (a tree of one-byte containers) fits in
 * PF_DECODE_FACTOR (48) bytes per input byte, and the fuzzer's round trip
 * cannot trip the budget. */
typedef struct codec_node {
    uint32_t aux;
    uint8_t flags;
    uint8_t height; /* container nesting: a lower bound, exact after the walk */
    pf_value v;
} codec_node;

enum {
    CODEC_HASHABLE = 1, /* interned: one canonical node per distinct value */
    CODEC_INDEXED = 2,  /* dict/set whose members are in the member table */
    CODEC_GRAY = 4,     /* final walk: on the current path */
    CODEC_BLACK = 8     /* final walk: done, aux and height valid */
};

#define CODEC_MEMO_SLACK 16u  /* PUT may skip this far past the memo's size */
#define CODEC_LINEAR_MAX 8u   /* dicts and sets this small are scanned */
#define CODEC_MAX_DIGITS 4300 /* text ints, like Python's int_max_str_digits */

/* The hash rides in the slot so that probing past other values does not
 * have to touch their nodes. */
typedef struct codec_slot {
    pf_value *v; /* NULL: empty */
    uint32_t hash;
} codec_slot;

typedef struct codec_member {
    const pf_value *owner; /* NULL: empty slot */
    size_t pos;
} codec_member;

typedef struct codec_dec {
    pf_arena *a;
    const uint8_t *start, *p, *end;
    const uint8_t *op_at; /* current opcode, for messages; NULL after the loop */
    char *err;
    size_t errlen;
    uint64_t seed;
    pf_value **stack;
    size_t sp, stack_cap;
    size_t marks[PF_MAX_DEPTH];
    unsigned nmarks;
    pf_value **memo;
    size_t memo_len, memo_count; /* slots; filled slots (Python's len(memo)) */
    codec_slot *intern; /* open addressing */
    size_t intern_cap, intern_count;
    codec_member *member; /* (container, position) of dict keys / set items */
    size_t member_cap, member_count;
    bool oom; /* failed for want of memory, not because of the input */
} codec_dec;

static codec_node *codec_node_of(const pf_value *v)
{
    return (codec_node *)((char *)v - offsetof(codec_node, v));
}

static int codec_fail(codec_dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int codec_fail(codec_dec *d, const char *fmt, ...)
{
    if (!d->errlen)
        return -1;
    size_t off = 0;
    if (d->op_at) {
        const char *name = codec_opnames[*d->op_at];
        int n = name ? snprintf(d->err, d->errlen, "%s at offset %zu: ", name,
                                (size_t)(d->op_at - d->start))
                     : snprintf(d->err, d->errlen, "opcode 0x%02x at offset %zu: ", *d->op_at,
                                (size_t)(d->op_at - d->start));
        off = n < 0 ? 0 : (size_t)n < d->errlen ? (size_t)n : d->errlen - 1;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err + off, d->errlen - off, fmt, ap);
    va_end(ap);
    return -1;
}

/* After an allocation failed: errno tells the arena limit from malloc. */
static int codec_nomem(codec_dec *d)
{
    if (errno == E2BIG)
        return codec_fail(d, "allocation limit exceeded (%zu bytes for a %zu-byte pickle)",
                          d->a->limit, (size_t)(d->end - d->start));
    d->oom = true;
    return codec_fail(d, "out of memory");
}

/* fmix64 from MurmurHash3: cheap, and every input bit affects every output
 * bit.  Hashes start from a per-decode seed, so whoever writes the input
 * cannot plan collisions to make the tables quadratic. */
static uint64_t codec_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Hash of a hashable value whose items (if any) are already interned. */
static uint32_t codec_hash(const codec_dec *d, const pf_value *v)
{
    uint64_t h = codec_mix(d->seed + (uint64_t)v->kind);
    uint64_t w;
    switch (v->kind) {
    case PF_BOOL:
        h = codec_mix(h ^ (uint64_t)v->u.b);
        break;
    case PF_INT:
        memcpy(&w, &v->u.i, sizeof w);
        h = codec_mix(h ^ w);
        break;
    case PF_FLOAT:
        memcpy(&w, &v->u.f, sizeof w);
        h = codec_mix(h ^ w);
        break;
    case PF_BIGINT:
    case PF_STR:
    case PF_BYTES: {
        const char *p = v->u.s.ptr;
        size_t n = v->u.s.len;
        h = codec_mix(h ^ (uint64_t)n);
        for (; n >= 8; n -= 8, p += 8) {
            memcpy(&w, p, 8);
            h = codec_mix(h ^ w);
        }
        w = 0;
        if (n)
            memcpy(&w, p, n);
        h = codec_mix(h ^ w);
        break;
    }
    case PF_TUPLE:
    case PF_FROZENSET:
        for (size_t i = 0; i < v->u.seq.len; i++)
            h = codec_mix(h ^ codec_node_of(v->u.seq.items[i])->aux);
        break;
    default:
        break;
    }
    return (uint32_t)(h ^ h >> 32);
}

/* Equality of hashable values whose items are interned: items compare by
 * pointer, so this is O(size) and agrees with pf_value_equal. */
static bool codec_same(const pf_value *x, const pf_value *y)
{
    if (x->kind != y->kind)
        return false;
    if (x->kind == PF_TUPLE || x->kind == PF_FROZENSET)
        return x->u.seq.len == y->u.seq.len &&
               (!x->u.seq.len ||
                memcmp(x->u.seq.items, y->u.seq.items, x->u.seq.len * sizeof(pf_value *)) == 0);
    return codec_equal(x, y, PF_MAX_DEPTH);
}

static pf_value *codec_node_new(codec_dec *d, pf_kind kind)
{
    codec_node *n = codec_alloc(d->a, sizeof *n);
    if (!n)
        return NULL;
    memset(n, 0, sizeof *n);
    n->v.kind = kind;
    n->height = codec_is_container(kind);
    return &n->v;
}

/* Raise container c's nesting lower bound now that it holds item, so that
 * absurd nesting is refused as it is built rather than after it has all
 * been allocated.  The final walk still has the last word: items can grow
 * deeper after they are added. */
static int codec_nest(codec_dec *d, pf_value *c, const pf_value *item)
{
    unsigned h = codec_node_of(item)->height + 1u;
    codec_node *n = codec_node_of(c);
    if (h <= n->height)
        return 0;
    if (h > PF_MAX_DEPTH)
        return codec_fail(d, "containers nested deeper than %d", PF_MAX_DEPTH);
    n->height = (uint8_t)h;
    return 0;
}

static int codec_intern_grow(codec_dec *d)
{
    size_t cap = d->intern_cap ? d->intern_cap * 2 : 64;
    codec_slot *t = calloc(cap, sizeof *t);
    if (!t) {
        errno = ENOMEM;
        return -1;
    }
    for (size_t i = 0; i < d->intern_cap; i++) {
        if (!d->intern[i].v)
            continue;
        size_t j = d->intern[i].hash & (cap - 1);
        while (t[j].v)
            j = (j + 1) & (cap - 1);
        t[j] = d->intern[i];
    }
    free(d->intern);
    d->intern = t;
    d->intern_cap = cap;
    return 0;
}

/* The canonical node equal to v.  Interning every hashable value makes
 * equal keys the same pointer, so dict and set de-duplication is a pointer
 * comparison, and hashing or comparing a tuple never recurses however much
 * sharing its items have.  If v is a fresh decoder node (owned) it becomes
 * the canonical one; otherwise (a template on the C stack pointing into the
 * input or the stack) a copy is made. */
static pf_value *codec_intern(codec_dec *d, pf_value *v, bool owned)
{
    if (d->intern_count >= d->intern_cap / 2 && codec_intern_grow(d) < 0)
        return NULL;
    uint32_t h = codec_hash(d, v);
    size_t mask = d->intern_cap - 1, i = h & mask;
    for (; d->intern[i].v; i = (i + 1) & mask)
        if (d->intern[i].hash == h && codec_same(d->intern[i].v, v))
            return d->intern[i].v;
    pf_value *c = v;
    if (!owned) {
        if (!(c = codec_node_new(d, v->kind)))
            return NULL;
        c->u = v->u;
        if (v->kind == PF_STR || v->kind == PF_BYTES || v->kind == PF_BIGINT) {
            if (!(c->u.s.ptr = codec_strdup(d->a, v->u.s.ptr, v->u.s.len)))
                return NULL;
        } else if (v->kind == PF_TUPLE && v->u.seq.len) {
            size_t bytes = v->u.seq.len * sizeof *c->u.seq.items;
            if (!(c->u.seq.items = codec_alloc(d->a, bytes)))
                return NULL;
            memcpy(c->u.seq.items, v->u.seq.items, bytes);
        }
    }
    codec_node_of(c)->aux = h;
    codec_node_of(c)->flags |= CODEC_HASHABLE;
    d->intern[i] = (codec_slot){c, h};
    d->intern_count++;
    return c;
}

static uint32_t codec_member_hash(const codec_dec *d, const pf_value *owner, const pf_value *key)
{
    uint64_t h = codec_mix(d->seed ^ (uint64_t)(uintptr_t)owner);
    h = codec_mix(h ^ codec_node_of(key)->aux);
    return (uint32_t)h;
}

static const pf_value *codec_member_key(const codec_member *m)
{
    return m->owner->u.seq.items[m->pos * (m->owner->kind == PF_DICT ? 2 : 1)];
}

static int codec_member_grow(codec_dec *d)
{
    size_t cap = d->member_cap ? d->member_cap * 2 : 64;
    codec_member *t = calloc(cap, sizeof *t);
    if (!t) {
        errno = ENOMEM;
        return -1;
    }
    for (size_t i = 0; i < d->member_cap; i++) {
        codec_member m = d->member[i];
        if (!m.owner)
            continue;
        size_t j = codec_member_hash(d, m.owner, codec_member_key(&m)) & (cap - 1);
        while (t[j].owner)
            j = (j + 1) & (cap - 1);
        t[j] = m;
    }
    free(d->member);
    d->member = t;
    d->member_cap = cap;
    return 0;
}

static int codec_member_insert(codec_dec *d, const pf_value *owner, size_t pos)
{
    if (d->member_count >= d->member_cap / 2 && codec_member_grow(d) < 0)
        return -1;
    codec_member m = {owner, pos};
    size_t mask = d->member_cap - 1;
    size_t j = codec_member_hash(d, owner, codec_member_key(&m)) & mask;
    while (d->member[j].owner)
        j = (j + 1) & mask;
    d->member[j] = m;
    d->member_count++;
    return 0;
}

/* Position of key (an interned value) in the dict or set, or SIZE_MAX. */
static size_t codec_member_find(const codec_dec *d, const pf_value *owner, const pf_value *key)
{
    size_t stride = owner->kind == PF_DICT ? 2 : 1;
    if (!(codec_node_of(owner)->flags & CODEC_INDEXED)) {
        for (size_t i = 0; i < owner->u.seq.len; i++)
            if (owner->u.seq.items[i * stride] == key)
                return i;
        return SIZE_MAX;
    }
    size_t mask = d->member_cap - 1;
    for (size_t j = codec_member_hash(d, owner, key) & mask; d->member[j].owner;
         j = (j + 1) & mask)
        if (d->member[j].owner == owner && codec_member_key(&d->member[j]) == key)
            return d->member[j].pos;
    return SIZE_MAX;
}

/* Record that owner's last entry is new; index the owner once it has
 * outgrown a linear scan. */
static int codec_member_added(codec_dec *d, pf_value *owner)
{
    codec_node *n = codec_node_of(owner);
    size_t len = owner->u.seq.len;
    if (n->flags & CODEC_INDEXED)
        return codec_member_insert(d, owner, len - 1);
    if (len <= CODEC_LINEAR_MAX)
        return 0;
    n->flags |= CODEC_INDEXED;
    for (size_t i = 0; i < len; i++)
        if (codec_member_insert(d, owner, i) < 0)
            return -1;
    return 0;
}

static int codec_check_key(codec_dec *d, const pf_value *key, const char *where)
{
    if (codec_node_of(key)->flags & CODEC_HASHABLE)
        return 0;
    return codec_fail(d, "unhashable %s as %s", codec_kindname(key->kind), where);
}

/* Python semantics: the first key object stays, the last value wins. */
static int codec_dict_put(codec_dec *d, pf_value *dict, pf_value *key, pf_value *value)
{
    if (codec_check_key(d, key, "a dict key") < 0 || codec_nest(d, dict, key) < 0 ||
        codec_nest(d, dict, value) < 0)
        return -1;
    size_t pos = codec_member_find(d, dict, key);
    if (pos != SIZE_MAX) {
        dict->u.seq.items[2 * pos + 1] = value;
        return 0;
    }
    if (codec_reserve(d->a, dict, 1) < 0)
        return codec_nomem(d);
    dict->u.seq.items[2 * dict->u.seq.len] = key;
    dict->u.seq.items[2 * dict->u.seq.len + 1] = value;
    dict->u.seq.len++;
    return codec_member_added(d, dict) < 0 ? codec_nomem(d) : 0;
}

static int codec_set_add(codec_dec *d, pf_value *set, pf_value *item)
{
    if (codec_check_key(d, item, set->kind == PF_SET ? "a set item" : "a frozenset item") < 0 ||
        codec_nest(d, set, item) < 0)
        return -1;
    if (codec_member_find(d, set, item) != SIZE_MAX)
        return 0;
    if (codec_reserve(d->a, set, 1) < 0)
        return codec_nomem(d);
    set->u.seq.items[set->u.seq.len++] = item;
    return codec_member_added(d, set) < 0 ? codec_nomem(d) : 0;
}

static int codec_setitems(codec_dec *d, pf_value *dict, pf_value **items, size_t n)
{
    if (n % 2)
        return codec_fail(d, "odd number of items (%zu) for a dict", n);
    if (codec_reserve(d->a, dict, n / 2) < 0)
        return codec_nomem(d);
    for (size_t i = 0; i < n; i += 2)
        if (codec_dict_put(d, dict, items[i], items[i + 1]) < 0)
            return -1;
    return 0;
}

static int codec_additems(codec_dec *d, pf_value *set, pf_value **items, size_t n)
{
    if (codec_reserve(d->a, set, n) < 0)
        return codec_nomem(d);
    for (size_t i = 0; i < n; i++)
        if (codec_set_add(d, set, items[i]) < 0)
            return -1;
    return 0;
}

static int codec_extend(codec_dec *d, pf_value *list, pf_value **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (codec_nest(d, list, items[i]) < 0)
            return -1;
    if (codec_reserve(d->a, list, n) < 0)
        return codec_nomem(d);
    if (n)
        memcpy(list->u.seq.items + list->u.seq.len, items, n * sizeof *items);
    list->u.seq.len += n;
    return 0;
}

/* ---------------------------------------------------------- decoder stack */

static int codec_push(codec_dec *d, pf_value *v)
{
    if (!v)
        return codec_nomem(d);
    if (d->sp == d->stack_cap) {
        size_t cap = d->stack_cap * 2;
        pf_value **s = realloc(d->stack, cap * sizeof *s);
        if (!s)
            return codec_nomem(d);
        d->stack = s;
        d->stack_cap = cap;
    }
    d->stack[d->sp++] = v;
    return 0;
}

/* Index of the first item above the innermost MARK. */
static size_t codec_base(const codec_dec *d)
{
    return d->nmarks ? d->marks[d->nmarks - 1] : 0;
}

static int codec_need(codec_dec *d, size_t k)
{
    if (d->sp - codec_base(d) < k)
        return codec_fail(d, "stack underflow (needs %zu items, has %zu)", k,
                          d->sp - codec_base(d));
    return 0;
}

/* Pop back to the innermost MARK.  The popped items stay readable at
 * d->stack[*base..*base + *n) until the next push. */
static int codec_pop_mark(codec_dec *d, size_t *base, size_t *n)
{
    if (!d->nmarks)
        return codec_fail(d, "no MARK on the stack");
    *base = d->marks[--d->nmarks];
    *n = d->sp - *base;
    d->sp = *base;
    return 0;
}

/* The container just below a popped MARK, which APPENDS & co. extend. */
static pf_value *codec_target(codec_dec *d, size_t base, pf_kind kind)
{
    if (base == codec_base(d)) {
        codec_fail(d, "no %s below the MARK", codec_kindname(kind));
        return NULL;
    }
    pf_value *t = d->stack[base - 1];
    if (t->kind != kind) {
        codec_fail(d, "target is a %s, not a %s", codec_kindname(t->kind), codec_kindname(kind));
        return NULL;
    }
    return t;
}

static int codec_push_tuple(codec_dec *d, pf_value **items, size_t n)
{
    bool hashable = true;
    for (size_t i = 0; i < n && hashable; i++)
        hashable = codec_node_of(items[i])->flags & CODEC_HASHABLE;
    pf_value tmp = {.kind = PF_TUPLE, .u.seq = {items, n, n}}, *t;
    if (hashable) {
        t = codec_intern(d, &tmp, false);
    } else if ((t = codec_node_new(d, PF_TUPLE)) &&
               (t->u.seq.items = codec_alloc(d->a, n * sizeof *items))) {
        memcpy(t->u.seq.items, items, n * sizeof *items);
        t->u.seq.len = t->u.seq.cap = n;
    }
    if (!t)
        return codec_nomem(d);
    for (size_t i = 0; i < n; i++)
        if (codec_nest(d, t, items[i]) < 0)
            return -1;
    return codec_push(d, t);
}

/* ------------------------------------------------------------------- memo */

static int codec_memo_put(codec_dec *d, uint64_t idx)
{
    if (codec_need(d, 1) < 0)
        return -1;
    /* Picklers number the memo densely; an index far ahead is an attempt
       to make us allocate for it. */
    if (idx >= d->memo_count + CODEC_MEMO_SLACK || idx >= (uint64_t)(d->end - d->start))
        return codec_fail(d, "memo index %llu out of range (%zu entries so far)",
                          (unsigned long long)idx, d->memo_count);
    if (idx >= d->memo_len) {
        size_t cap = d->memo_len * 2 > idx + 16 ? d->memo_len * 2 : (size_t)idx + 16;
        pf_value **m = realloc(d->memo, cap * sizeof *m);
        if (!m)
            return codec_nomem(d);
        memset(m + d->memo_len, 0, (cap - d->memo_len) * sizeof *m);
        d->memo = m;
        d->memo_len = cap;
    }
    if (!d->memo[idx])
        d->memo_count++;
    d->memo[idx] = d->stack[d->sp - 1];
    return 0;
}

static int codec_memo_get(codec_dec *d, uint64_t idx)
{
    if (idx >= d->memo_len || !d->memo[idx])
        return codec_fail(d, "memo index %llu not found", (unsigned long long)idx);
    return codec_push(d, d->memo[idx]);
}

/* ------------------------------------------------------------------ input */

static const uint8_t *codec_take(codec_dec *d, size_t n)
{
    if ((size_t)(d->end - d->p) < n) {
        codec_fail(d, "truncated: needs %zu bytes, %zu left", n, (size_t)(d->end - d->p));
        return NULL;
    }
    const uint8_t *q = d->p;
    d->p += n;
    return q;
}

/* A length field of width bytes; lengths past the end of the input are
 * refused here, before anything is allocated for them. */
static int codec_take_len(codec_dec *d, unsigned width, size_t *len)
{
    const uint8_t *q = codec_take(d, width);
    if (!q)
        return -1;
    uint64_t n = codec_get_le(q, width);
    size_t left = (size_t)(d->end - d->p);
    if (*d->op_at == CODEC_OP_LONG4 && n >> 31) /* LONG4's length is signed */
        return codec_fail(d, "negative length");
    if (n > left)
        return codec_fail(d, "length %llu exceeds the %zu bytes left",
                          (unsigned long long)n, left);
    *len = (size_t)n;
    return 0;
}

/* Text argument up to '\n' (protocol-0 opcodes); *n excludes the newline. */
static const uint8_t *codec_take_line(codec_dec *d, size_t *n)
{
    const uint8_t *q = d->p;
    const uint8_t *nl = memchr(q, '\n', (size_t)(d->end - q));
    if (!nl) {
        codec_fail(d, "truncated: no newline");
        return NULL;
    }
    *n = (size_t)(nl - q);
    d->p = nl + 1;
    return q;
}

/* Strict UTF-8, except that surrogates U+D800..U+DFFF are allowed, as
 * Python's 'surrogatepass' writes them for lone surrogates. */
static bool codec_utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf)
            k = 1, cp = c & 0x1fu, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
            k = 2, cp = c & 0x0fu, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4)
            k = 3, cp = c & 0x07u, min = 0x10000;
        else
            return false;
        if (n - i - 1 < k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff)
            return false;
        i += k + 1;
    }
    return true;
}

static size_t codec_utf8_put(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xe0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

static int codec_push_blob(codec_dec *d, pf_kind kind, const uint8_t *p, size_t n)
{
    if (kind == PF_STR && !codec_utf8_ok(p, n))
        return codec_fail(d, "invalid UTF-8 in a string");
    pf_value tmp = {.kind = kind, .u.s = {(char *)p, n}};
    if (kind != PF_BYTEARRAY)
        return codec_push(d, codec_intern(d, &tmp, false));
    pf_value *v = codec_node_new(d, kind); /* mutable: never shared */
    if (!v || !(v->u.s.ptr = codec_strdup(d->a, p, n)))
        return codec_nomem(d);
    v->u.s.len = n;
    return codec_push(d, v);
}

static int codec_hexval(uint8_t h)
{
    return h >= '0' && h <= '9' ? h - '0'
           : h >= 'a' && h <= 'f' ? h - 'a' + 10
           : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                  : -1;
}

/* UNICODE's raw-unicode-escape, exactly as CPython decodes it: bytes are
 * Latin-1, \uXXXX and \UXXXXXXXX are escapes, any other backslash pair is
 * literal. */
static int codec_push_raw_unicode(codec_dec *d, const uint8_t *s, size_t n)
{
    pf_buf b = {0};
    if (pf_buf_reserve(&b, 2 * n + 1) < 0) /* at most 2 bytes out per byte in */
        return codec_nomem(d);
    uint8_t *o = b.data;
    const char *bad = NULL;
    for (size_t i = 0; i < n && !bad;) {
        uint32_t c = s[i++];
        if (c == '\\' && i < n && (s[i] == 'u' || s[i] == 'U')) {
            size_t k = s[i++] == 'u' ? 4 : 8;
            for (c = 0; k && i < n && codec_hexval(s[i]) >= 0; k--, i++)
                c = c << 4 | (uint32_t)codec_hexval(s[i]);
            if (k)
                bad = "truncated or malformed \\u escape";
            else if (c > 0x10ffff)
                bad = "\\U escape out of range";
        } else if (c == '\\' && i < n) {
            *o++ = '\\';
            c = s[i++];
        }
        if (!bad)
            o += codec_utf8_put(o, c);
    }
    int rc = bad ? codec_fail(d, "%s", bad)
                 : codec_push_blob(d, PF_STR, b.data, (size_t)(o - b.data));
    pf_buf_free(&b);
    return rc;
}

/* Push the integer held in n little-endian two's complement bytes,
 * canonically: PF_INT when it fits in int64, else a minimal PF_BIGINT. */
static int codec_push_le_int(codec_dec *d, const uint8_t *p, size_t n)
{
    while (n > 1 && ((p[n - 1] == 0x00 && !(p[n - 2] & 0x80)) ||
                     (p[n - 1] == 0xff && (p[n - 2] & 0x80))))
        n--;
    pf_value tmp = {.kind = PF_BIGINT, .u.s = {(char *)p, n}};
    if (n <= 8) {
        uint64_t u = codec_get_le(p, (unsigned)n);
        if (n && n < 8 && (p[n - 1] & 0x80))
            u |= ~(uint64_t)0 << (8 * n);
        tmp.kind = PF_INT;
        memcpy(&tmp.u.i, &u, sizeof u);
    }
    return codec_push(d, codec_intern(d, &tmp, false));
}

/* INT and LONG text: [+-]digits, no leading zeros (CPython would read "010"
 * as octal for INT), at most CODEC_MAX_DIGITS digits. */
static int codec_push_text_int(codec_dec *d, const uint8_t *s, size_t n)
{
    bool neg = n && s[0] == '-';
    if (n && (s[0] == '-' || s[0] == '+'))
        s++, n--;
    if (!n || n > CODEC_MAX_DIGITS || (s[0] == '0' && n > 1))
        return codec_fail(d, "malformed integer");
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return codec_fail(d, "malformed integer");
    /* Magnitude in base 2^32, nine digits at a time. */
    uint32_t limbs[CODEC_MAX_DIGITS / 9 + 2];
    size_t nl = 0;
    for (size_t i = 0; i < n;) {
        uint32_t chunk = 0, mul = 1;
        for (size_t j = 0; j < 9 && i < n; j++, i++) {
            chunk = chunk * 10 + (uint32_t)(s[i] - '0');
            mul *= 10;
        }
        uint64_t carry = chunk;
        for (size_t j = 0; j < nl; j++) {
            uint64_t t = (uint64_t)limbs[j] * mul + carry;
            limbs[j] = (uint32_t)t;
            carry = t >> 32;
        }
        if (carry)
            limbs[nl++] = (uint32_t)carry;
    }
    uint8_t le[sizeof limbs + 1];
    size_t nb = nl * 4 + 1; /* + a zero byte, so the magnitude reads positive */
    for (size_t j = 0; j < nl; j++)
        codec_le(le + 4 * j, limbs[j], 4);
    le[nb - 1] = 0;
    if (neg) {
        unsigned carry = 1;
        for (size_t j = 0; j < nb; j++) {
            unsigned t = (uint8_t)~le[j] + carry;
            le[j] = (uint8_t)t;
            carry = t >> 8;
        }
    }
    return codec_push_le_int(d, le, nb);
}

/* FLOAT text as Python's repr writes it; checked first so that strtod's
 * extensions (hex floats, "nan(...)") are not accepted. */
static int codec_push_text_float(codec_dec *d, const uint8_t *s, size_t n)
{
    static const char *const words[] = {"inf", "infinity", "nan"};
    char buf[64];
    size_t i = 0, digits = 0;
    bool ok = false;
    if (n >= sizeof buf)
        return codec_fail(d, "float literal too long");
    if (i < n && (s[i] == '+' || s[i] == '-'))
        i++;
    for (size_t w = 0; w < sizeof words / sizeof *words; w++)
        if (n - i == strlen(words[w]) && strncasecmp((const char *)s + i, words[w], n - i) == 0)
            ok = true;
    if (!ok) {
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            digits++;
        if (i < n && s[i] == '.')
            for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
                digits++;
        if (digits && i < n && (s[i] == 'e' || s[i] == 'E')) {
            size_t e = 0;
            if (++i < n && (s[i] == '+' || s[i] == '-'))
                i++;
            for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
                e++;
            digits = e ? digits : 0;
        }
        ok = digits && i == n;
    }
    if (!ok)
        return codec_fail(d, "malformed float");
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *endp;
    pf_value tmp = {.kind = PF_FLOAT, .u.f = strtod(buf, &endp)};
    if (endp != buf + n)
        return codec_fail(d, "malformed float");
    return codec_push(d, codec_intern(d, &tmp, false));
}

/* Decimal memo index of PUT/GET. */
static int codec_text_index(codec_dec *d, const uint8_t *s, size_t n, uint64_t *out)
{
    if (!n || n > 18)
        return codec_fail(d, "malformed memo index");
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return codec_fail(d, "malformed memo index");
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* Code-carrying opcodes.  For the import opcodes the message also names
 * what the pickle wanted (non-printable bytes shown as '?'). */
static int codec_refuse(codec_dec *d, int op)
{
    char what[80] = "";
    if (op == CODEC_OP_GLOBAL) {
        /* Its argument is "module\nname\n". */
        size_t j = 0;
        int lines = 0;
        for (const uint8_t *q = d->p; q < d->end && lines < 2 && j + 1 < sizeof what; q++) {
            if (*q == '\n') {
                if (++lines == 1)
                    what[j++] = '.';
            } else {
                what[j++] = (char)*q;
            }
        }
        what[j] = '\0';
    } else if (op == CODEC_OP_STACK_GLOBAL && d->sp - codec_base(d) >= 2) {
        const pf_value *m = d->stack[d->sp - 2], *nm = d->stack[d->sp - 1];
        if (m->kind == PF_STR && nm->kind == PF_STR && m->u.s.len < 32 && nm->u.s.len < 32)
            snprintf(what, sizeof what, "%s.%s", m->u.s.ptr, nm->u.s.ptr);
    }
    for (size_t i = 0; what[i]; i++)
        if ((unsigned char)what[i] < 0x20 || (unsigned char)what[i] > 0x7e)
            what[i] = '?';
    return codec_fail(d, "refused%s%s%s: only data opcodes are allowed", *what ? " (" : "", what,
                      *what ? ")" : "");
}

/* -------------------------------------------------------------- main loop */

static int codec_run(codec_dec *d, pf_value **out)
{
    const uint8_t *q;
    size_t n = 0, base = 0;
    uint64_t idx = 0;
    pf_value *t;

    while (d->p < d->end) {
        d->op_at = d->p;
        int op = *d->p++;
        switch (op) {
        case CODEC_OP_PROTO:
            if (!(q = codec_take(d, 1)))
                return -1;
            if (*q > 5)
                return codec_fail(d, "unsupported protocol %u", *q);
            break;
        case CODEC_OP_FRAME:
            /* Frames only bound how much a streaming reader buffers; we
               have the whole input, so a frame just has to fit in it. */
            if (codec_take_len(d, 8, &n) < 0)
                return -1;
            break;
        case CODEC_OP_STOP:
            if (d->nmarks || d->sp != 1)
                return codec_fail(d, "%zu items and %u MARKs left on the stack", d->sp,
                                  d->nmarks);
            if (d->p != d->end)
                return codec_fail(d, "%zu bytes after STOP", (size_t)(d->end - d->p));
            *out = d->stack[0];
            return 0;

        case CODEC_OP_MEMOIZE:
            if (codec_memo_put(d, d->memo_count) < 0)
                return -1;
            break;
        case CODEC_OP_PUT:
            if (!(q = codec_take_line(d, &n)) || codec_text_index(d, q, n, &idx) < 0 ||
                codec_memo_put(d, idx) < 0)
                return -1;
            break;
        case CODEC_OP_BINPUT:
        case CODEC_OP_LONG_BINPUT:
            n = op == CODEC_OP_BINPUT ? 1 : 4;
            if (!(q = codec_take(d, n)) || codec_memo_put(d, codec_get_le(q, (unsigned)n)) < 0)
                return -1;
            break;
        case CODEC_OP_GET:
            if (!(q = codec_take_line(d, &n)) || codec_text_index(d, q, n, &idx) < 0 ||
                codec_memo_get(d, idx) < 0)
                return -1;
            break;
        case CODEC_OP_BINGET:
        case CODEC_OP_LONG_BINGET:
            n = op == CODEC_OP_BINGET ? 1 : 4;
            if (!(q = codec_take(d, n)) || codec_memo_get(d, codec_get_le(q, (unsigned)n)) < 0)
                return -1;
            break;

        case CODEC_OP_MARK:
            /* Picklers nest MARKs no deeper than containers. */
            if (d->nmarks == PF_MAX_DEPTH)
                return codec_fail(d, "MARKs nested deeper than %d", PF_MAX_DEPTH);
            d->marks[d->nmarks++] = d->sp;
            break;
        case CODEC_OP_POP:
            /* Like CPython: with nothing above the MARK, POP drops the MARK. */
            if (d->sp > codec_base(d))
                d->sp--;
            else if (d->nmarks)
                d->nmarks--;
            else
                return codec_fail(d, "stack underflow");
            break;
        case CODEC_OP_POP_MARK:
            if (codec_pop_mark(d, &base, &n) < 0)
                return -1;
            break;
        case CODEC_OP_DUP:
            if (codec_need(d, 1) < 0 || codec_push(d, d->stack[d->sp - 1]) < 0)
                return -1;
            break;

        case CODEC_OP_NONE:
        case CODEC_OP_NEWTRUE:
        case CODEC_OP_NEWFALSE: {
            pf_value tmp = {.kind = op == CODEC_OP_NONE ? PF_NONE : PF_BOOL,
                            .u.b = op == CODEC_OP_NEWTRUE};
            if (codec_push(d, codec_intern(d, &tmp, false)) < 0)
                return -1;
            break;
        }
        case CODEC_OP_INT:
            if (!(q = codec_take_line(d, &n)))
                return -1;
            if (n == 2 && q[0] == '0' && (q[1] == '0' || q[1] == '1')) {
                /* Protocol 0 spells False and True as INT 00 and 01. */
                pf_value tmp = {.kind = PF_BOOL, .u.b = q[1] == '1'};
                if (codec_push(d, codec_intern(d, &tmp, false)) < 0)
                    return -1;
            } else if (codec_push_text_int(d, q, n) < 0) {
                return -1;
            }
            break;
        case CODEC_OP_LONG:
            if (!(q = codec_take_line(d, &n)))
                return -1;
            if (codec_push_text_int(d, q, n && q[n - 1] == 'L' ? n - 1 : n) < 0)
                return -1;
            break;
        case CODEC_OP_BININT:
        case CODEC_OP_BININT1:
        case CODEC_OP_BININT2: {
            n = op == CODEC_OP_BININT ? 4 : op == CODEC_OP_BININT1 ? 1 : 2;
            if (!(q = codec_take(d, n)))
                return -1;
            uint8_t le[5] = {0};
            memcpy(le, q, n); /* BININT is signed; the others get a 0 sign byte */
            if (codec_push_le_int(d, le, op == CODEC_OP_BININT ? 4 : n + 1) < 0)
                return -1;
            break;
        }
        case CODEC_OP_LONG1:
            if (codec_take_len(d, 1, &n) < 0 || codec_push_le_int(d, codec_take(d, n), n) < 0)
                return -1;
            break;
        case CODEC_OP_LONG4:
            if (codec_take_len(d, 4, &n) < 0 || codec_push_le_int(d, codec_take(d, n), n) < 0)
                return -1;
            break;
        case CODEC_OP_BINFLOAT: {
            if (!(q = codec_take(d, 8)))
                return -1;
            uint64_t bits = 0;
            for (int i = 0; i < 8; i++)
                bits = bits << 8 | q[i];
            pf_value tmp = {.kind = PF_FLOAT};
            memcpy(&tmp.u.f, &bits, sizeof bits);
            if (codec_push(d, codec_intern(d, &tmp, false)) < 0)
                return -1;
            break;
        }
        case CODEC_OP_FLOAT:
            if (!(q = codec_take_line(d, &n)) || codec_push_text_float(d, q, n) < 0)
                return -1;
            break;

        case CODEC_OP_STRING:
        case CODEC_OP_BINSTRING:
        case CODEC_OP_SHORT_BINSTRING:
            return codec_fail(d, "Python 2 str is not supported");
        case CODEC_OP_UNICODE:
            if (!(q = codec_take_line(d, &n)) || codec_push_raw_unicode(d, q, n) < 0)
                return -1;
            break;
        case CODEC_OP_SHORT_BINUNICODE:
        case CODEC_OP_BINUNICODE:
        case CODEC_OP_BINUNICODE8:
        case CODEC_OP_SHORT_BINBYTES:
        case CODEC_OP_BINBYTES:
        case CODEC_OP_BINBYTES8:
        case CODEC_OP_BYTEARRAY8: {
            unsigned width = op == CODEC_OP_SHORT_BINUNICODE || op == CODEC_OP_SHORT_BINBYTES ? 1
                             : op == CODEC_OP_BINUNICODE || op == CODEC_OP_BINBYTES       ? 4
                                                                                          : 8;
            pf_kind kind = op == CODEC_OP_BYTEARRAY8 ? PF_BYTEARRAY
                           : op == CODEC_OP_SHORT_BINUNICODE || op == CODEC_OP_BINUNICODE ||
                                   op == CODEC_OP_BINUNICODE8
                               ? PF_STR
                               : PF_BYTES;
            if (codec_take_len(d, width, &n) < 0 ||
                codec_push_blob(d, kind, codec_take(d, n), n) < 0)
                return -1;
            break;
        }

        case CODEC_OP_EMPTY_TUPLE:
            if (codec_push_tuple(d, NULL, 0) < 0)
                return -1;
            break;
        case CODEC_OP_TUPLE:
            if (codec_pop_mark(d, &base, &n) < 0 || codec_push_tuple(d, d->stack + base, n) < 0)
                return -1;
            break;
        case CODEC_OP_TUPLE1:
        case CODEC_OP_TUPLE2:
        case CODEC_OP_TUPLE3:
            n = (size_t)(op - CODEC_OP_TUPLE1 + 1);
            if (codec_need(d, n) < 0)
                return -1;
            d->sp -= n;
            if (codec_push_tuple(d, d->stack + d->sp, n) < 0)
                return -1;
            break;

        case CODEC_OP_EMPTY_LIST:
        case CODEC_OP_EMPTY_DICT:
        case CODEC_OP_EMPTY_SET:
            if (codec_push(d, codec_node_new(d, op == CODEC_OP_EMPTY_LIST   ? PF_LIST
                                                : op == CODEC_OP_EMPTY_DICT ? PF_DICT
                                                                            : PF_SET)) < 0)
                return -1;
            break;
        case CODEC_OP_LIST:
        case CODEC_OP_DICT:
        case CODEC_OP_FROZENSET: {
            if (codec_pop_mark(d, &base, &n) < 0)
                return -1;
            pf_kind kind = op == CODEC_OP_LIST   ? PF_LIST
                           : op == CODEC_OP_DICT ? PF_DICT
                                                 : PF_FROZENSET;
            if (!(t = codec_node_new(d, kind)))
                return codec_nomem(d);
            int rc = kind == PF_LIST   ? codec_extend(d, t, d->stack + base, n)
                     : kind == PF_DICT ? codec_setitems(d, t, d->stack + base, n)
                                       : codec_additems(d, t, d->stack + base, n);
            if (rc < 0)
                return -1;
            if (kind == PF_FROZENSET && !(t = codec_intern(d, t, true)))
                return codec_nomem(d);
            if (codec_push(d, t) < 0)
                return -1;
            break;
        }
        case CODEC_OP_APPEND:
            if (codec_need(d, 2) < 0)
                return -1;
            if ((t = d->stack[d->sp - 2])->kind != PF_LIST)
                return codec_fail(d, "target is a %s, not a list", codec_kindname(t->kind));
            if (codec_extend(d, t, d->stack + d->sp - 1, 1) < 0)
                return -1;
            d->sp--;
            break;
        case CODEC_OP_SETITEM:
            if (codec_need(d, 3) < 0)
                return -1;
            if ((t = d->stack[d->sp - 3])->kind != PF_DICT)
                return codec_fail(d, "target is a %s, not a dict", codec_kindname(t->kind));
            if (codec_dict_put(d, t, d->stack[d->sp - 2], d->stack[d->sp - 1]) < 0)
                return -1;
            d->sp -= 2;
            break;
        case CODEC_OP_APPENDS:
        case CODEC_OP_SETITEMS:
        case CODEC_OP_ADDITEMS: {
            if (codec_pop_mark(d, &base, &n) < 0)
                return -1;
            pf_kind kind = op == CODEC_OP_APPENDS    ? PF_LIST
                           : op == CODEC_OP_SETITEMS ? PF_DICT
                                                     : PF_SET;
            if (!(t = codec_target(d, base, kind)))
                return -1;
            int rc = kind == PF_LIST   ? codec_extend(d, t, d->stack + base, n)
                     : kind == PF_DICT ? codec_setitems(d, t, d->stack + base, n)
                                       : codec_additems(d, t, d->stack + base, n);
            if (rc < 0)
                return -1;
            break;
        }

        case CODEC_OP_GLOBAL:
        case CODEC_OP_STACK_GLOBAL:
        case CODEC_OP_REDUCE:
        case CODEC_OP_BUILD:
        case CODEC_OP_INST:
        case CODEC_OP_OBJ:
        case CODEC_OP_NEWOBJ:
        case CODEC_OP_NEWOBJ_EX:
        case CODEC_OP_EXT1:
        case CODEC_OP_EXT2:
        case CODEC_OP_EXT4:
        case CODEC_OP_PERSID:
        case CODEC_OP_BINPERSID:
        case CODEC_OP_NEXT_BUFFER:
        case CODEC_OP_READONLY_BUFFER:
            return codec_refuse(d, op);
        default:
            return codec_fail(d, "unknown opcode");
        }
    }
    d->op_at = NULL;
    return codec_fail(d, "truncated: no STOP in %zu bytes", (size_t)(d->end - d->start));
}

/* ------------------------------------------------------------- final walk */

/* Visit every node once (memoised by colour), rejecting cycles and nesting
 * beyond PF_MAX_DEPTH, and computing the exact size pf_encode would write,
 * shared references unfolded.  Capping that at PF_MAX_FRAME keeps a small
 * pickle of a deeply shared DAG from becoming an exponential encode or
 * compare: any decoded value re-encodes into one frame.  Recursion is
 * bounded by PF_MAX_DEPTH + 1. */
static int codec_walk(codec_dec *d, const pf_value *v, unsigned depth, uint64_t *size,
                      unsigned *height)
{
    if (!codec_is_container(v->kind)) {
        *size = codec_scalar_size(v);
        *height = 0;
        return 0;
    }
    codec_node *n = codec_node_of(v);
    if (!(n->flags & CODEC_BLACK)) {
        if (n->flags & CODEC_GRAY)
            return codec_fail(d, "cycle: a %s contains itself", codec_kindname(v->kind));
        if (depth >= PF_MAX_DEPTH)
            return codec_fail(d, "containers nested deeper than %d", PF_MAX_DEPTH);
        n->flags |= CODEC_GRAY;
        size_t len = v->u.seq.len, slots = len * (v->kind == PF_DICT ? 2 : 1);
        /* Opcode overhead; must match codec_encode_value. */
        uint64_t sum = v->kind == PF_TUPLE ? (len == 0 ? 1 : len <= 3 ? 1 : 2)
                       : v->kind == PF_FROZENSET ? 2
                                                 : (len ? 3 : 1);
        unsigned h = 0;
        for (size_t i = 0; i < slots; i++) {
            uint64_t s = 0;
            unsigned ch = 0;
            if (codec_walk(d, v->u.seq.items[i], depth + 1, &s, &ch) < 0)
                return -1;
            sum += s;
            if (sum > PF_MAX_FRAME)
                return codec_fail(d, "value would re-encode to more than %u bytes "
                                     "(shared references unfolded)", PF_MAX_FRAME);
            h = ch > h ? ch : h;
        }
        n->flags = (uint8_t)((n->flags & ~CODEC_GRAY) | CODEC_BLACK);
        n->aux = (uint32_t)sum;
        n->height = (uint8_t)(h + 1);
    }
    *size = n->aux;
    *height = n->height;
    if (depth + *height > PF_MAX_DEPTH)
        return codec_fail(d, "containers nested deeper than %d", PF_MAX_DEPTH);
    return 0;
}

/* On failure the arena keeps whatever the attempt allocated (within the
 * budget) until it is freed. */
int pf_decode(pf_arena *a, const uint8_t *data, size_t len, pf_value **out, char *err,
              size_t errlen)
{
    codec_dec d = {.a = a, .err = err, .errlen = err ? errlen : 0};
    if (d.errlen)
        err[0] = '\0';
    if (!a || !out || (!data && len) || !len || len > PF_MAX_FRAME) {
        errno = EINVAL;
        if (!a || !out || (!data && len))
            return codec_fail(&d, "invalid arguments");
        return len ? codec_fail(&d, "pickle of %zu bytes is larger than %u", len, PF_MAX_FRAME)
                   : codec_fail(&d, "empty pickle");
    }
    d.start = d.p = data;
    d.end = data + len;

    /* The budget is relative to what the arena already holds, and never
       loosens a limit the caller set. */
    size_t saved_limit = a->limit;
    size_t budget = len > (SIZE_MAX - PF_DECODE_SLACK) / PF_DECODE_FACTOR
                        ? SIZE_MAX
                        : len * PF_DECODE_FACTOR + PF_DECODE_SLACK;
    size_t limit = a->used > SIZE_MAX - budget ? SIZE_MAX : a->used + budget;
    if (saved_limit && saved_limit < limit)
        limit = saved_limit;
    a->limit = limit;
    /* Seed from ASLR'd addresses: free, and unknown to whoever made the input. */
    d.seed = codec_mix((uint64_t)(uintptr_t)&d ^ (uint64_t)(uintptr_t)a << 17 ^ len);

    pf_value *root = NULL;
    /* Allocated up front so that stack + base is never arithmetic on NULL. */
    d.stack = malloc(64 * sizeof *d.stack);
    d.stack_cap = d.stack ? 64 : 0;
    int rc = d.stack ? codec_run(&d, &root) : codec_nomem(&d);
    if (rc == 0) {
        uint64_t size = 0;
        unsigned height = 0;
        d.op_at = NULL;
        rc = codec_walk(&d, root, 0, &size, &height);
        if (rc == 0 && size + 3 > PF_MAX_FRAME) /* + PROTO 4 and STOP */
            rc = codec_fail(&d, "value would re-encode to more than %u bytes", PF_MAX_FRAME);
    }
    a->limit = saved_limit;
    free(d.stack);
    free(d.memo);
    free(d.intern);
    free(d.member);
    if (rc == 0)
        *out = root;
    else
        errno = d.oom ? ENOMEM : EINVAL;
    return rc;
}

/* ==========================================================================
 * Framing
 *
 * Owns the wire format: a 4-byte big-endian payload length, then the
 * payload, with optional SCM_RIGHTS fds riding on the first byte.  Calls
 * pf_encode and pf_buf_* from the codec section, and libc.  Works on
 * sockets and, without fds, on pipes and files; the reader never reads
 * past the frame it is on, so the bytes and fds of the next frame stay in
 * the kernel for whoever reads next.
 * ========================================================================== */

#define FRAME_CHUNK (64u * 1024u) /* body buffer grows by about this as bytes arrive */

/* Internal feed result: bytes arrived but the frame is not complete. */
#define FRAME_PROGRESS 2

static int frame_wait(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, timeout_ms);
    if (n > 0 && (p.revents & POLLNVAL)) {
        errno = EBADF;
        return -1;
    }
    return n;
}

int pf_frame_write(int fd, const void *payload, size_t len, const int *fds, int nfds)
{
    if (len > PF_MAX_FRAME) {
        errno = EMSGSIZE;
        return -1;
    }
    if (nfds < 0 || nfds > PF_MAX_FDS || (nfds && !fds) || (len && !payload)) {
        errno = EINVAL;
        return -1;
    }
    uint8_t hdr[PF_FRAME_HEADER] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16),
                                    (uint8_t)(len >> 8), (uint8_t)len};
    struct iovec iov[2] = {{hdr, sizeof hdr}, {(void *)payload, len}};
    struct iovec *v = iov;
    int niov = len ? 2 : 1;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * PF_MAX_FDS)];
    } ctl;
    struct msghdr m = {0};
    if (nfds) {
        memset(&ctl, 0, sizeof ctl);
        m.msg_control = ctl.buf;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    bool sock = true;
    while (niov) {
        ssize_t n;
        if (sock) {
            m.msg_iov = v;
            m.msg_iovlen = (size_t)niov;
            n = sendmsg(fd, &m, MSG_NOSIGNAL); /* a dead peer is EPIPE, not a signal */
            if (n < 0 && errno == ENOTSOCK && !nfds) {
                sock = false; /* a pipe or file; fds could not travel anyway */
                continue;
            }
        } else {
            n = writev(fd, v, niov);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) &&
                (frame_wait(fd, POLLOUT, -1) >= 0 || errno == EINTR))
                continue; /* non-blocking fd: the whole frame still goes out */
            return -1;
        }
        m.msg_control = NULL; /* the fds went with the first byte */
        m.msg_controllen = 0;
        size_t done = (size_t)n;
        for (; niov && done >= v->iov_len; niov--, v++)
            done -= v->iov_len;
        if (niov) {
            v->iov_base = (char *)v->iov_base + done;
            v->iov_len -= done;
        }
    }
    return 0;
}

int pf_send_value(int fd, const pf_value *v)
{
    pf_buf b = {0};
    int rc = pf_encode(&b, v);
    if (rc == 0)
        rc = pf_frame_write(fd, b.data, b.len, NULL, 0);
    int saved = errno;
    pf_buf_free(&b);
    errno = saved;
    return rc;
}

void pf_reader_init(pf_reader *r)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < PF_MAX_FDS; i++)
        r->fds[i] = -1;
}

/* fds[0..nfds) still in the reader were not claimed (a caller claims them
 * by copying them and setting nfds to 0); close them rather than leak. */
static void frame_close_fds(pf_reader *r)
{
    for (int i = 0; i < r->nfds; i++)
        if (r->fds[i] >= 0)
            close(r->fds[i]);
    r->nfds = 0;
    for (int i = 0; i < PF_MAX_FDS; i++)
        r->fds[i] = -1;
}

void pf_reader_reset(pf_reader *r)
{
    frame_close_fds(r);
    r->hdr_have = 0;
    r->need = 0;
    r->body.len = 0;
}

void pf_reader_free(pf_reader *r)
{
    frame_close_fds(r);
    pf_buf_free(&r->body);
    pf_reader_init(r);
}

static size_t frame_len(const pf_reader *r)
{
    return (size_t)r->hdr[0] << 24 | (size_t)r->hdr[1] << 16 | (size_t)r->hdr[2] << 8 | r->hdr[3];
}

static void frame_take_fds(pf_reader *r, struct msghdr *m)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof fd, sizeof fd);
            if (r->nfds < PF_MAX_FDS)
                r->fds[r->nfds++] = fd;
            else
                close(fd); /* more than a frame may carry */
        }
    }
}

/* One recvmsg(2) (read(2) on a non-socket), retried on EINTR.  A control
 * buffer for PF_MAX_FDS: the kernel discards any fds beyond it. */
static ssize_t frame_recv(pf_reader *r, int fd, void *dst, size_t want, int flags)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * PF_MAX_FDS)];
    } ctl;
    for (;;) {
        struct iovec iov = {dst, want};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                           .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(fd, &m, flags | MSG_CMSG_CLOEXEC);
        if (n >= 0)
            frame_take_fds(r, &m);
        else if (errno == ENOTSOCK)
            n = read(fd, dst, want);
        if (n >= 0 || errno != EINTR)
            return n;
    }
}

/* The state needs no read: a complete frame, or a header already refused. */
static int frame_ready(const pf_reader *r)
{
    if (r->hdr_have < PF_FRAME_HEADER)
        return PF_READ_AGAIN;
    if (frame_len(r) > PF_MAX_FRAME) {
        errno = EMSGSIZE;
        return PF_READ_ERROR;
    }
    return r->body.len == r->need ? PF_READ_FRAME : PF_READ_AGAIN;
}

/* One read of at most what the current frame still lacks. */
static int frame_step(pf_reader *r, int fd, int flags)
{
    int rc = frame_ready(r);
    if (rc != PF_READ_AGAIN)
        return rc;
    uint8_t *dst;
    size_t want;
    if (r->hdr_have < PF_FRAME_HEADER) {
        dst = r->hdr + r->hdr_have;
        want = PF_FRAME_HEADER - r->hdr_have;
    } else {
        size_t left = r->need - r->body.len;
        if (r->body.cap == r->body.len) {
            /* Grow with what arrives, not with what the header claims. */
            size_t grow = r->body.len > FRAME_CHUNK ? r->body.len : FRAME_CHUNK;
            if (pf_buf_reserve(&r->body, left < grow ? left : grow) < 0)
                return PF_READ_ERROR;
        }
        dst = r->body.data + r->body.len;
        want = r->body.cap - r->body.len < left ? r->body.cap - r->body.len : left;
    }
    ssize_t n = frame_recv(r, fd, dst, want, flags);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? PF_READ_AGAIN : PF_READ_ERROR;
    if (n == 0) {
        if (r->hdr_have == 0)
            return PF_READ_EOF;
        errno = EPROTO; /* the peer closed inside a frame */
        return PF_READ_ERROR;
    }
    if (r->hdr_have < PF_FRAME_HEADER) {
        r->hdr_have += (size_t)n;
        if (r->hdr_have == PF_FRAME_HEADER) {
            r->need = frame_len(r);
            r->body.len = 0;
            /* Checked before the body buffer is touched; and a zero-length
               payload still gets a non-NULL body.data. */
            if (r->need <= PF_MAX_FRAME && pf_buf_reserve(&r->body, 1) < 0)
                return PF_READ_ERROR;
        }
    } else {
        r->body.len += (size_t)n;
    }
    rc = frame_ready(r);
    return rc == PF_READ_AGAIN ? FRAME_PROGRESS : rc;
}

int pf_reader_feed(pf_reader *r, int fd)
{
    int rc;
    while ((rc = frame_step(r, fd, 0)) == FRAME_PROGRESS)
        ;
    return rc;
}

static int64_t frame_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Polls before every read, so a peer that stalls mid-frame cannot block us
 * past the deadline even when fd is in blocking mode. */
int pf_read_frame(pf_reader *r, int fd, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? 0 : frame_now_ms() + timeout_ms;
    for (;;) {
        int rc = frame_ready(r);
        if (rc != PF_READ_AGAIN)
            return rc;
        int ms = -1;
        if (timeout_ms >= 0) {
            int64_t left = deadline - frame_now_ms();
            ms = left > 0 ? (int)(left < INT32_MAX ? left : INT32_MAX) : 0;
        }
        int n = frame_wait(fd, POLLIN, ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return PF_READ_ERROR;
        if (n == 0) {
            errno = ETIMEDOUT;
            return PF_READ_ERROR;
        }
        rc = frame_step(r, fd, MSG_DONTWAIT);
        if (rc != FRAME_PROGRESS && rc != PF_READ_AGAIN)
            return rc;
    }
}

/* ==========================================================================
 * SHA-256
 *
 * Owns pf_sha256_* (FIPS 180-4), for content fingerprints.  Plain portable
 * C.  Calls nothing else in pytest-fast.
 * ========================================================================== */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t sha_rotr(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

static uint32_t sha_load_be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           (uint32_t)p[3];
}

static void sha_store_be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Compress one 64-byte block into the state. */
static void sha_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = sha_load_be(p + 4 * i);
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = sha_rotr(w[i - 15], 7) ^ sha_rotr(w[i - 15], 18) ^
                      (w[i - 15] >> 3);
        uint32_t s1 = sha_rotr(w[i - 2], 17) ^ sha_rotr(w[i - 2], 19) ^
                      (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    uint32_t e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t s1 = sha_rotr(e, 6) ^ sha_rotr(e, 11) ^ sha_rotr(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = k + s1 + ch + sha_k[i] + w[i];
        uint32_t s0 = sha_rotr(a, 2) ^ sha_rotr(a, 13) ^ sha_rotr(a, 22);
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = s0 + maj;
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

void pf_sha256_init(pf_sha256 *c)
{
    static const uint32_t iv[8] = {
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    };
    memcpy(c->h, iv, sizeof iv);
    c->total = 0;
    c->fill = 0;
}

void pf_sha256_update(pf_sha256 *c, const void *p, size_t n)
{
    const uint8_t *s = p;
    c->total += n;
    if (c->fill > 0) {
        size_t take = 64 - c->fill < n ? 64 - c->fill : n;
        memcpy(c->block + c->fill, s, take);
        c->fill += take;
        s += take;
        n -= take;
        if (c->fill < 64)
            return;
        sha_block(c->h, c->block);
        c->fill = 0;
    }
    /* Whole blocks straight from the caller's buffer, no copy. */
    for (; n >= 64; s += 64, n -= 64)
        sha_block(c->h, s);
    if (n > 0)
        memcpy(c->block, s, n);
    c->fill = n;
}

/* Leaves c spent; call pf_sha256_init again to reuse it. */
void pf_sha256_final(pf_sha256 *c, uint8_t out[32])
{
    uint64_t bits = c->total * 8;
    c->block[c->fill++] = 0x80;
    if (c->fill > 56) {
        /* No room for the length: pad out this block and use another. */
        memset(c->block + c->fill, 0, 64 - c->fill);
        sha_block(c->h, c->block);
        c->fill = 0;
    }
    memset(c->block + c->fill, 0, 56 - c->fill);
    sha_store_be(c->block + 56, (uint32_t)(bits >> 32));
    sha_store_be(c->block + 60, (uint32_t)bits);
    sha_block(c->h, c->block);
    for (int i = 0; i < 8; i++)
        sha_store_be(out + 4 * i, c->h[i]);
}

void pf_sha256_hex(const void *p, size_t n, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    pf_sha256 c;
    uint8_t d[32];
    pf_sha256_init(&c);
    pf_sha256_update(&c, p, n);
    pf_sha256_final(&c, d);
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[64] = '\0';
}

/* ==========================================================================
 * Worker count
 *
 * Owns pf_cpulist_count, pf_cgroup{1,2}_quota, pf_cores_detect,
 * pf_cores_combine and pf_parse_workers: how many test workers to fork by
 * default, and why.  The parsers take file contents as strings so the tests
 * can feed fixtures; detection reads sysfs/procfs (Linux) or sysctl (macOS).
 * Calls only libc.
 * ========================================================================== */

static const char *cores_skip_space(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    return s;
}

/* Parse decimal digits at *s, no sign, no base prefix (unlike strtoul),
 * rejecting values above max; advance *s past them. */
static int cores_digits(const char **s, uint64_t max, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (max - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *s = p;
    *out = v;
    return 0;
}

/* The whole of s is one decimal number, give or take surrounding space. */
static int cores_whole(const char *s, uint64_t max, uint64_t *out)
{
    s = cores_skip_space(s);
    if (cores_digits(&s, max, out) < 0)
        return -1;
    return *cores_skip_space(s) ? -1 : 0;
}

int pf_cpulist_count(const char *list)
{
    const char *s = cores_skip_space(list);
    int64_t count = 0, prev = -1;
    /* CPU ids stay below INT_MAX, so the count of an ascending list fits. */
    const uint64_t max_id = INT_MAX - 1;
    for (;;) {
        uint64_t lo, hi;
        if (cores_digits(&s, max_id, &lo) < 0)
            return -1;
        hi = lo;
        if (*s == '-') {
            s++;
            if (cores_digits(&s, max_id, &hi) < 0 || hi < lo)
                return -1;
        }
        /* The kernel prints ranges ascending; overlap would double count. */
        if ((int64_t)lo <= prev)
            return -1;
        count += (int64_t)(hi - lo) + 1;
        prev = (int64_t)hi;
        if (*s != ',')
            break;
        s++;
    }
    return *cores_skip_space(s) ? -1 : (int)count;
}

/* cpu.max is "$QUOTA $PERIOD" or "max $PERIOD", both in microseconds. */
double pf_cgroup2_quota(const char *cpu_max)
{
    const char *s = cores_skip_space(cpu_max);
    uint64_t quota = 0, period;
    bool unlimited = strncmp(s, "max", 3) == 0;
    if (unlimited)
        s += 3;
    else if (cores_digits(&s, UINT64_MAX, &quota) < 0 || quota == 0)
        return -1;
    if (*s != ' ' && *s != '\t')
        return -1;
    if (cores_whole(s, UINT64_MAX, &period) < 0 || period == 0)
        return -1;
    return unlimited ? 0 : (double)quota / (double)period;
}

/* cpu.cfs_quota_us is -1 when unlimited. */
double pf_cgroup1_quota(const char *quota_us, const char *period_us)
{
    uint64_t quota, period;
    if (cores_whole(period_us, UINT64_MAX, &period) < 0 || period == 0)
        return -1;
    const char *s = cores_skip_space(quota_us);
    if (s[0] == '-' && s[1] == '1' && !*cores_skip_space(s + 2))
        return 0;
    if (cores_whole(s, UINT64_MAX, &quota) < 0 || quota == 0)
        return -1;
    return (double)quota / (double)period;
}

#ifdef __linux__
/* Read a small procfs/sysfs file as a string.  A file that fills the
 * buffer counts as unreadable rather than being silently cut short. */
static int cores_read(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    ssize_t r = 0;
    while (len < size - 1) {
        r = read(fd, buf + len, size - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    return r < 0 || len == size - 1 ? -1 : 0;
}

/* Quota set on one cgroup directory: >0 CPUs, 0 unlimited, -1 when the
 * files are missing (not this hierarchy, controller not enabled here). */
static double cores_cgroup_level(const char *dir, bool v2)
{
    char path[PATH_MAX + 32], quota[64], period[64];
    if (v2) {
        snprintf(path, sizeof path, "%s/cpu.max", dir);
        return cores_read(path, quota, sizeof quota) < 0 ? -1
                                                          : pf_cgroup2_quota(quota);
    }
    snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
    if (cores_read(path, quota, sizeof quota) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
    if (cores_read(path, period, sizeof period) < 0)
        return -1;
    return pf_cgroup1_quota(quota, period);
}

/* Tightest quota from root+rel up to root, since every ancestor's limit
 * applies too.  Walking up also copes with containers that mount their own
 * cgroup as root while /proc/self/cgroup shows the host path: the missing
 * levels are skipped.  0 when no level limits, -1 when no level has the
 * files at all. */
static double cores_cgroup_walk(const char *root, const char *rel, bool v2)
{
    char dir[PATH_MAX];
    /* Outside our cgroup namespace: our cgroup is not under root. */
    if (rel[0] != '/' || strstr(rel, "/.."))
        return -1;
    size_t rootlen = strlen(root);
    int n = snprintf(dir, sizeof dir, "%s%s", root, rel);
    if (n < 0 || (size_t)n >= sizeof dir)
        return -1;
    size_t len = (size_t)n;
    double best = -1;
    for (;;) {
        while (len > rootlen && dir[len - 1] == '/')
            len--;
        dir[len] = '\0';
        double q = cores_cgroup_level(dir, v2);
        if (q > 0 && (best <= 0 || q < best))
            best = q;
        else if (q == 0 && best < 0)
            best = 0;
        if (len <= rootlen)
            return best;
        while (len > rootlen && dir[len - 1] != '/')
            len--;
    }
}

/* Is "cpu" one of the comma-separated v1 controllers? */
static bool cores_has_cpu(const char *controllers)
{
    for (const char *s = controllers;;) {
        size_t n = strcspn(s, ",");
        if (n == 3 && memcmp(s, "cpu", 3) == 0)
            return true;
        if (!s[n])
            return false;
        s += n + 1;
    }
}

/* CPU quota of this process in cores, 0 when unlimited or unknown.
 * proc_cgroup is /proc/self/cgroup and cgroot /sys/fs/cgroup, except in
 * the tests.  Tries v2 ("0::/path") first, then the v1 cpu controller,
 * which is where the limit lives on hybrid hosts. */
static double cores_cgroup_quota(const char *proc_cgroup, const char *cgroot)
{
    char buf[16384], root[PATH_MAX];
    const char *v2 = NULL, *v1 = NULL;
    if (cores_read(proc_cgroup, buf, sizeof buf) < 0)
        return 0;
    /* Lines are "hierarchy-id:controllers:path"; the path may hold ':'. */
    for (char *line = buf; *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (c2) {
            *c2 = '\0';
            if (strcmp(line, "0:") == 0)
                v2 = c2 + 1;
            else if (cores_has_cpu(c1 + 1))
                v1 = c2 + 1;
        }
        if (!end)
            break;
        line = end + 1;
    }
    double q = v2 ? cores_cgroup_walk(cgroot, v2, true) : -1;
    static const char *const v1_mounts[] = {"cpu,cpuacct", "cpu"};
    for (size_t i = 0; v1 && q < 0 && i < 2; i++) {
        int n = snprintf(root, sizeof root, "%s/%s", cgroot, v1_mounts[i]);
        if (n > 0 && (size_t)n < sizeof root)
            q = cores_cgroup_walk(root, v1, false);
    }
    return q > 0 ? q : 0;
}

/* Hybrid Intel CPUs expose their P-cores as the cpu_core PMU; the file is
 * absent elsewhere. */
static int cores_linux_perf(void)
{
    char buf[8192];
    if (cores_read("/sys/devices/cpu_core/cpus", buf, sizeof buf) < 0)
        return 0;
    int n = pf_cpulist_count(buf);
    return n > 0 ? n : 0;
}

/* CPUs in our affinity mask.  The set is grown until the kernel accepts
 * its size, so machines with more than CPU_SETSIZE (1024) CPUs count too. */
static int cores_affinity(void)
{
    for (int n = 1024; n <= (1 << 22); n *= 2) {
        cpu_set_t *set = CPU_ALLOC(n);
        if (!set)
            return 0;
        size_t size = CPU_ALLOC_SIZE(n);
        int r = sched_getaffinity(0, size, set);
        int err = errno;
        int count = r == 0 ? CPU_COUNT_S(size, set) : 0;
        CPU_FREE(set);
        if (r == 0)
            return count;
        if (err != EINVAL)
            return 0;
    }
    return 0;
}
#endif /* __linux__ */

#ifdef __APPLE__
/* A positive integer sysctl, or 0 when absent. */
static int cores_sysctl(const char *name)
{
    int v = 0;
    size_t len = sizeof v;
    if (sysctlbyname(name, &v, &len, NULL, 0) != 0 || len != sizeof v)
        return 0;
    return v > 0 ? v : 0;
}
#endif

void pf_cores_detect(pf_cores *out)
{
    memset(out, 0, sizeof *out);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    out->online = n > 0 && n <= INT_MAX ? (int)n : 1;
#ifdef __APPLE__
    /* P-cores on Apple silicon; older macOS lacks perflevels, so fall back
     * to physical cores, and failing that to online (perf stays 0). */
    out->perf = cores_sysctl("hw.perflevel0.physicalcpu");
    if (out->perf == 0)
        out->perf = cores_sysctl("hw.physicalcpu");
#elif defined(__linux__)
    out->perf = cores_linux_perf();
    out->affinity = cores_affinity();
    out->quota = cores_cgroup_quota("/proc/self/cgroup", "/sys/fs/cgroup");
#endif
    pf_cores_combine(out);
}

int pf_cores_combine(pf_cores *c)
{
    int n = c->perf > 0 ? c->perf : c->online > 0 ? c->online : 1;
    if (c->affinity > 0 && c->affinity < n)
        n = c->affinity;
    const char *note = "";
    /* Only a quota below n can bind; comparing first keeps the conversion
     * to int in range. */
    if (c->quota > 0 && c->quota < n) {
        int cap = (int)c->quota; /* floor, since quota > 0 */
        if (cap < 1) {
            cap = 1;
            note = " (rounded down, at least 1)";
        } else if (cap != c->quota) {
            note = " (rounded down)";
        }
        n = cap;
    }
    c->workers = n;

    char perf[48] = "", affinity[32] = "affinity unknown", quota[80];
    if (c->perf > 0)
        snprintf(perf, sizeof perf, ", %d performance cores", c->perf);
    if (c->affinity > 0)
        snprintf(affinity, sizeof affinity, "affinity %d", c->affinity);
    if (c->quota > 0)
        snprintf(quota, sizeof quota, "cgroup quota %.2f CPUs%s", c->quota,
                 note);
    else
        snprintf(quota, sizeof quota, "no cgroup quota");
    snprintf(c->why, sizeof c->why, "%d: %d online%s, %s, %s", n, c->online,
             perf, affinity, quota);
    return n;
}

int pf_parse_workers(const char *s, int *out)
{
    uint64_t v;
    /* 4096 is a sanity bound: more workers than that is a typo. */
    if (cores_whole(s, 4096, &v) < 0 || v < 1)
        return -1;
    *out = (int)v;
    return 0;
}


/* ==========================================================================
 * Arguments
 *
 * Owns: the table of pytest options whose meaning is known here.
 * Splits a pytest command line into what shapes one run (selection and
 * reporting, applied per run against the cached collection) and what
 * shapes collection (part of the zygote's identity: a change re-collects).
 * Unknown options are conservatively collection-affecting.  Calls Utilities.
 * ========================================================================== */

enum {
    ARG_VALUE = 1,     /* takes a value */
    ARG_RUN = 2,       /* per run (otherwise collection-affecting) */
    ARG_REFUSE = 4     /* not available in the lean CLI */
};

typedef struct arg_spec {
    const char *name;  /* "-k" or "--maxfail" */
    int flags;
} arg_spec;

static const arg_spec arg_table[] = {
    {"-k", ARG_VALUE | ARG_RUN},
    {"-m", ARG_VALUE | ARG_RUN},
    {"--deselect", ARG_VALUE | ARG_RUN},
    {"--maxfail", ARG_VALUE | ARG_RUN},
    {"-x", ARG_RUN},
    {"--exitfirst", ARG_RUN},
    {"--lf", ARG_RUN},
    {"--last-failed", ARG_RUN},
    {"--ff", ARG_RUN},
    {"--failed-first", ARG_RUN},
    {"--nf", ARG_RUN},
    {"--new-first", ARG_RUN},
    {"--lfnf", ARG_VALUE | ARG_RUN},
    {"--last-failed-no-failures", ARG_VALUE | ARG_RUN},
    {"-v", ARG_RUN},
    {"--verbose", ARG_RUN},
    {"-q", ARG_RUN},
    {"--quiet", ARG_RUN},
    {"--verbosity", ARG_VALUE | ARG_RUN},
    {"-s", ARG_RUN},
    {"--capture", ARG_VALUE | ARG_RUN},
    {"--tb", ARG_VALUE | ARG_RUN},
    {"-r", ARG_VALUE | ARG_RUN},
    {"-l", ARG_RUN},
    {"--showlocals", ARG_RUN},
    {"--no-showlocals", ARG_RUN},
    {"--full-trace", ARG_RUN},
    {"--durations", ARG_VALUE | ARG_RUN},
    {"--durations-min", ARG_VALUE | ARG_RUN},
    {"--color", ARG_VALUE | ARG_RUN},
    {"--code-highlight", ARG_VALUE | ARG_RUN},
    {"--no-header", ARG_RUN},
    {"--no-summary", ARG_RUN},
    {"--show-capture", ARG_VALUE | ARG_RUN},
    {"--collect-only", ARG_RUN},
    {"--co", ARG_RUN},
    {"--continue-on-collection-errors", ARG_RUN},
    {"--runxfail", ARG_RUN},
    {"--disable-warnings", ARG_RUN},
    {"--disable-pytest-warnings", ARG_RUN},
    {"--setup-show", ARG_RUN},
    {"--junitxml", ARG_VALUE | ARG_RUN | ARG_REFUSE},
    {"--junit-xml", ARG_VALUE | ARG_RUN | ARG_REFUSE},
    {"--pdb", ARG_RUN | ARG_REFUSE},
    {"--trace", ARG_RUN | ARG_REFUSE},
    {"--sw", ARG_RUN | ARG_REFUSE},
    {"--stepwise", ARG_RUN | ARG_REFUSE},
    {"-n", ARG_VALUE | ARG_REFUSE},
    {"--numprocesses", ARG_VALUE | ARG_REFUSE},
    {"-p", ARG_VALUE},
    {"-c", ARG_VALUE},
    {"--config-file", ARG_VALUE},
    {"-o", ARG_VALUE},
    {"--override-ini", ARG_VALUE},
    {"-W", ARG_VALUE},
    {"--pythonwarnings", ARG_VALUE},
    {"--rootdir", ARG_VALUE},
    {"--confcutdir", ARG_VALUE},
    {"--basetemp", ARG_VALUE},
    {"--import-mode", ARG_VALUE},
    {"--ignore", ARG_VALUE},
    {"--ignore-glob", ARG_VALUE},
    {"--doctest-glob", ARG_VALUE},
    {"--assert", ARG_VALUE},
    {"--log-level", ARG_VALUE},
    {"--log-format", ARG_VALUE},
    {"--log-date-format", ARG_VALUE},
    {"--log-cli-level", ARG_VALUE},
    {"--log-cli-format", ARG_VALUE},
    {"--log-cli-date-format", ARG_VALUE},
    {"--log-file", ARG_VALUE},
    {"--log-file-mode", ARG_VALUE},
    {"--log-file-level", ARG_VALUE},
    {"--log-file-format", ARG_VALUE},
    {"--log-file-date-format", ARG_VALUE},
    {"--log-disable", ARG_VALUE},
    {"--junit-prefix", ARG_VALUE},
    {"--doctest-report", ARG_VALUE},
    {"--cov", ARG_VALUE | ARG_REFUSE},
};

static const arg_spec *arg_lookup(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof arg_table / sizeof *arg_table; i++)
        if (strlen(arg_table[i].name) == len && memcmp(arg_table[i].name, name, len) == 0)
            return &arg_table[i];
    return NULL;
}

/* The split of one command line.  Positional arguments (paths, node ids)
 * are per run.  refused names the first option the lean CLI cannot honour. */
typedef struct arg_split {
    util_strv collect;
    util_strv run;
    int maxfail;          /* 0 = no limit */
    bool collect_only;
    bool continue_on_errors;
    bool full_trace_none; /* --tb=no */
    int durations;        /* --durations N, -1 when not given */
    char refused[64];
} arg_split;

static void arg_split_free(arg_split *s)
{
    util_strv_free(&s->collect);
    util_strv_free(&s->run);
}

/* Note what the daemon itself must know about a per-run option. */
static void arg_note(arg_split *s, const char *name, const char *value)
{
    if (!strcmp(name, "-x") || !strcmp(name, "--exitfirst"))
        s->maxfail = 1;
    else if (!strcmp(name, "--maxfail") && value)
        s->maxfail = atoi(value) > 0 ? atoi(value) : 0;
    else if (!strcmp(name, "--collect-only") || !strcmp(name, "--co"))
        s->collect_only = true;
    else if (!strcmp(name, "--continue-on-collection-errors"))
        s->continue_on_errors = true;
    else if (!strcmp(name, "--tb") && value && !strcmp(value, "no"))
        s->full_trace_none = true;
    else if (!strcmp(name, "--durations") && value)
        s->durations = atoi(value) >= 0 ? atoi(value) : 0;
}

/* Whether an option this table does not know takes a value: the zygote's
 * parser says so when it has collected (plugins and conftests add options);
 * otherwise a following word that is not a path is taken as the value. */
static bool arg_unknown_takes_value(const char *name, size_t len, const char *next,
                                    const pf_value *options, const char *cwd)
{
    for (size_t i = 0; options && pf_is_seq(options) && i < options->u.seq.len; i++) {
        const pf_value *o = options->u.seq.items[i];
        const pf_value *names = pf_dict_get(o, "names");
        for (size_t k = 0; names && pf_is_seq(names) && k < names->u.seq.len; k++) {
            const pf_value *n = names->u.seq.items[k];
            if (n->kind == PF_STR && n->u.s.len == len && !memcmp(n->u.s.ptr, name, len)) {
                const pf_value *v = pf_dict_get(o, "value");
                return v && v->kind == PF_BOOL && v->u.b;
            }
        }
    }
    if (!next || next[0] == '-' || !cwd)
        return false;
    size_t plen = strcspn(next, ":");
    char *path = next[0] == '/' ? util_strndup(next, plen) : util_fmt("%s/%.*s", cwd, (int)plen, next);
    struct stat st;
    bool is_path = stat(path, &st) == 0;
    free(path);
    return !is_path;
}

/* Returns 0, or -1 with msg set for a malformed command line.  options is
 * the zygote's option table (or NULL), cwd the client's directory. */
static int arg_classify(int argc, char **argv, arg_split *s, const pf_value *options, const char *cwd,
                        char *msg, size_t msglen)
{
    bool only_positional = false;
    s->durations = -1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || !a[1]) {
            util_strv_push(&s->run, a);
            continue;
        }
        if (!strcmp(a, "--")) {
            only_positional = true;
            util_strv_push(&s->run, a);
            continue;
        }
        util_strv *dest;
        const arg_spec *spec;
        const char *value = NULL;
        if (a[1] == '-') {
            const char *eq = strchr(a, '=');
            size_t len = eq ? (size_t)(eq - a) : strlen(a);
            spec = arg_lookup(a, len);
            int flags = spec ? spec->flags
                        : !eq && arg_unknown_takes_value(a, len, i + 1 < argc ? argv[i + 1] : NULL, options, cwd)
                            ? ARG_VALUE : 0;
            dest = (flags & ARG_RUN) ? &s->run : &s->collect;
            util_strv_push(dest, a);
            if (eq)
                value = eq + 1;
            else if (flags & ARG_VALUE) {
                if (i + 1 >= argc) {
                    snprintf(msg, msglen, "argument %s: expected one argument", a);
                    return -1;
                }
                value = argv[++i];
                util_strv_push(dest, value);
            }
            if (spec && (flags & ARG_REFUSE) && !s->refused[0])
                snprintf(s->refused, sizeof s->refused, "%.*s", (int)len, a);
            if (spec) {
                char name[64];
                snprintf(name, sizeof name, "%.*s", (int)len, a);
                arg_note(s, name, value);
            }
            continue;
        }
        /* A cluster of short options: "-xvs", "-ra", "-k expr", "-kexpr". */
        char name[3] = {'-', 0, 0};
        for (const char *c = a + 1; *c; c++) {
            name[1] = *c;
            spec = arg_lookup(name, 2);
            int flags = spec ? spec->flags
                        : !c[1] && arg_unknown_takes_value(name, 2, i + 1 < argc ? argv[i + 1] : NULL, options, cwd)
                            ? ARG_VALUE : 0;
            dest = (flags & ARG_RUN) ? &s->run : &s->collect;
            if (spec && (flags & ARG_REFUSE) && !s->refused[0])
                snprintf(s->refused, sizeof s->refused, "%s", name);
            if (flags & ARG_VALUE) {
                util_strv_push(dest, name);
                if (c[1])
                    value = c + 1;
                else if (i + 1 < argc)
                    value = argv[++i];
                else {
                    snprintf(msg, msglen, "argument %s: expected one argument", name);
                    return -1;
                }
                util_strv_push(dest, value);
                arg_note(s, name, value);
                break;
            }
            util_strv_push(dest, name);
            if (spec)
                arg_note(s, name, NULL);
        }
    }
    return 0;
}

/* ==========================================================================
 * Identity
 *
 * Owns: nothing global.  Decides which daemon a command line belongs to:
 * the environment fingerprint, the interpreter, the private per-user
 * socket directory and the address inside it.  Calls Utilities, SHA-256.
 * ========================================================================== */

/* Variables that are parameters of a run, not of what was collected. */
static bool id_volatile_var(const char *kv)
{
    static const char *const names[] = {
        "PYTEST_FAST_ADDRESS=", "PYTEST_FAST_WORKERS=", "PYTEST_FAST_TTL=",
        "PYTEST_FAST_TIMEOUT=", "PYTEST_FAST_BIN=", "PYTEST_FAST_WATCH_POLL=",
        "PYTEST_FAST_WATCH_DEBOUNCE=", "PYTEST_FAST_WATCH=",
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strncmp(kv, names[i], strlen(names[i])))
            return true;
    return false;
}

static bool id_prefixed(const char *kv, const char *prefixes)
{
    if (!prefixes)
        return false;
    const char *p = prefixes;
    while (*p) {
        while (*p == ',' || *p == ' ')
            p++;
        size_t len = strcspn(p, ", ");
        if (len && !strncmp(kv, p, len))
            return true;
        p += len;
    }
    return false;
}

/* Environment entries that affect what the zygote imports and collects:
 * PYTEST_ADDOPTS, PYTEST_FAST_* (but run parameters), PYTHON*, VIRTUAL_ENV
 * and every PYTEST_FAST_ENV_PREFIXES prefix.  Sorted, so order is moot. */
static void id_env_relevant(char **envp, util_strv *out)
{
    const char *prefixes = NULL;
    for (char **e = envp; *e; e++)
        if (!strncmp(*e, "PYTEST_FAST_ENV_PREFIXES=", 25))
            prefixes = *e + 25;
    for (char **e = envp; *e; e++) {
        const char *kv = *e;
        bool take = !strncmp(kv, "PYTEST_ADDOPTS=", 15) || !strncmp(kv, "PYTHON", 6) ||
                    !strncmp(kv, "VIRTUAL_ENV=", 12) ||
                    (!strncmp(kv, "PYTEST_FAST_", 12) && !id_volatile_var(kv)) ||
                    id_prefixed(kv, prefixes);
        if (take)
            util_strv_push(out, kv);
    }
    if (out->n)
        qsort(out->v, out->n, sizeof *out->v, util_cmp_str);
}

/* Hex SHA-256 over NUL-separated fields: root, interpreter, environment. */
static void id_fingerprint(const char *root, const char *python, char **envp, char out[65])
{
    util_strv env = {0};
    id_env_relevant(envp, &env);
    pf_sha256 c;
    pf_sha256_init(&c);
    pf_sha256_update(&c, "pytest-fast/1", 14);
    pf_sha256_update(&c, root, strlen(root) + 1);
    pf_sha256_update(&c, python, strlen(python) + 1);
    for (size_t i = 0; i < env.n; i++)
        pf_sha256_update(&c, env.v[i], strlen(env.v[i]) + 1);
    uint8_t digest[32];
    pf_sha256_final(&c, digest);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
    util_strv_free(&env);
}

/* Create or verify the private socket directory: ours, a real directory,
 * no group or world access.  Returns 0, or -1 with msg explaining. */
static int id_private_dir(const char *dir, char *msg, size_t msglen)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(msg, msglen, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    struct stat st;
    if (lstat(dir, &st) < 0) {
        snprintf(msg, msglen, "cannot stat %s: %s", dir, strerror(errno));
        return -1;
    }
    if (S_ISLNK(st.st_mode)) {
        snprintf(msg, msglen, "%s is a symlink; refusing it (remove it or set PYTEST_FAST_ADDRESS)", dir);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(msg, msglen, "%s is not a directory; refusing it", dir);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        snprintf(msg, msglen, "%s is owned by uid %d, not by you (uid %d); refusing it",
                 dir, (int)st.st_uid, (int)geteuid());
        return -1;
    }
    if (st.st_mode & 077) {
        snprintf(msg, msglen, "%s is accessible by group or others (mode %03o); refusing it "
                 "(chmod 700 it)", dir, (unsigned)(st.st_mode & 0777));
        return -1;
    }
    return 0;
}

/* The default address: <private dir>/<16 hex of the fingerprint>.sock. */
static int id_default_address(const char *fp, char *out, size_t outlen, char *msg, size_t msglen)
{
    char dir[PATH_MAX];
    const char *xdg = util_getenv("XDG_RUNTIME_DIR");
    if (xdg) {
        snprintf(dir, sizeof dir, "%s/pytest-fast", xdg);
    } else {
        const char *tmp = util_getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/pytest-fast-%d", tmp ? tmp : "/tmp", (int)geteuid());
    }
    if (id_private_dir(dir, msg, msglen) < 0)
        return -1;
    int n = snprintf(out, outlen, "%s/%.16s.sock", dir, fp);
    if (n < 0 || (size_t)n >= outlen) {
        snprintf(msg, msglen, "socket path under %s is too long", dir);
        return -1;
    }
    return 0;
}

/* Files beside the socket: "<address minus .sock><suffix>". */
static char *id_sibling(const char *address, const char *suffix)
{
    size_t len = strlen(address);
    if (len > 5 && !strcmp(address + len - 5, ".sock"))
        len -= 5;
    return util_fmt("%.*s%s", (int)len, address, suffix);
}

static int id_sockaddr(const char *path, struct sockaddr_un *sa, char *msg, size_t msglen)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path) {
        snprintf(msg, msglen, "socket path too long for AF_UNIX (%zu bytes, max %zu): %s",
                 strlen(path), sizeof sa->sun_path - 1, path);
        return -1;
    }
    memcpy(sa->sun_path, path, strlen(path));
    return 0;
}

/* The uid of the process at the other end of a connected AF_UNIX socket. */
static int id_peer_uid(int fd, uid_t *uid)
{
#if defined(SO_PEERCRED) && defined(__linux__)
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return -1;
    *uid = cred.uid;
    return 0;
#else
    gid_t gid;
    return getpeereid(fd, uid, &gid);
#endif
}

/* The interpreter that runs the tests: --python, else the active venv,
 * else PYTEST_FAST_PYTHON, else the one this binary was built for (if it
 * still exists; a pip/uv build, meson.build, records none), else the
 * `python` beside this binary (pip/uv: <venv>/bin/python of the environment
 * it was installed into), else the linked pythonX.Y on PATH. */
static const char *id_python(const char *flag)
{
    static char buf[PATH_MAX];
    if (flag)
        return flag;
    const char *venv = util_getenv("VIRTUAL_ENV");
    if (venv) {
        snprintf(buf, sizeof buf, "%s/bin/python", venv);
        return buf;
    }
    const char *env = util_getenv("PYTEST_FAST_PYTHON");
    if (env)
        return env;
    if (PF_BUILD_PYTHON[0] && access(PF_BUILD_PYTHON, X_OK) == 0)
        return PF_BUILD_PYTHON;
    /* Installed into a venv (pip): the interpreter beside this binary. */
    snprintf(buf, sizeof buf, "%s", util_exe);
    char *slash = strrchr(buf, '/');
    if (slash && (size_t)(slash - buf) + 8 < sizeof buf) {
        strcpy(slash, "/python");
        if (access(buf, X_OK) == 0)
            return buf;
    }
    /* Built by hand: the first pythonX.Y of the linked version on PATH that
     * is a real interpreter (pyenv's shims are shell scripts). */
    char name[32];
    snprintf(name, sizeof name, "python%d.%d", PY_MAJOR_VERSION, PY_MINOR_VERSION);
    const char *path = getenv("PATH");
    for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
        size_t n = strcspn(p, ":");
        if (n && n + strlen(name) + 2 < sizeof buf) {
            snprintf(buf, sizeof buf, "%.*s/%s", (int)n, p, name);
            char head[2] = {0, 0};
            int fd = open(buf, O_RDONLY | O_CLOEXEC);
            bool script = fd >= 0 && read(fd, head, 2) == 2 && head[0] == '#' && head[1] == '!';
            if (fd >= 0)
                close(fd);
            if (fd >= 0 && !script && access(buf, X_OK) == 0)
                return buf;
        }
        p += n;
        if (*p)
            p++;
    }
    return "python3";
}

/* An absolute path for an interpreter name, without resolving symlinks:
 * a venv's bin/python is a symlink whose location is what selects the venv. */
static int id_absolute(const char *python, char *out, size_t outlen)
{
    if (python[0] == '/') {
        snprintf(out, outlen, "%s", python);
        return 0;
    }
    if (strchr(python, '/')) {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd))
            return -1;
        char *joined = util_fmt("%s/%s", cwd, python);
        int rc = strlen(joined) < outlen ? 0 : -1;
        if (rc == 0)
            memcpy(out, joined, strlen(joined) + 1);
        free(joined);
        return rc;
    }
    const char *path = getenv("PATH");
    for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
        size_t n = strcspn(p, ":");
        char *cand = util_fmt("%.*s/%s", (int)n, p, python);
        bool ok = n && access(cand, X_OK) == 0;
        if (ok)
            snprintf(out, outlen, "%s", cand);
        free(cand);
        if (ok)
            return 0;
        p += n;
        if (*p)
            p++;
    }
    return -1;
}

/* major.minor of an interpreter without running it: pyvenv.cfg's version
 * (venv, virtualenv, uv) or the pythonX.Y name it resolves to.  0 if
 * unknown, which callers treat as "cannot tell, let Python decide". */
static int id_python_version(const char *python, int *major, int *minor)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", python);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = 0;
        for (int up = 0; up < 2; up++) {
            char *cfgpath = util_fmt("%s%s/pyvenv.cfg", dir, up ? "/.." : "");
            char *cfg = util_read_file(cfgpath, 1 << 16);
            free(cfgpath);
            if (!cfg)
                continue;
            for (char *line = cfg; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
                if (!strncmp(line, "version", 7)) {
                    char *eq = strchr(line, '=');
                    if (eq && sscanf(eq + 1, " %d.%d", major, minor) == 2) {
                        free(cfg);
                        return 1;
                    }
                }
            }
            free(cfg);
        }
    }
    char real[PATH_MAX];
    if (realpath(python, real)) {
        const char *base = strrchr(real, '/');
        base = base ? base + 1 : real;
        if (sscanf(base, "python%d.%d", major, minor) == 2)
            return 1;
    }
    return 0;
}


/* ==========================================================================
 * Zygote
 *
 * Owns: the embedded interpreter of this process, the SIGCHLD self-pipe
 * and the list of children this process forked.
 * The zygote is this binary exec'ed by the daemon as `--zygote`: it
 * initializes CPython as the user's interpreter would be, runs pytest's
 * main with the glue below (configure + collect once), and then waits in
 * zyg_serve for fork requests.  Leaders and workers are its forks and run
 * the same glue.  Calls Utilities, codec, Framing, Identity.
 * ========================================================================== */

/* The Python glue, kept in one place.  Generated from plain Python source:
 * one C string line per Python line. */
static const char zyg_glue[] =
    "\"\"\"pytest-fast: the Python side of the zygote, its run leaders and workers.\n"
    "\n"
    "The zygote runs pytest's own main with the _Zygote plugin below, so that\n"
    "configuration and collection happen under all of pytest's hook wrappers.\n"
    "Its pytest_runtestloop never runs a test: it reports the collection to the\n"
    "daemon, freezes the heap and waits in C (_pytest_fast.serve) for fork\n"
    "requests.  A forked *leader* applies one run's options and selection; the\n"
    "*workers* it forks run items with pytest's real protocol.  Frames to the\n"
    "daemon are pickles of plain builtins; frames from it are decoded by the C\n"
    "decoder, which cannot instantiate anything.\n"
    "\"\"\"\n"
    "import gc\n"
    "import io\n"
    "import os\n"
    "import pickle\n"
    "import sys\n"
    "import time\n"
    "\n"
    "import _pytest_fast as _c\n"
    "\n"
    "_PLAIN = (type(None), bool, int, float, str, bytes)\n"
    "# The environment and working directory this zygote was started with: what\n"
    "# preloading, plugins and conftests change in them is part of the collection\n"
    "# every run inherits.\n"
    "_BOOT_ENV = dict(os.environ)\n"
    "_BOOT_CWD = os.getcwd()\n"
    "\n"
    "\n"
    "class _NotPlain(Exception):\n"
    "    pass\n"
    "\n"
    "\n"
    "class _PlainPickler(pickle.Pickler):\n"
    "    # The C pickler handles exact builtins itself and asks us only about\n"
    "    # everything else, which the daemon would refuse: bail out and convert.\n"
    "    def reducer_override(self, obj):\n"
    "        raise _NotPlain\n"
    "\n"
    "\n"
    "def _plain(obj, depth=0):\n"
    "    t = type(obj)\n"
    "    if t in _PLAIN:\n"
    "        return obj\n"
    "    if depth > 150:\n"
    "        return repr(obj)\n"
    "    d = depth + 1\n"
    "    if isinstance(obj, dict):\n"
    "        return {(k if type(k) in _PLAIN else repr(k)): _plain(v, d) for k, v in obj.items()}\n"
    "    if isinstance(obj, (list, tuple)):\n"
    "        seq = [_plain(v, d) for v in obj]\n"
    "        return seq if isinstance(obj, list) else tuple(seq)\n"
    "    if isinstance(obj, (set, frozenset)):\n"
    "        return frozenset(v if type(v) in _PLAIN else repr(v) for v in obj)\n"
    "    for base in (bool, int, float, str, bytes):\n"
    "        if isinstance(obj, base):\n"
    "            return base(obj)\n"
    "    return repr(obj)\n"
    "\n"
    "\n"
    "def _dumps(obj):\n"
    "    buf = io.BytesIO()\n"
    "    try:\n"
    "        _PlainPickler(buf, 5).dump(obj)\n"
    "    except _NotPlain:\n"
    "        buf = io.BytesIO()\n"
    "        pickle.Pickler(buf, 5).dump(_plain(obj))\n"
    "    return buf.getvalue()\n"
    "\n"
    "\n"
    "def _send(fd, obj):\n"
    "    _c.send(fd, _dumps(obj))\n"
    "\n"
    "\n"
    "def _longrepr_text(rep):\n"
    "    try:\n"
    "        return rep.longreprtext\n"
    "    except Exception as exc:  # a plugin's custom longrepr that cannot render\n"
    "        return \"<longrepr not renderable: %r>\" % (exc,)\n"
    "\n"
    "\n"
    "class _Zygote:\n"
    "    \"\"\"Registered as a plugin in the zygote's pytest.main().\"\"\"\n"
    "\n"
    "    def __init__(self, fd):\n"
    "        self.fd = fd\n"
    "        self.role = \"zygote\"\n"
    "        self.collect_errors = []\n"
    "        self.collect_skips = []\n"
    "        self.warnings = []\n"
    "        self.config = None\n"
    "        self.header = []\n"
    "        self.worker = None\n"
    "        self.env_set = {}\n"
    "        self.env_unset = []\n"
    "        self.cwd = None\n"
    "\n"
    "    def pytest_configure(self, config):\n"
    "        self.config = config\n"
    "        self.header = _conftest_header(config)\n"
    "\n"
    "    def pytest_collectreport(self, report):\n"
    "        # Failed collectors are errors; skipped ones (a module-level skip)\n"
    "        # count as skipped in pytest's summary.\n"
    "        if report.failed or report.skipped:\n"
    "            data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)\n"
    "            path = str(getattr(report, \"fspath\", \"\") or report.nodeid.split(\"::\")[0])\n"
    "            text = _longrepr_text(report) if report.failed else str(report.longrepr[2])\n"
    "            (self.collect_errors if report.failed else self.collect_skips).append(\n"
    "                (report.nodeid, path, text, data))\n"
    "\n"
    "    def pytest_warning_recorded(self, warning_message, when, nodeid, location):\n"
    "        self.warnings.append(_warning_data(warning_message, when, nodeid, location))\n"
    "\n"
    "    def pytest_collection(self, session):\n"
    "        \"\"\"Replay what the preloads warned, inside pytest's warning capture.\"\"\"\n"
    "        import warnings\n"
    "        seen = set()\n"
    "        for w in _PRELOAD_WARNINGS:\n"
    "            key = (str(w.message), w.category, w.filename, w.lineno)\n"
    "            if key in seen:\n"
    "                continue\n"
    "            seen.add(key)\n"
    "            try:\n"
    "                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)\n"
    "            except Warning:\n"
    "                pass   # -W error: the module is imported already (see the README)\n"
    "        return None\n"
    "\n"
    "    def pytest_runtestloop(self, session):\n"
    "        config = session.config\n"
    "        items = session.items\n"
    "        rootdir = str(config.rootpath)\n"
    "        locs = []\n"
    "        for item in items:\n"
    "            fspath, lineno, domain = item.location\n"
    "            locs.append((item.nodeid, fspath, lineno, domain))\n"
    "        _send(self.fd, {\n"
    "            \"op\": \"ready\",\n"
    "            \"items\": locs,\n"
    "            \"errors\": self.collect_errors,\n"
    "            \"skips\": self.collect_skips,\n"
    "            \"warnings\": self.warnings,\n"
    "            \"files\": _imported_files(exclude=_PRELOADED),\n"
    "            \"dirs\": _collection_dirs(config, session),\n"
    "            \"rootdir\": rootdir,\n"
    "            \"inifile\": str(config.inipath) if getattr(config, \"inipath\", None) else None,\n"
    "            \"options\": _option_table(config),\n"
    "            \"header\": self.header,\n"
    "            \"preload\": _plan(config),\n"
    "            \"threads\": _threads(),\n"
    "        })\n"
    "        self.env_set = {k: v for k, v in os.environ.items() if _BOOT_ENV.get(k) != v}\n"
    "        self.env_unset = [k for k in _BOOT_ENV if k not in os.environ]\n"
    "        if os.getcwd() != _BOOT_CWD:\n"
    "            self.cwd = os.getcwd()   # a conftest's os.chdir at import\n"
    "        gc.collect()\n"
    "        gc.freeze()\n"
    "        while True:\n"
    "            got = _c.serve(self.fd)\n"
    "            if got is None:\n"
    "                os._exit(0)\n"
    "            msg, fds, forked = got\n"
    "            if forked:\n"
    "                self.role = \"leader\"\n"
    "                _Leader(session, msg, fds).lead(self)\n"
    "                return True\n"
    "\n"
    "\n"
    "def _conftest_header(config):\n"
    "    \"\"\"The lines the initial conftests' pytest_report_header add to pytest's\n"
    "    header (those loaded before the session starts, as in a plain run), for\n"
    "    the plugin's controller, which imports no conftest.  Computed with this\n"
    "    collection's configuration.\"\"\"\n"
    "    import inspect\n"
    "    args = {\"config\": config, \"start_path\": config.invocation_params.dir}\n"
    "    try:\n"
    "        from _pytest.compat import legacy_path\n"
    "        args[\"startdir\"] = legacy_path(args[\"start_path\"])\n"
    "    except ImportError:\n"
    "        pass\n"
    "    lines = []\n"
    "    for _, plugin in config.pluginmanager.list_name_plugin():\n"
    "        hook = getattr(plugin, \"pytest_report_header\", None)\n"
    "        if os.path.basename(getattr(plugin, \"__file__\", None) or \"\") != \"conftest.py\" or not callable(hook):\n"
    "            continue\n"
    "        try:\n"
    "            wanted = inspect.signature(hook).parameters\n"
    "            got = hook(**{k: v for k, v in args.items() if k in wanted})\n"
    "        except Exception:\n"
    "            continue   # its error belongs to the run that shows the header\n"
    "        lines.extend([got] if isinstance(got, str) else [str(line) for line in got or ()])\n"
    "    return lines\n"
    "\n"
    "\n"
    "_FLAG_ACTIONS = (\"store_true\", \"store_false\", \"store_const\", \"append_const\", \"count\", \"help\", \"version\")\n"
    "\n"
    "\n"
    "def _option_table(config):\n"
    "    \"\"\"Every command-line option the zygote's parser knows, conftests'\n"
    "    included, for `pytest --fast` controllers that never import them, and\n"
    "    for the daemon, which must know which options take a value.\"\"\"\n"
    "    parser = config._parser\n"
    "    out = []\n"
    "    seen = set()\n"
    "    for group in [parser._anonymous] + list(parser._groups):\n"
    "        for opt in group.options:\n"
    "            names = list(opt.names())\n"
    "            if tuple(names) in seen:\n"
    "                continue\n"
    "            seen.add(tuple(names))\n"
    "            attrs = opt.attrs()\n"
    "            action = attrs.get(\"action\")\n"
    "            if not isinstance(action, str):\n"
    "                # pytest 9 hands out the argparse action's attributes: name\n"
    "                # the action by what it consumes.\n"
    "                nargs = attrs.get(\"nargs\")\n"
    "                action = \"store\" if nargs != 0 else (\"store_const\" if \"const\" in attrs else \"store_true\")\n"
    "            nargs = attrs.get(\"nargs\")\n"
    "            out.append({\n"
    "                \"names\": names,\n"
    "                \"action\": action,\n"
    "                \"value\": action not in _FLAG_ACTIONS and nargs != 0,\n"
    "                \"dest\": attrs.get(\"dest\"),\n"
    "                \"default\": _plain(attrs.get(\"default\")),\n"
    "                \"const\": _plain(attrs.get(\"const\")),\n"
    "                \"nargs\": _plain(nargs),\n"
    "                \"choices\": _plain(list(attrs[\"choices\"])) if attrs.get(\"choices\") else None,\n"
    "                \"help\": str(attrs.get(\"help\") or \"\"),\n"
    "            })\n"
    "    return out\n"
    "\n"
    "\n"
    "def _warning_data(warning_message, when, nodeid, location):\n"
    "    msg = warning_message.message\n"
    "    return {\n"
    "        \"message\": str(msg),\n"
    "        \"category\": type(msg).__name__ if isinstance(msg, Warning) else warning_message.category.__name__,\n"
    "        \"filename\": str(warning_message.filename),\n"
    "        \"lineno\": warning_message.lineno,\n"
    "        \"when\": when,\n"
    "        \"nodeid\": nodeid,\n"
    "        \"location\": location,\n"
    "    }\n"
    "\n"
    "\n"
    "def _stdlib_dirs():\n"
    "    import sysconfig\n"
    "    paths = sysconfig.get_paths()\n"
    "    out = set()\n"
    "    for key in (\"stdlib\", \"platstdlib\"):\n"
    "        p = paths.get(key)\n"
    "        if p:\n"
    "            out.add(os.path.realpath(p) + os.sep)\n"
    "    return tuple(out)\n"
    "\n"
    "\n"
    "def _imported_files(exclude=()):\n"
    "    skip = _stdlib_dirs()\n"
    "    site = tuple(os.path.realpath(p) + os.sep for p in sys.path if \"site-packages\" in p or \"dist-packages\" in p)\n"
    "    files = set()\n"
    "    for name, mod in list(sys.modules.items()):\n"
    "        if name in exclude:\n"
    "            continue\n"
    "        f = getattr(mod, \"__file__\", None)\n"
    "        if not f:\n"
    "            continue\n"
    "        f = os.path.realpath(f)\n"
    "        if f.startswith(skip) and not f.startswith(site):\n"
    "            continue\n"
    "        files.add(f)\n"
    "    return sorted(files)\n"
    "\n"
    "\n"
    "def _collection_dirs(config, session):\n"
    "    \"\"\"Directories whose listing decides what is collected: a test file\n"
    "    added or deleted below them must trigger a re-collect.\"\"\"\n"
    "    import fnmatch\n"
    "    try:\n"
    "        norecurse = list(config.getini(\"norecursedirs\"))\n"
    "    except Exception:\n"
    "        norecurse = []\n"
    "    roots = []\n"
    "    for arg in config.args or [str(config.rootpath)]:\n"
    "        path = os.path.abspath(str(arg).split(\"::\")[0])\n"
    "        roots.append(path if os.path.isdir(path) else os.path.dirname(path))\n"
    "    out = []\n"
    "    seen = set()\n"
    "    for root in roots:\n"
    "        for dirpath, dirnames, _ in os.walk(root):\n"
    "            if dirpath in seen:\n"
    "                dirnames[:] = []\n"
    "                continue\n"
    "            seen.add(dirpath)\n"
    "            out.append(dirpath)\n"
    "            dirnames[:] = sorted(\n"
    "                d for d in dirnames\n"
    "                if not any(fnmatch.fnmatch(d, pat) for pat in norecurse)\n"
    "                and not os.path.exists(os.path.join(dirpath, d, \"pyvenv.cfg\"))\n"
    "                and d != \"__pycache__\"\n"
    "            )\n"
    "            if len(out) > 20000:\n"
    "                return out\n"
    "    return out\n"
    "\n"
    "\n"
    "class _Leader:\n"
    "    \"\"\"One run: applies its options and selection, forks its workers.\"\"\"\n"
    "\n"
    "    def __init__(self, session, msg, fds):\n"
    "        self.session = session\n"
    "        self.config = session.config\n"
    "        self.msg = msg\n"
    "        self.fd = fds[0]\n"
    "        self.stdio = fds[1:4]\n"
    "\n"
    "    def lead(self, zygote):\n"
    "        msg, config = self.msg, self.config\n"
    "        os.setpgid(0, 0)\n"
    "        _adopt_stdio(self.stdio)\n"
    "        # The client's environment, then what the collection changed in the\n"
    "        # zygote's own (a conftest's os.environ[...] = ..., PYTEST_VERSION),\n"
    "        # as a plain run's tests see both.\n"
    "        os.environ.clear()\n"
    "        os.environ.update(kv.split(\"=\", 1) for kv in msg[\"env\"] if \"=\" in kv)\n"
    "        os.environ.update(zygote.env_set)\n"
    "        for name in zygote.env_unset:\n"
    "            os.environ.pop(name, None)\n"
    "        time.tzset()   # the C library read TZ when the zygote started\n"
    "        sys.argv[1:] = msg[\"argv\"]\n"
    "        os.chdir(msg[\"cwd\"])\n"
    "        try:\n"
    "            selected, deselected = self.select(msg[\"args\"])\n"
    "        except Exception as exc:\n"
    "            _send(self.fd, {\"op\": \"usage\", \"message\": _usage_message(exc)})\n"
    "            os._exit(0)\n"
    "        _send(self.fd, {\"op\": \"selected\", \"indices\": selected, \"deselected\": deselected,\n"
    "                        \"scoped_errors\": self.scoped_errors})\n"
    "        if zygote.cwd:\n"
    "            # The arguments were the client's to resolve; the tests run where\n"
    "            # the collection left the working directory, as in a plain run.\n"
    "            try:\n"
    "                os.chdir(zygote.cwd)\n"
    "            except OSError:\n"
    "                pass\n"
    "        while True:\n"
    "            got = _c.serve(self.fd)\n"
    "            if got is None:\n"
    "                os._exit(0)\n"
    "            req, fds, forked = got\n"
    "            if forked:\n"
    "                zygote.worker = _Worker(self.session, msg, req, fds)\n"
    "                zygote.role = \"worker\"\n"
    "                return zygote.worker.work()\n"
    "            if req.get(\"op\") == \"finish\":\n"
    "                self.finish(req)\n"
    "                os._exit(0)\n"
    "\n"
    "    def select(self, args):\n"
    "        config, session = self.config, self.session\n"
    "        config._parser.parse_known_args(list(args), namespace=config.option)\n"
    "        index = {id(item): i for i, item in enumerate(session.items)}\n"
    "        items = list(session.items)\n"
    "        paths = [a for a in (config.option.file_or_dir or []) if a]\n"
    "        self.scoped_errors = None\n"
    "        if paths:\n"
    "            items, self.scoped_errors = _select_by_args(config, items, paths, self.collect_error_paths())\n"
    "        pm = config.pluginmanager\n"
    "        from _pytest import cacheprovider\n"
    "        for name, cls in ((\"lfplugin\", cacheprovider.LFPlugin), (\"nfplugin\", cacheprovider.NFPlugin)):\n"
    "            old = pm.get_plugin(name)\n"
    "            if old is not None:\n"
    "                pm.unregister(old)\n"
    "                pm.register(cls(config), name)\n"
    "        coll = pm.get_plugin(\"lfplugin-collwrapper\")\n"
    "        if coll is not None:\n"
    "            pm.unregister(coll)\n"
    "        counter = _DeselectCounter()\n"
    "        pm.register(counter, \"pytest-fast-deselect-counter\")\n"
    "        try:\n"
    "            config.hook.pytest_collection_modifyitems(session=session, config=config, items=items)\n"
    "        finally:\n"
    "            pm.unregister(counter)\n"
    "        return [index[id(item)] for item in items], counter.count\n"
    "\n"
    "    def collect_error_paths(self):\n"
    "        rootdir = str(self.config.rootpath)\n"
    "        return [os.path.join(rootdir, nodeid.split(\"::\")[0]) for nodeid in self.msg.get(\"error_nodeids\", [])]\n"
    "\n"
    "    def finish(self, req):\n"
    "        \"\"\"Update .pytest_cache the way the session would have.\"\"\"\n"
    "        config = self.config\n"
    "        if getattr(config, \"cache\", None) is None:\n"
    "            return\n"
    "        lf = config.pluginmanager.get_plugin(\"lfplugin\")\n"
    "        nf = config.pluginmanager.get_plugin(\"nfplugin\")\n"
    "        if lf is not None:\n"
    "            from _pytest.reports import TestReport\n"
    "            for nodeid, when, outcome in req.get(\"reports\", ()):\n"
    "                rep = TestReport(nodeid, (nodeid.split(\"::\")[0], None, nodeid), {}, outcome, None, when)\n"
    "                lf.pytest_runtest_logreport(rep)\n"
    "            for nodeid in req.get(\"collect_errors\", ()):\n"
    "                lf.lastfailed[nodeid] = True\n"
    "            for nodeid in req.get(\"collected_ok\", ()):\n"
    "                if nodeid in lf.lastfailed:\n"
    "                    lf.lastfailed.pop(nodeid)\n"
    "                    prefix = nodeid + (\"/\" if \"::\" not in nodeid and not nodeid.endswith(\".py\") else \"::\")\n"
    "                    lf.lastfailed.update((i.nodeid, True) for i in self.session.items\n"
    "                                         if i.nodeid.startswith(prefix))\n"
    "            lf.pytest_sessionfinish(self.session)\n"
    "        if nf is not None and not config.getoption(\"collectonly\"):\n"
    "            nf.pytest_sessionfinish()\n"
    "\n"
    "\n"
    "class _DeselectCounter:\n"
    "    def __init__(self):\n"
    "        self.count = 0\n"
    "\n"
    "    def pytest_deselected(self, items):\n"
    "        self.count += len(items)\n"
    "\n"
    "\n"
    "def _usage_message(exc):\n"
    "    if type(exc).__name__ == \"UsageError\":\n"
    "        return \"ERROR: \" + str(exc)\n"
    "    import traceback\n"
    "    return \"INTERNALERROR> \" + \"\".join(traceback.format_exception(type(exc), exc, exc.__traceback__))\n"
    "\n"
    "\n"
    "def _select_by_args(config, items, args, error_paths):\n"
    "    \"\"\"Restrict items to the given paths / node ids, in argument order, with\n"
    "    pytest's matching rules; also say which collection errors are in scope.\"\"\"\n"
    "    cwd = os.getcwd()\n"
    "    chosen = []\n"
    "    seen = set()\n"
    "    scoped = set()\n"
    "    for arg in args:\n"
    "        strpath, sep, rest = str(arg).partition(\"::\")\n"
    "        parts = rest.split(\"::\") if sep else []\n"
    "        path = os.path.abspath(os.path.join(cwd, strpath))\n"
    "        if not os.path.exists(path):\n"
    "            from _pytest.config import UsageError\n"
    "            raise UsageError(\"file or directory not found: %s\" % arg)\n"
    "        isdir = os.path.isdir(path)\n"
    "        matched = 0\n"
    "        for item in items:\n"
    "            ipath = str(item.path)\n"
    "            if isdir:\n"
    "                ok = ipath.startswith(path.rstrip(os.sep) + os.sep)\n"
    "            else:\n"
    "                ok = ipath == path and _parts_match(item.nodeid, parts)\n"
    "            if ok:\n"
    "                matched += 1\n"
    "                if id(item) not in seen:\n"
    "                    seen.add(id(item))\n"
    "                    chosen.append(item)\n"
    "        for i, epath in enumerate(error_paths):\n"
    "            if epath == path or (isdir and epath.startswith(path.rstrip(os.sep) + os.sep)):\n"
    "                scoped.add(i)\n"
    "        if not matched and parts and not scoped:\n"
    "            from _pytest.config import UsageError\n"
    "            raise UsageError(\"not found: %s\\n(no match in any of the collected items)\" % arg)\n"
    "    return chosen, sorted(scoped)\n"
    "\n"
    "\n"
    "def _parts_match(nodeid, parts):\n"
    "    if not parts:\n"
    "        return True\n"
    "    have = nodeid.split(\"::\")[1:]\n"
    "    if len(have) < len(parts):\n"
    "        return False\n"
    "    for i, want in enumerate(parts):\n"
    "        got = have[i]\n"
    "        if got == want:\n"
    "            continue\n"
    "        if i == len(parts) - 1 and \"[\" not in want and got.split(\"[\", 1)[0] == want and len(have) == len(parts):\n"
    "            continue\n"
    "        return False\n"
    "    return True\n"
    "\n"
    "\n"
    "def _adopt_stdio(fds):\n"
    "    \"\"\"The client's stdout and stderr become ours (so `-s` output reaches its\n"
    "    terminal); stdin is /dev/null, as tests must not wait for input.\"\"\"\n"
    "    if len(fds) >= 3:\n"
    "        null = os.open(os.devnull, os.O_RDONLY)\n"
    "        os.dup2(null, 0)\n"
    "        os.close(null)\n"
    "        os.dup2(fds[1], 1)\n"
    "        os.dup2(fds[2], 2)\n"
    "        for fd in fds:\n"
    "            if fd > 2:\n"
    "                os.close(fd)\n"
    "\n"
    "\n"
    "class _Worker:\n"
    "    \"\"\"Runs items handed out by the daemon, one claimed item ahead.\"\"\"\n"
    "\n"
    "    def __init__(self, session, run, req, fds):\n"
    "        self.session = session\n"
    "        self.config = session.config\n"
    "        self.run = run\n"
    "        self.wid = req[\"wid\"]\n"
    "        self.fd = fds[0]\n"
    "        self.fault = os.fdopen(fds[1], \"w\", buffering=1)\n"
    "        self.full = run.get(\"full\", False)\n"
    "        self.timeout = float(run.get(\"timeout\") or 0)\n"
    "        self.reports = []\n"
    "        self.warnings = []\n"
    "\n"
    "    def work(self):\n"
    "        import faulthandler\n"
    "        config, session = self.config, self.session\n"
    "        name = \"gw%d\" % self.wid\n"
    "        os.environ[\"PYTEST_XDIST_WORKER\"] = name\n"
    "        os.environ[\"PYTEST_XDIST_WORKER_COUNT\"] = str(self.run.get(\"workers\", 1))\n"
    "        os.environ[\"PYTEST_XDIST_TESTRUNUID\"] = self.run.get(\"runid\", \"\")\n"
    "        faulthandler.enable(file=self.fault, all_threads=True)\n"
    "        self.quiet_controller_plugins()\n"
    "        self.reset_capture()\n"
    "        # tmp_path: like plain pytest, a numbered basetemp made on first use\n"
    "        # (pytest's own locking keeps concurrent workers apart); a given\n"
    "        # --basetemp gets one subdirectory per worker, as under xdist.\n"
    "        factory = getattr(config, \"_tmp_path_factory\", None)\n"
    "        if factory is not None:\n"
    "            if factory._given_basetemp is not None:\n"
    "                os.makedirs(factory._given_basetemp, exist_ok=True)\n"
    "                factory._given_basetemp = factory._given_basetemp / (\"popen-\" + name)\n"
    "            factory._basetemp = None\n"
    "        config.pluginmanager.register(self, \"pytest-fast-worker\")\n"
    "        self.warnings = []   # registering replayed the collection's warnings\n"
    "        items = session.items\n"
    "        cur = self.ask((\"n\",))\n"
    "        nxt = self.ask((\"n\",)) if cur is not None else None\n"
    "        try:\n"
    "            while cur is not None:\n"
    "                item = items[cur]\n"
    "                nextitem = items[nxt] if nxt is not None else None\n"
    "                if self.timeout > 0:\n"
    "                    faulthandler.dump_traceback_later(self.timeout, exit=True, file=self.fault)\n"
    "                config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)\n"
    "                if self.timeout > 0:\n"
    "                    faulthandler.cancel_dump_traceback_later()\n"
    "                stop = session.shouldfail or session.shouldstop\n"
    "                reply = self.done(cur, want=nxt is not None and not stop)\n"
    "                if stop or reply == -1:\n"
    "                    break\n"
    "                cur, nxt = nxt, reply\n"
    "        except BaseException as exc:\n"
    "            if type(exc).__name__ == \"Exit\" or isinstance(exc, KeyboardInterrupt):\n"
    "                code = getattr(exc, \"returncode\", None)\n"
    "                self.flush_reports(cur)\n"
    "                _send(self.fd, (\"x\", 2 if code is None else int(code), str(getattr(exc, \"msg\", exc))))\n"
    "            raise\n"
    "\n"
    "    def finish(self, rc):\n"
    "        \"\"\"After pytest's session teardown ran in this worker.\"\"\"\n"
    "        sys.stdout.flush()\n"
    "        sys.stderr.flush()\n"
    "        _send(self.fd, (\"f\", int(rc)))\n"
    "        os._exit(0)\n"
    "\n"
    "    def ask(self, frame):\n"
    "        _send(self.fd, frame)\n"
    "        return _c.recv(self.fd)\n"
    "\n"
    "    def done(self, idx, want):\n"
    "        frame = (\"d\", idx, self.reports, self.warnings, want)\n"
    "        self.reports = []\n"
    "        self.warnings = []\n"
    "        if want:\n"
    "            return self.ask(frame)\n"
    "        _send(self.fd, frame)\n"
    "        return None\n"
    "\n"
    "    def flush_reports(self, idx):\n"
    "        if self.reports or self.warnings:\n"
    "            self.done(idx, False)\n"
    "\n"
    "    def quiet_controller_plugins(self):\n"
    "        \"\"\"The daemon and the client own reporting, caches and junit.\"\"\"\n"
    "        pm = self.config.pluginmanager\n"
    "        for name in (\"lfplugin\", \"nfplugin\", \"stepwiseplugin\", \"lfplugin-collwrapper\"):\n"
    "            plugin = pm.get_plugin(name)\n"
    "            if plugin is not None:\n"
    "                pm.unregister(plugin)\n"
    "        for plugin in list(pm.get_plugins()):\n"
    "            if type(plugin).__name__ == \"LogXML\":\n"
    "                pm.unregister(plugin)\n"
    "        tr = pm.get_plugin(\"terminalreporter\")\n"
    "        if tr is not None:\n"
    "            # Its session summary (and what plugins do for it) would only\n"
    "            # be thrown away here: a silent stand-in keeps the name alive.\n"
    "            pm.unregister(tr)\n"
    "            pm.register(_QuietTerminal(self.config), \"terminalreporter\")\n"
    "\n"
    "    def reset_capture(self):\n"
    "        capman = self.config.pluginmanager.get_plugin(\"capturemanager\")\n"
    "        if capman is None:\n"
    "            return\n"
    "        # Stopping restores the zygote's own stdout/stderr (the daemon's\n"
    "        # log) over the client's: put the client's back before restarting.\n"
    "        client = os.dup(1), os.dup(2)\n"
    "        capman.stop_global_capturing()\n"
    "        os.dup2(client[0], 1)\n"
    "        os.dup2(client[1], 2)\n"
    "        os.close(client[0])\n"
    "        os.close(client[1])\n"
    "        method = getattr(self.config.option, \"capture\", None)\n"
    "        if method:\n"
    "            capman._method = method\n"
    "        capman.start_global_capturing()\n"
    "        capman.suspend_global_capture()\n"
    "        if method == \"no\" and os.isatty(1):\n"
    "            try:\n"
    "                sys.stdout.reconfigure(line_buffering=True)\n"
    "            except Exception:\n"
    "                pass\n"
    "\n"
    "    def pytest_runtest_logreport(self, report):\n"
    "        config = self.config\n"
    "        category = config.hook.pytest_report_teststatus(report=report, config=config)[0]\n"
    "        if self.full:\n"
    "            data = config.hook.pytest_report_to_serializable(config=config, report=report)\n"
    "            self.reports.append((report.when, report.outcome, category, report.duration,\n"
    "                                 _longrepr_text(report) if report.failed else None,\n"
    "                                 report.sections if report.failed else None,\n"
    "                                 getattr(report, \"wasxfail\", None), data))\n"
    "            return\n"
    "        text = sections = None\n"
    "        if report.failed:\n"
    "            text = _longrepr_text(report)\n"
    "            sections = report.sections\n"
    "        elif report.skipped and isinstance(report.longrepr, tuple):\n"
    "            text = str(report.longrepr[2])\n"
    "        wasxfail = getattr(report, \"wasxfail\", None)\n"
    "        self.reports.append((report.when, report.outcome, category, report.duration, text, sections,\n"
    "                             wasxfail, None))\n"
    "\n"
    "    def pytest_warning_recorded(self, warning_message, when, nodeid, location):\n"
    "        self.warnings.append(_warning_data(warning_message, when, nodeid, location))\n"
    "\n"
    "\n"
    "class _QuietTerminal:\n"
    "    \"\"\"Stands in for the TerminalReporter in workers: every call is a no-op.\"\"\"\n"
    "\n"
    "    def __init__(self, config):\n"
    "        from _pytest._io import TerminalWriter\n"
    "        self.config = config\n"
    "        self.stats = {}\n"
    "        self._tw = TerminalWriter(open(os.devnull, \"w\"))\n"
    "\n"
    "    def __getattr__(self, name):\n"
    "        if name.startswith(\"pytest_\"):\n"
    "            raise AttributeError(name)\n"
    "        return lambda *args, **kwargs: None\n"
    "\n"
    "\n"
    "def main(fd, args):\n"
    "    plan = _c.recv(fd)\n"
    "    level = plan[\"level\"] if isinstance(plan, dict) else 2\n"
    "    # What `python -m pytest` does: the working directory is importable.\n"
    "    sys.path.insert(0, os.getcwd())\n"
    "    while level < 2:\n"
    "        # A site or project zygote: preload, report, then wait to be forked\n"
    "        # into the level above.\n"
    "        gc.disable()   # one collection at the end, not one per few imports\n"
    "        new, failed = _preload(plan[\"modules\"], plan.get(\"rewrite\") or ())\n"
    "        tainted = level == 1 and _warm_up(plan.get(\"warmup\", True))\n"
    "        _freeze_level()\n"
    "        _send(fd, {\"op\": \"level\", \"level\": level, \"files\": _module_files(new), \"failed\": failed,\n"
    "                   \"tainted\": tainted, \"threads\": _threads(),\n"
    "                   \"dirs\": _site_dirs() if level == 0 else []})\n"
    "        fd, plan = _await_fork(fd)\n"
    "        level = plan[\"level\"]\n"
    "    try:\n"
    "        import pytest\n"
    "    except ImportError as exc:\n"
    "        sys.stderr.write(\"pytest-fast: pytest is not importable by %s (%s).\\n\"\n"
    "                         \"Install it there: %s -m pip install pytest\\n\"\n"
    "                         % (sys.executable, exc, sys.executable))\n"
    "        _send(fd, {\"op\": \"exited\", \"rc\": 4, \"files\": [], \"dirs\": []})\n"
    "        return 4\n"
    "    sys.argv = [os.path.join(os.path.dirname(pytest.__file__), \"__main__.py\")] + list(args)\n"
    "    plugin = _Zygote(fd)\n"
    "    _Zygote.pytest_runtestloop = pytest.hookimpl(tryfirst=True)(_Zygote.pytest_runtestloop)\n"
    "    _Zygote.pytest_collection = pytest.hookimpl(tryfirst=True)(_Zygote.pytest_collection)\n"
    "    rc = pytest.main(list(args), plugins=[plugin])\n"
    "    if plugin.role == \"worker\":\n"
    "        plugin.worker.finish(rc)\n"
    "    sys.stdout.flush()\n"
    "    sys.stderr.flush()\n"
    "    _send(fd, {\"op\": \"exited\", \"rc\": int(rc), \"files\": _imported_files() + _project_files(),\n"
    "               \"dirs\": _project_dirs()})\n"
    "    return int(rc)\n"
    "\n"
    "\n"
    "def _await_fork(fd):\n"
    "    while True:\n"
    "        got = _c.serve(fd)\n"
    "        if got is None:\n"
    "            os._exit(0)\n"
    "        msg, fds, forked = got\n"
    "        if forked:\n"
    "            return fds[0], msg\n"
    "\n"
    "\n"
    "# Modules the lower levels imported, and the warnings they raised: pytest\n"
    "# did not see those imports, so the warnings are replayed at collection.\n"
    "_PRELOADED = set()\n"
    "_PRELOAD_WARNINGS = []\n"
    "\n"
    "\n"
    "class _Blocker:\n"
    "    \"\"\"While preloading, when pytest's import hook cannot be reproduced (a\n"
    "    pytest whose internals differ), modules it would rewrite must not be\n"
    "    imported: a preload that needs one fails and is left to pytest.\"\"\"\n"
    "\n"
    "    def __init__(self, marked):\n"
    "        self.marked = tuple(marked)\n"
    "\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if _is_marked(name, self.marked):\n"
    "            raise ImportError(\"pytest-fast: %s is left to pytest's assertion rewriting\" % name)\n"
    "        return None\n"
    "\n"
    "\n"
    "def _is_marked(name, marked):\n"
    "    return any(name == m or name.startswith(m + \".\") for m in marked)\n"
    "\n"
    "\n"
    "def _marked_names(rewrite):\n"
    "    \"\"\"The names pytest marked for rewriting, in the plan's rewrite list\n"
    "    (whose settings start with \":\").\"\"\"\n"
    "    return [m for m in rewrite if not m.startswith(\":\")]\n"
    "\n"
    "\n"
    "class _RewriteConfig:\n"
    "    \"\"\"What pytest's import hook reads of a Config, as the collection that\n"
    "    wrote the plan had it; it is also the hook's (silent) assertion state.\"\"\"\n"
    "\n"
    "    def __init__(self, fnpats, pass_hook, key):\n"
    "        self.stash = {key: self}\n"
    "        self.ini = {\"python_files\": fnpats, \"enable_assertion_pass_hook\": pass_hook}\n"
    "\n"
    "    def getini(self, name):\n"
    "        return self.ini[name]\n"
    "\n"
    "    def trace(self, *args):\n"
    "        pass\n"
    "\n"
    "\n"
    "def _preload_hook(rewrite):\n"
    "    \"\"\"The finder that imports preloads the way pytest's session would:\n"
    "    modules pytest rewrites (plugins' packages, register_assert_rewrite\n"
    "    names, test-like files) go through pytest's own AssertionRewritingHook,\n"
    "    set up as the last collection's was, so the code, the cached pyc and the\n"
    "    module's loader are what pytest's import makes (and pytest does not warn\n"
    "    that it cannot rewrite them).  None when pytest does not rewrite.\"\"\"\n"
    "    if \":rewrite\" not in rewrite:\n"
    "        return None\n"
    "    marked = _marked_names(rewrite)\n"
    "    try:\n"
    "        from _pytest.assertion.rewrite import AssertionRewritingHook, assertstate_key\n"
    "        fnpats = [m[len(\":python_files \"):] for m in rewrite if m.startswith(\":python_files \")]\n"
    "        hook = AssertionRewritingHook(_RewriteConfig(fnpats, \":assertion_pass_hook\" in rewrite,\n"
    "                                                     assertstate_key))\n"
    "        hook._must_rewrite.update(marked)\n"
    "        return hook\n"
    "    except Exception:\n"
    "        return _Blocker(marked)\n"
    "\n"
    "\n"
    "def _rewrite_settings(config):\n"
    "    \"\"\"How this session's assertion rewriting is set up, for the next\n"
    "    boot's preloads: [] when pytest rewrites nothing (--assert=plain).\"\"\"\n"
    "    from _pytest.assertion.rewrite import AssertionRewritingHook\n"
    "    for hook in sys.meta_path:\n"
    "        if isinstance(hook, AssertionRewritingHook):\n"
    "            out = [\":rewrite\"]\n"
    "            if config.getini(\"enable_assertion_pass_hook\"):\n"
    "                out.append(\":assertion_pass_hook\")\n"
    "            out += [\":python_files \" + p for p in hook.fnpats]\n"
    "            return out + sorted(hook._must_rewrite)\n"
    "    return []\n"
    "\n"
    "\n"
    "def _preload(names, rewrite):\n"
    "    import importlib\n"
    "    import warnings\n"
    "    before = set(sys.modules)\n"
    "    failed = 0\n"
    "    hook = _preload_hook(rewrite)\n"
    "    if hook is not None:\n"
    "        sys.meta_path.insert(0, hook)\n"
    "    try:\n"
    "        with warnings.catch_warnings(record=True) as caught:\n"
    "            warnings.simplefilter(\"always\")\n"
    "            for name in names:\n"
    "                if name in sys.modules:\n"
    "                    continue\n"
    "                try:\n"
    "                    importlib.import_module(name)\n"
    "                except BaseException:\n"
    "                    failed += 1   # left to the normal import\n"
    "    finally:\n"
    "        if hook is not None:\n"
    "            sys.meta_path.remove(hook)\n"
    "    _PRELOAD_WARNINGS.extend(caught)\n"
    "    new = [name for name in sys.modules if name not in before]\n"
    "    _PRELOADED.update(new)\n"
    "    return new, failed\n"
    "\n"
    "\n"
    "def _threads():\n"
    "    \"\"\"The threads besides this one that are running: none of them survives\n"
    "    the fork into the level above or into a worker.\"\"\"\n"
    "    threading = sys.modules.get(\"threading\")\n"
    "    if threading is None:\n"
    "        return []\n"
    "    out = []\n"
    "    for thread in threading.enumerate():\n"
    "        if thread is threading.current_thread() or not thread.is_alive():\n"
    "            continue\n"
    "        target = getattr(thread, \"_target\", None)\n"
    "        where = \".\".join(filter(None, (getattr(target, \"__module__\", None),\n"
    "                                       getattr(target, \"__qualname__\", None))))\n"
    "        out.append(\"%s (%s)\" % (thread.name, where) if where else thread.name)\n"
    "    return out\n"
    "\n"
    "\n"
    "def _freeze_level():\n"
    "    \"\"\"Collect what the level left behind (a finalizer's warning is replayed\n"
    "    at collection like the imports' own), then freeze the rest: the levels\n"
    "    above never traverse it again, so their collections, and the one before\n"
    "    the collected level forks (on the critical path of every re-collect),\n"
    "    only walk what came after.\"\"\"\n"
    "    import warnings\n"
    "    with warnings.catch_warnings(record=True) as caught:\n"
    "        warnings.simplefilter(\"always\")\n"
    "        gc.enable()\n"
    "        gc.collect()\n"
    "    _PRELOAD_WARNINGS.extend(caught)\n"
    "    gc.freeze()\n"
    "\n"
    "\n"
    "def _warm_up(allowed):\n"
    "    \"\"\"Do once, in the project level, what every worker would otherwise do\n"
    "    first: configure SQLAlchemy's mappers (a large share of a worker's time\n"
    "    in an app with many models).  True when that raised or warned: a mapping\n"
    "    problem must reach the first test that meets it, as in plain pytest, so\n"
    "    the daemon then builds the level again without the warm-up (`allowed`\n"
    "    is false from then on).  PYTEST_FAST_WARMUP=0 turns it off.\"\"\"\n"
    "    orm = sys.modules.get(\"sqlalchemy.orm\")\n"
    "    if not allowed or os.environ.get(\"PYTEST_FAST_WARMUP\") == \"0\" or not hasattr(orm, \"configure_mappers\"):\n"
    "        return False\n"
    "    import warnings\n"
    "    with warnings.catch_warnings(record=True) as caught:\n"
    "        warnings.simplefilter(\"always\")\n"
    "        try:\n"
    "            orm.configure_mappers()\n"
    "        except Exception:\n"
    "            return True\n"
    "    return bool(caught)\n"
    "\n"
    "\n"
    "def _module_files(names):\n"
    "    files = set()\n"
    "    for name in names:\n"
    "        f = getattr(sys.modules.get(name), \"__file__\", None)\n"
    "        if f:\n"
    "            files.add(os.path.realpath(f))\n"
    "    return sorted(files)\n"
    "\n"
    "\n"
    "def _site_dirs():\n"
    "    \"\"\"Where `pip install` lands: a changed listing restarts the site level.\"\"\"\n"
    "    return sorted({os.path.realpath(p) for p in sys.path\n"
    "                   if p and os.path.isdir(p) and p.rstrip(os.sep).endswith((\"site-packages\", \"dist-packages\"))})\n"
    "\n"
    "\n"
    "def _plan(config):\n"
    "    \"\"\"The modules this collection imported, in first-import order, split\n"
    "    into what the site and project levels may preload next time.  Test\n"
    "    modules and conftests stay with the collection: pytest imports them.\"\"\"\n"
    "    import fnmatch\n"
    "    from _pytest.assertion.rewrite import AssertionRewritingHook\n"
    "    site_dirs = tuple(p + os.sep for p in _site_dirs())\n"
    "    std = _stdlib_dirs()\n"
    "    try:\n"
    "        patterns = list(config.getini(\"python_files\"))\n"
    "    except Exception:\n"
    "        patterns = [\"test_*.py\", \"*_test.py\"]\n"
    "    rewrite = _rewrite_settings(config)\n"
    "    marked = _marked_names(rewrite)\n"
    "    site, project = [], []\n"
    "    for name, mod in list(sys.modules.items()):\n"
    "        if name in (\"__main__\", \"__mp_main__\") or name.startswith(\"_pytest_fast\"):\n"
    "            continue\n"
    "        if isinstance(getattr(mod, \"__loader__\", None), AssertionRewritingHook) and not _is_marked(name, marked):\n"
    "            continue   # rewritten as a test module, a conftest or a file named on the command line\n"
    "        f = getattr(mod, \"__file__\", None)\n"
    "        if not f:\n"
    "            site.append(name)\n"
    "            continue\n"
    "        f = os.path.realpath(f)\n"
    "        base = os.path.basename(f)\n"
    "        if f.startswith(site_dirs) or f.startswith(std):\n"
    "            site.append(name)\n"
    "        elif base != \"conftest.py\" and not any(fnmatch.fnmatch(base, pat) for pat in patterns):\n"
    "            project.append(name)\n"
    "    return {\"site\": site, \"project\": project, \"rewrite\": rewrite}\n"
    "\n"
    "\n"
    "_NORECURSE = (\"*.egg\", \".*\", \"_darcs\", \"build\", \"CVS\", \"dist\", \"node_modules\", \"venv\", \"{arch}\",\n"
    "              \"__pycache__\")\n"
    "\n"
    "\n"
    "def _walk_project(limit=20000):\n"
    "    \"\"\"pytest stopped before collecting (a broken conftest, a usage error):\n"
    "    whatever the user edits next under the working directory may fix it.\"\"\"\n"
    "    import fnmatch\n"
    "    for dirpath, dirnames, filenames in os.walk(os.getcwd()):\n"
    "        dirnames[:] = [d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in _NORECURSE)\n"
    "                       and not os.path.exists(os.path.join(dirpath, d, \"pyvenv.cfg\"))]\n"
    "        yield dirpath, filenames\n"
    "        limit -= 1 + len(filenames)\n"
    "        if limit <= 0:\n"
    "            return\n"
    "\n"
    "\n"
    "def _project_files():\n"
    "    return [os.path.join(d, f) for d, names in _walk_project() for f in names\n"
    "            if f.endswith((\".py\", \".ini\", \".toml\", \".cfg\"))]\n"
    "\n"
    "\n"
    "def _project_dirs():\n"
    "    return [d for d, _ in _walk_project()]\n"
;

static int zyg_sigpipe[2] = {-1, -1};
static pid_t zyg_sigpipe_owner;       /* the process that made the pipe */
static pid_t zyg_children[4096];
static size_t zyg_nchildren;

static void zyg_on_sigchld(int sig)
{
    (void)sig;
    int saved = errno;
    if (zyg_sigpipe[1] >= 0 && write(zyg_sigpipe[1], "c", 1) < 0) {
        /* full pipe: a wake-up is already pending */
    }
    errno = saved;
}

static void zyg_sigchld_setup(void)
{
    if (zyg_sigpipe_owner == getpid())
        return;
    util_close(&zyg_sigpipe[0]);
    util_close(&zyg_sigpipe[1]);
    zyg_nchildren = 0;
    if (pipe(zyg_sigpipe) < 0)
        return;
    util_cloexec(zyg_sigpipe[0]);
    util_cloexec(zyg_sigpipe[1]);
    util_nonblock(zyg_sigpipe[0]);
    util_nonblock(zyg_sigpipe[1]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = zyg_on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    zyg_sigpipe_owner = getpid();
}

/* Report and forget the children of ours that have exited. */
static void zyg_reap(int fd)
{
    char drain[64];
    while (read(zyg_sigpipe[0], drain, sizeof drain) > 0)
        ;
    for (size_t i = 0; i < zyg_nchildren;) {
        int status;
        pid_t pid = waitpid(zyg_children[i], &status, WNOHANG);
        if (pid == zyg_children[i] || (pid < 0 && errno == ECHILD)) {
            pf_arena *a = pf_arena_new(0);
            pf_value *msg = util_msg(a, "reaped");
            util_set(a, msg, "pid", pf_new_int(a, zyg_children[i]));
            util_set(a, msg, "status", pf_new_int(a, pid > 0 ? status : 0));
            pf_send_value(fd, msg);
            pf_arena_free(a);
            zyg_children[i] = zyg_children[--zyg_nchildren];
            continue;
        }
        i++;
    }
}

static PyObject *zyg_to_py(const pf_value *v)
{
    switch (v->kind) {
    case PF_NONE:
        Py_RETURN_NONE;
    case PF_BOOL:
        return PyBool_FromLong(v->u.b);
    case PF_INT:
        return PyLong_FromLongLong(v->u.i);
    case PF_BIGINT: {
        PyObject *b = PyBytes_FromStringAndSize(v->u.s.ptr, (Py_ssize_t)v->u.s.len);
        if (!b)
            return NULL;
        PyObject *r = PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "Osi", b,
                                          "little", 1);
        Py_DECREF(b);
        return r;
    }
    case PF_FLOAT:
        return PyFloat_FromDouble(v->u.f);
    case PF_STR:
        return PyUnicode_DecodeUTF8(v->u.s.ptr, (Py_ssize_t)v->u.s.len, "surrogatepass");
    case PF_BYTES:
        return PyBytes_FromStringAndSize(v->u.s.ptr, (Py_ssize_t)v->u.s.len);
    case PF_BYTEARRAY:
        return PyByteArray_FromStringAndSize(v->u.s.ptr, (Py_ssize_t)v->u.s.len);
    case PF_TUPLE:
    case PF_LIST: {
        size_t n = v->u.seq.len;
        PyObject *o = v->kind == PF_TUPLE ? PyTuple_New((Py_ssize_t)n) : PyList_New((Py_ssize_t)n);
        for (size_t i = 0; o && i < n; i++) {
            PyObject *item = zyg_to_py(v->u.seq.items[i]);
            if (!item) {
                Py_CLEAR(o);
                break;
            }
            if (v->kind == PF_TUPLE)
                PyTuple_SET_ITEM(o, (Py_ssize_t)i, item);
            else
                PyList_SET_ITEM(o, (Py_ssize_t)i, item);
        }
        return o;
    }
    case PF_DICT: {
        PyObject *d = PyDict_New();
        for (size_t i = 0; d && i < v->u.seq.len; i++) {
            PyObject *k = zyg_to_py(v->u.seq.items[2 * i]);
            PyObject *val = k ? zyg_to_py(v->u.seq.items[2 * i + 1]) : NULL;
            if (!val || PyDict_SetItem(d, k, val) < 0)
                Py_CLEAR(d);
            Py_XDECREF(k);
            Py_XDECREF(val);
        }
        return d;
    }
    case PF_SET:
    case PF_FROZENSET: {
        PyObject *s = v->kind == PF_SET ? PySet_New(NULL) : PyFrozenSet_New(NULL);
        for (size_t i = 0; s && i < v->u.seq.len; i++) {
            PyObject *item = zyg_to_py(v->u.seq.items[i]);
            if (!item || PySet_Add(s, item) < 0)
                Py_CLEAR(s);
            Py_XDECREF(item);
        }
        return s;
    }
    }
    PyErr_SetString(PyExc_ValueError, "pytest-fast: unknown value kind");
    return NULL;
}

/* Read and decode one frame; NULL with a Python exception, or Py_None
 * (new reference) at EOF.  fds received with it go to *fds. */
static PyObject *zyg_read(int fd, int *fds, int *nfds)
{
    pf_reader r;
    pf_reader_init(&r);
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = pf_read_frame(&r, fd, -1);
    Py_END_ALLOW_THREADS
    if (st != PF_READ_FRAME) {
        pf_reader_free(&r);
        if (st == PF_READ_EOF || errno == ECONNRESET || errno == EPIPE)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pf_arena *a = pf_arena_new(0);
    pf_value *v;
    char err[160];
    PyObject *o = NULL;
    if (pf_decode(a, r.body.data, r.need, &v, err, sizeof err) < 0)
        PyErr_Format(PyExc_ValueError, "pytest-fast: bad frame from the daemon: %s", err);
    else
        o = zyg_to_py(v);
    pf_arena_free(a);
    if (fds && nfds) {
        *nfds = r.nfds;
        memcpy(fds, r.fds, sizeof r.fds);
        r.nfds = 0;
    }
    pf_reader_free(&r);
    return o;
}

static PyObject *zyg_py_send(PyObject *self, PyObject *args)
{
    (void)self;
    int fd;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "iy*", &fd, &buf))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pf_frame_write(fd, buf.buf, (size_t)buf.len, NULL, 0);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *zyg_py_recv(PyObject *self, PyObject *args)
{
    (void)self;
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    return zyg_read(fd, NULL, NULL);
}

static void zyg_flush_python(void)
{
    static const char *const names[] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(names[i]);   /* borrowed */
        if (f && f != Py_None) {
            PyObject *r = PyObject_CallMethod(f, "flush", NULL);
            if (!r)
                PyErr_Clear();
            Py_XDECREF(r);
        }
    }
    fflush(NULL);
}

/* In a fresh child: forget the parent's serving state and die with it. */
static void zyg_child_init(int serve_fd)
{
    close(serve_fd);
    util_close(&zyg_sigpipe[0]);
    util_close(&zyg_sigpipe[1]);
    zyg_sigpipe_owner = 0;
    zyg_nchildren = 0;
    signal(SIGCHLD, SIG_DFL);
#ifdef __linux__
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
#endif
}

/* serve(fd): wait for the daemon's next message.  A {"op": "fork"} frame
 * forks this process; the child returns (msg, fds, True), the parent
 * answers {"op": "forked"} and keeps waiting.  Any other message returns
 * (msg, fds, False) in this process; EOF returns None. */
static PyObject *zyg_py_serve(PyObject *self, PyObject *args)
{
    (void)self;
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    zyg_sigchld_setup();
    for (;;) {
        struct pollfd p[2] = {{fd, POLLIN, 0}, {zyg_sigpipe[0], POLLIN, 0}};
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = poll(p, zyg_sigpipe[0] >= 0 ? 2 : 1, -1);
        Py_END_ALLOW_THREADS
        if (r < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    return NULL;
                continue;
            }
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (zyg_sigpipe[0] >= 0 && p[1].revents)
            zyg_reap(fd);
        if (!p[0].revents)
            continue;
        int fds[PF_MAX_FDS], nfds = 0;
        PyObject *msg = zyg_read(fd, fds, &nfds);
        if (!msg || msg == Py_None)
            return msg;
        PyObject *op = PyDict_Check(msg) ? PyDict_GetItemString(msg, "op") : NULL;
        bool fork_req = op && PyUnicode_Check(op) && PyUnicode_CompareWithASCIIString(op, "fork") == 0;
        PyObject *fdlist = PyList_New(0);
        for (int i = 0; fdlist && i < nfds; i++) {
            PyObject *n = PyLong_FromLong(fds[i]);
            if (!n || PyList_Append(fdlist, n) < 0)
                Py_CLEAR(fdlist);
            Py_XDECREF(n);
        }
        if (!fdlist) {
            Py_DECREF(msg);
            return NULL;
        }
        if (!fork_req)
            return Py_BuildValue("(NNO)", msg, fdlist, Py_False);
        zyg_flush_python();
        PyOS_BeforeFork();
        pid_t pid = fork();
        if (pid == 0) {
            PyOS_AfterFork_Child();
            zyg_child_init(fd);
            return Py_BuildValue("(NNO)", msg, fdlist, Py_True);
        }
        int saved = errno;
        PyOS_AfterFork_Parent();
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        Py_DECREF(fdlist);
        PyObject *id = PyDict_GetItemString(msg, "wid");
        long wid = id && PyLong_Check(id) ? PyLong_AsLong(id) : -1;
        Py_DECREF(msg);
        if (pid > 0 && zyg_nchildren < sizeof zyg_children / sizeof *zyg_children)
            zyg_children[zyg_nchildren++] = pid;
        pf_arena *a = pf_arena_new(0);
        pf_value *reply = util_msg(a, "forked");
        util_set(a, reply, "pid", pf_new_int(a, pid));
        util_set(a, reply, "wid", pf_new_int(a, wid));
        if (pid < 0)
            util_set(a, reply, "error", pf_new_cstr(a, strerror(saved)));
        pf_send_value(fd, reply);
        pf_arena_free(a);
    }
}

static PyMethodDef zyg_methods[] = {
    {"send", zyg_py_send, METH_VARARGS, "send(fd, payload): write one frame"},
    {"recv", zyg_py_recv, METH_VARARGS, "recv(fd): read and safely decode one frame"},
    {"serve", zyg_py_serve, METH_VARARGS, "serve(fd): wait for the daemon, fork on request"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef zyg_module = {
    PyModuleDef_HEAD_INIT, "_pytest_fast", "pytest-fast internals", -1, zyg_methods,
    NULL, NULL, NULL, NULL,
};

static PyObject *zyg_module_init(void)
{
    return PyModule_Create(&zyg_module);
}

/* Refuse an interpreter whose major.minor differs from the libpython we
 * were linked with: CPython would start but silently miss site-packages. */
static int zyg_check_version(const char *python)
{
    int major, minor;
    if (id_python_version(python, &major, &minor) &&
        (major != PY_MAJOR_VERSION || minor != PY_MINOR_VERSION)) {
        fprintf(stderr,
                "pytest-fast: %s is Python %d.%d, but this pytest-fast was built against "
                "libpython %d.%d.\nRebuild it for that interpreter (PYTHON=%s ./build.sh), or pip/uv install "
                "pytest-fast into that environment.\n",
                python, major, minor, PY_MAJOR_VERSION, PY_MINOR_VERSION, python);
        return -1;
    }
    char linked[16];
    snprintf(linked, sizeof linked, "%d.%d.", PY_MAJOR_VERSION, PY_MINOR_VERSION);
    if (strncmp(Py_GetVersion(), linked, strlen(linked)) != 0) {
        fprintf(stderr,
                "pytest-fast: built with Python %s headers but the loader found libpython %.8s.\n"
                "Rebuild with ./build.sh (it adds an rpath) or fix LD_LIBRARY_PATH.\n",
                PY_VERSION, Py_GetVersion());
        return -1;
    }
    return 0;
}

/* `pytest-fast --zygote FD PYTHON -- PYTEST-ARGS...`: never returns. */
static int zyg_main(int fd, const char *python, int argc, char **argv)
{
    util_role = "zygote";
    if (zyg_check_version(python) < 0)
        return 4;
#ifdef __APPLE__
    /* The Objective-C runtime kills forked children that first touch it
     * after fork(); the zygote forks by design (as gunicorn users do). */
    setenv("OBJC_DISABLE_INITIALIZE_FORK_SAFETY", "YES", 0);
#endif
    if (PyImport_AppendInittab("_pytest_fast", zyg_module_init) < 0)
        return 3;
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0;
    PyStatus st = PyConfig_SetBytesString(&config, &config.executable, python);
    if (!PyStatus_Exception(st)) {
        char *pyargv[] = {(char *)"pytest"};
        st = PyConfig_SetBytesArgv(&config, 1, pyargv);
    }
    if (!PyStatus_Exception(st))
        st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st)) {
        fprintf(stderr, "pytest-fast: cannot initialize Python for %s: %s\n", python,
                st.err_msg ? st.err_msg : "unknown error");
        return 3;
    }
    PyObject *code = Py_CompileString(zyg_glue, "<pytest-fast glue>", Py_file_input);
    PyObject *mod = code ? PyImport_ExecCodeModule("_pytest_fast_glue", code) : NULL;
    Py_XDECREF(code);
    PyObject *list = mod ? PyList_New(0) : NULL;
    for (int i = 0; list && i < argc; i++) {
        PyObject *s = PyUnicode_DecodeFSDefault(argv[i]);
        if (!s || PyList_Append(list, s) < 0)
            Py_CLEAR(list);
        Py_XDECREF(s);
    }
    PyObject *r = list ? PyObject_CallMethod(mod, "main", "iO", fd, list) : NULL;
    if (!r) {
        PyErr_Print();
        zyg_flush_python();
        _exit(3);
    }
    long rc = PyLong_Check(r) ? PyLong_AsLong(r) : 3;
    zyg_flush_python();
    _exit((int)rc);
}


/* ==========================================================================
 * Daemon
 *
 * Owns: the listening socket, the client connections, the zygote, the run
 * queue and the one active run.  A single-threaded poll loop, so that
 * `status` is answered while a run or a re-collect is in progress and no
 * lock is ever needed.  Python code never runs here: a crash in a test, a
 * conftest or the interpreter costs a child process, never the daemon.
 * Calls Utilities, codec, Framing, SHA-256, Arguments, Identity.
 * ========================================================================== */

#define DMN_REQUEST_TIMEOUT 5.0     /* seconds for a request to arrive */
#define DMN_PROGRESS_EVERY 0.1
#define DMN_TIMEOUT_GRACE 5.0       /* after --timeout, before SIGKILL */
#define DMN_MAX_CONNS 512
#define DMN_OUTPUT_CAP (1u << 20)   /* zygote boot output kept for clients */
#define DMN_TOP_DURATIONS 15

enum { Z_DOWN, Z_BOOTING, Z_READY, Z_EXITED };

typedef struct dmn_item {
    const char *nodeid, *fspath, *domain;
    int64_t lineno;
} dmn_item;

/* A file or directory whose change makes the collection stale. */
typedef struct dmn_watch {
    char *path;
    bool dir;
    bool present;
    int64_t mtime, ctime, size;
    uint64_t ino;
    char listing[65];   /* directories: hash of the names that matter */
} dmn_watch;

/* Zygote levels: each is forked from the one below and is stale on its own,
 * so an edit restarts only the lowest level that loaded the changed file. */
enum { L_SITE, L_PROJECT, L_COLLECTED };
static const char *const dmn_level_names[] = {"site", "project", "collected"};
#define DMN_NODES 12

/* What a zygote tree was booted for: the collection arguments, the
 * environment, the directory and the interpreter of the client. */
typedef struct dmn_ident {
    util_strv args, env;
    char *cwd, *python, *fp;
} dmn_ident;

typedef struct dmn_zygote {
    int state;                  /* Z_DOWN: a free slot */
    int level;
    struct dmn_zygote *parent;  /* forked from; NULL for the exec'ed root */
    pid_t pid;
    int fd;                     /* control socketpair */
    int out;                    /* root only: stdout+stderr of its whole tree */
    pf_reader rd;
    pf_buf output;              /* collected level: what pytest printed booting */
    int exit_rc;
    double boot_start, boot_wall;
    dmn_ident id;
    char plan[65];              /* site/project: the identity it preloaded for */
    bool planned;               /* ... from a non-empty list */
    pf_arena *arena;            /* holds its ready message */
    const pf_value *ready;
    dmn_item *items;
    size_t nitems;
    const pf_value *errors;     /* [(nodeid, path, text, serialized), ...] */
    const pf_value *skips;      /* skipped collectors, same shape */
    size_t nwarnings;
    dmn_watch *watch;
    size_t nwatch;
    bool threads_told;          /* collected level: its first run heard of lost threads */
    char rootdir[PATH_MAX];
} dmn_zygote;

typedef struct dmn_conn dmn_conn;

typedef struct dmn_worker {
    int wid;
    pid_t pid;
    int fd;
    int fault;
    pf_reader rd;
    pf_buf faulttext;
    size_t seg_lo, seg_hi;      /* unclaimed positions it owns */
    size_t pending[2];          /* positions handed back after a crash */
    int npending;
    long claimed[2];            /* [0] running, [1] held as nextitem */
    int nclaimed;
    bool finished, exited, stopped;
    int status;
    double started, first_ask, item_start, busy;
} dmn_worker;

typedef struct dmn_failure {
    size_t pos;
    const char *when, *category, *text;
    const pf_value *sections;
} dmn_failure;

typedef struct dmn_duration {
    double seconds;
    const char *when;
    size_t pos;
} dmn_duration;

typedef struct dmn_run {
    dmn_conn *client;
    dmn_zygote *z;              /* the collected zygote serving this run */
    double start, ready_at, end;
    pid_t leader_pid;
    int leader_fd;
    pf_reader leader_rd;
    bool selected;
    size_t *sel;                /* item indices, in run order */
    size_t nsel;
    size_t deselected;
    const pf_value *scoped;     /* indices into zygote errors, or NULL = all */
    signed char *severity;      /* per position, -1 = no report yet */
    dmn_worker *workers;
    int nworkers, maxworkers, next_wid;
    size_t done;
    int failed_reports;         /* for --maxfail, as Session counts them */
    bool stopping, cancelled;
    int exit_rc;                /* pytest.exit() / internal error, or -1 */
    char *exit_msg;
    size_t counts[8];
    size_t warnings;
    size_t round_trips, rx;
    pf_arena *keep;             /* selection, lastfailed triples, crash texts */
    pf_arena **frames;          /* worker frames that failures point into */
    size_t nframes, capframes;
    dmn_failure *failures;
    size_t nfailures, capfailures;
    dmn_duration top[DMN_TOP_DURATIONS];
    size_t ntop;
    pf_value *lf;               /* [(nodeid, when, outcome)] for the cache */
    double last_progress;
    size_t progress_sent;
    char runid[33];
} dmn_run;

struct dmn_conn {
    int fd;
    pf_reader rd;
    double accepted;
    bool queued;
    pf_arena *arena;
    const pf_value *req;
    int stdio[3];
    arg_split split;
    util_strv argv;            /* the pytest arguments as given: the tests' sys.argv */
    util_strv env;
    char *cwd, *fp, *dump, *python;
    int workers;
    double timeout;
    bool full, stream, color, options_only;
    bool fresh, discard, booted;    /* --start-method fork / spawn */
    bool waited;                    /* this run waited for a collection: cold */
    dmn_conn *next;             /* run queue */
};

/* Outcome categories, least to most severe: an item's outcome is its most
 * severe report category, as pytest_report_teststatus names them. */
static const char *const dmn_categories[] = {"passed", "skipped", "xfailed", "xpassed",
                                             "failed", "error"};
#define DMN_NCAT 6

static int dmn_category(const char *c)
{
    for (int i = 0; c && i < DMN_NCAT; i++)
        if (!strcmp(c, dmn_categories[i]))
            return i;
    return -1;
}

/* Global daemon state, owned by this section. */
static struct {
    const char *address;
    char *pidfile;
    int listen_fd;
    double ttl, last_activity;
    double last_run;            /* when the last run ended */
    dmn_conn *conns[DMN_MAX_CONNS];
    int nconns;
    dmn_conn *queue;
    dmn_zygote nodes[DMN_NODES];
    dmn_zygote *cur;            /* serves runs */
    dmn_zygote *prev;           /* kept while cur is a regression */
    bool booting;
    bool boot_from_layers;
    dmn_ident boot_id;
    dmn_zygote *bchain[3];      /* the tree being built, by level */
    unsigned level_boots[3];
    bool layers_broken;
    bool warmup_tainted;        /* a project level's warm-up raised or warned: no more */
    util_strv plan[3];          /* preload lists: site, project; then how pytest rewrites */
    char plan_key[65];
    bool watching;
    double watch_poll, watch_debounce, stale_since, next_poll;
    int notify_fd;              /* inotify on the current tree's directories (Linux) */
    pid_t notify_pid;           /* the collected zygote it was set up for */
    dmn_run *run;
    unsigned runs;
    bool stopping;
} dmn;

/* ---------------------------------------------------------------- replies */

/* Send to a client; a client that went away is not an error here. */
static void dmn_send(dmn_conn *c, const pf_value *v)
{
    if (c && c->fd >= 0 && pf_send_value(c->fd, v) < 0)
        util_close(&c->fd);
}

static void dmn_send_note(dmn_conn *c, const char *text)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *d = util_msg(a, "note");
    util_set(a, d, "text", pf_new_cstr(a, text));
    dmn_send(c, d);
    pf_arena_free(a);
}

/* The final frame of a request: exit code, text to print, done. */
static void dmn_send_done(dmn_conn *c, int rc, const char *summary, const char *err)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *d = util_msg(a, "done");
    util_set(a, d, "rc", pf_new_int(a, rc));
    util_set(a, d, "summary", pf_new_cstr(a, summary ? summary : ""));
    util_set(a, d, "error", pf_new_cstr(a, err ? err : ""));
    dmn_send(c, d);
    pf_arena_free(a);
}

static void dmn_conn_free(dmn_conn *c)
{
    util_close(&c->fd);
    for (int i = 0; i < 3; i++)
        util_close(&c->stdio[i]);
    pf_reader_free(&c->rd);
    pf_arena_free(c->arena);
    arg_split_free(&c->split);
    util_strv_free(&c->argv);
    util_strv_free(&c->env);
    free(c->cwd);
    free(c->fp);
    free(c->dump);
    free(c->python);
    free(c);
}

static void dmn_conn_drop(dmn_conn *c)
{
    for (int i = 0; i < dmn.nconns; i++)
        if (dmn.conns[i] == c) {
            dmn.conns[i] = dmn.conns[--dmn.nconns];
            break;
        }
    for (dmn_conn **q = &dmn.queue; *q; q = &(*q)->next)
        if (*q == c) {
            *q = c->next;
            break;
        }
    dmn_conn_free(c);
}

/* -------------------------------------------------------------- staleness */

/* Names in a directory that decide collection: Python files, packages and
 * subdirectories, pytest's config files; dotfiles (editor swap files) and
 * caches do not count, so saving in an editor does not re-collect.  Nor does
 * the temporary directory pytest renames into .pytest_cache, which exists
 * for a moment while a concurrent run's leader writes the cache. */
static bool dmn_listing(const char *dir, char out[65])
{
    DIR *d = opendir(dir);
    if (!d)
        return false;
    util_strv names = {0};
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (n[0] == '.' || !strcmp(n, "__pycache__") || !strncmp(n, "pytest-cache-files-", 19))
            continue;
        bool isdir = e->d_type == DT_DIR;
        if (e->d_type == DT_UNKNOWN) {
            struct stat st;
            char *p = util_fmt("%s/%s", dir, n);
            isdir = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
            free(p);
        }
        bool py = len > 3 && !strcmp(n + len - 3, ".py");
        bool cfg = !strcmp(n, "pytest.ini") || !strcmp(n, "pyproject.toml") ||
                   !strcmp(n, "tox.ini") || !strcmp(n, "setup.cfg") ||
                   (len > 4 && !strcmp(n + len - 4, ".pth"));
        if (isdir || py || cfg) {
            char *tagged = util_fmt("%c%s", isdir ? 'd' : 'f', n);
            util_strv_push(&names, tagged);
            free(tagged);
        }
    }
    closedir(d);
    if (names.n)
        qsort(names.v, names.n, sizeof *names.v, util_cmp_str);
    pf_sha256 c;
    pf_sha256_init(&c);
    for (size_t i = 0; i < names.n; i++)
        pf_sha256_update(&c, names.v[i], strlen(names.v[i]) + 1);
    uint8_t digest[32];
    pf_sha256_final(&c, digest);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
    util_strv_free(&names);
    return true;
}

static void dmn_watch_stat(dmn_watch *w)
{
    struct stat st;
    w->present = stat(w->path, &st) == 0;
    if (!w->present)
        return;
    w->mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    w->ctime = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
    w->size = st.st_size;
    w->ino = st.st_ino;
}

/* Whether a watched path still stats as it did when it was recorded. */
static bool dmn_watch_same(const dmn_watch *was, const dmn_watch *now)
{
    return now->present == was->present &&
           (!now->present || (now->mtime == was->mtime && now->ctime == was->ctime &&
                              now->size == was->size && now->ino == was->ino));
}

static void dmn_watch_add(dmn_zygote *z, const char *path, bool dir)
{
    if (z->nwatch % 256 == 0)
        z->watch = util_realloc(z->watch, (z->nwatch + 256) * sizeof *z->watch);
    dmn_watch *w = &z->watch[z->nwatch++];
    memset(w, 0, sizeof *w);
    w->path = util_strdup(path);
    w->dir = dir;
    dmn_watch_stat(w);
    if (dir && !dmn_listing(path, w->listing))
        w->listing[0] = 0;
}

static const char *dmn_relpath(const char *path, const char *root)
{
    size_t n = strlen(root);
    if (n && !strncmp(path, root, n) && path[n] == '/')
        return path + n + 1;
    return path;
}

/* Why the collection no longer matches the files, or NULL.  Stops at the
 * first change: the common case (nothing changed) is one stat per file. */
static const char *dmn_stale(dmn_zygote *z, char *why, size_t len)
{
    for (size_t i = 0; i < z->nwatch; i++) {
        dmn_watch *w = &z->watch[i];
        dmn_watch now = *w;
        dmn_watch_stat(&now);
        if (dmn_watch_same(w, &now))
            continue;
        const char *rel = dmn_relpath(w->path, z->id.cwd);
        if (w->dir && now.present && w->present) {
            char listing[65];
            if (dmn_listing(w->path, listing) && !strcmp(listing, w->listing)) {
                *w = now;   /* only irrelevant names changed: remember the new stat */
                continue;
            }
            snprintf(why, len, "%s/: files added or removed", rel);
            return why;
        }
        snprintf(why, len, "%s %s", rel, !now.present ? "removed" : !w->present ? "created" : "changed");
        return why;
    }
    return NULL;
}

/* CPython trusts a .pyc whose source has the same mtime (in seconds) and
 * size: an edit within the same second that keeps the size would import the
 * old code.  Before re-collecting, drop the bytecode of every changed file
 * (plain and pytest's rewritten forms, all under __pycache__). */
static void dmn_purge_pyc(const char *path)
{
    size_t len = strlen(path);
    const char *slash = strrchr(path, '/');
    if (len < 4 || strcmp(path + len - 3, ".py") || !slash)
        return;
    char *dir = util_fmt("%.*s/__pycache__", (int)(slash - path), path);
    char *stem = util_fmt("%.*s.", (int)(len - 3 - (size_t)(slash + 1 - path)), slash + 1);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (!strncmp(e->d_name, stem, strlen(stem)) && n > 4 && !strcmp(e->d_name + n - 4, ".pyc")) {
            char *pyc = util_fmt("%s/%s", dir, e->d_name);
            unlink(pyc);
            free(pyc);
        }
    }
    if (d)
        closedir(d);
    free(dir);
    free(stem);
}

static void dmn_purge_changed(dmn_zygote *z)
{
    for (; z; z = z->parent)
        for (size_t i = 0; i < z->nwatch; i++) {
            dmn_watch now = z->watch[i];
            dmn_watch_stat(&now);
            if (!now.dir && now.present && !dmn_watch_same(&z->watch[i], &now))
                dmn_purge_pyc(now.path);
        }
}

/* Record what the collection depends on: the modules the zygote imported,
 * the directories that were searched, the ini files and the watch list. */
static void dmn_record_watch(dmn_zygote *z)
{
    const pf_value *files = pf_dict_get(z->ready, "files");
    const pf_value *dirs = pf_dict_get(z->ready, "dirs");
    for (size_t i = 0; files && pf_is_seq(files) && i < files->u.seq.len; i++)
        if (files->u.seq.items[i]->kind == PF_STR)
            dmn_watch_add(z, files->u.seq.items[i]->u.s.ptr, false);
    for (size_t i = 0; dirs && pf_is_seq(dirs) && i < dirs->u.seq.len; i++)
        if (dirs->u.seq.items[i]->kind == PF_STR)
            dmn_watch_add(z, dirs->u.seq.items[i]->u.s.ptr, true);
    if (z->level != L_COLLECTED)
        return;
    const char *ini = pf_dict_str(z->ready, "inifile");
    if (ini)
        dmn_watch_add(z, ini, false);
    const char *root = util_getenv("PYTEST_FAST_ROOT");
    root = root ? root : z->id.cwd;
    const char *wfiles = getenv("PYTEST_FAST_WATCH_FILES");
    const char *wdirs = getenv("PYTEST_FAST_WATCH_DIRS");
    const char *lists[2] = {wfiles ? wfiles : "pyproject.toml,pytest.ini,tox.ini,setup.cfg",
                            wdirs ? wdirs : "src,tests"};
    for (int l = 0; l < 2; l++) {
        const char *p = lists[l];
        while (*p) {
            size_t n = strcspn(p, ",:");
            if (n) {
                char *path = p[0] == '/' ? util_strndup(p, n) : util_fmt("%s/%.*s", root, (int)n, p);
                if (l == 0) {
                    dmn_watch_add(z, path, false);
                } else {
                    struct stat st;
                    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
                        dmn_watch_add(z, path, true);
                }
                free(path);
            }
            p += n;
            if (*p)
                p++;
        }
    }
}

/* ----------------------------------------------------------------- zygote */

static void dmn_run_next(void);

static void dmn_ident_free(dmn_ident *id)
{
    util_strv_free(&id->args);
    util_strv_free(&id->env);
    free(id->cwd);
    free(id->python);
    free(id->fp);
    memset(id, 0, sizeof *id);
}

static char *dmn_strdup0(const char *s)
{
    return s ? util_strdup(s) : NULL;
}

static void dmn_ident_copy(dmn_ident *dst, const dmn_ident *src)
{
    for (size_t i = 0; i < src->args.n; i++)
        util_strv_push(&dst->args, src->args.v[i]);
    for (size_t i = 0; i < src->env.n; i++)
        util_strv_push(&dst->env, src->env.v[i]);
    dst->cwd = dmn_strdup0(src->cwd);
    dst->python = dmn_strdup0(src->python);
    dst->fp = dmn_strdup0(src->fp);
}

static bool dmn_streq(const char *a, const char *b)
{
    return a && b ? strcmp(a, b) == 0 : a == b;
}

/* Why a tree booted for `have` cannot serve `want`, or NULL. */
static const char *dmn_ident_differs(const dmn_ident *have, const dmn_ident *want)
{
    if (!util_strv_equal(&have->args, &want->args))
        return "collection arguments changed";
    if (want->fp && !dmn_streq(have->fp, want->fp))
        return "environment changed";
    if (!dmn_streq(have->cwd, want->cwd))
        return "working directory changed";
    if (!dmn_streq(have->python, want->python))
        return "interpreter changed";
    return NULL;
}

static bool dmn_layers_wanted(const dmn_ident *id)
{
    for (size_t i = 0; i < id->env.n; i++)
        if (!strcmp(id->env.v[i], "PYTEST_FAST_LAYERS=0"))
            return false;
    return !dmn.layers_broken;
}

static bool dmn_is_ancestor(const dmn_zygote *anc, const dmn_zygote *z)
{
    for (; z; z = z->parent)
        if (z == anc)
            return true;
    return false;
}

static void dmn_node_free(dmn_zygote *z)
{
    util_close(&z->fd);
    util_close(&z->out);
    pf_reader_free(&z->rd);
    pf_buf_free(&z->output);
    pf_arena_free(z->arena);
    free(z->items);
    for (size_t i = 0; i < z->nwatch; i++)
        free(z->watch[i].path);
    free(z->watch);
    dmn_ident_free(&z->id);
    memset(z, 0, sizeof *z);
    z->fd = z->out = -1;
    z->state = Z_DOWN;
}

/* A node is in use while it, or a node forked from it, serves the active
 * run, is current, is kept for a revert, or is being built. */
static bool dmn_node_in_use(const dmn_zygote *z)
{
    const dmn_zygote *users[] = {dmn.run ? dmn.run->z : NULL, dmn.cur, dmn.prev,
                                 dmn.bchain[0], dmn.bchain[1], dmn.bchain[2]};
    for (size_t i = 0; i < sizeof users / sizeof *users; i++)
        if (users[i] && dmn_is_ancestor(z, users[i]))
            return true;
    return false;
}

/* Kill a node; its descendants die with it (PDEATHSIG, or EOF on their
 * control socket where there is no PDEATHSIG). */
static void dmn_node_kill(dmn_zygote *z)
{
    if (z->state == Z_DOWN)
        return;
    for (int i = 0; i < DMN_NODES; i++)
        if (&dmn.nodes[i] != z && dmn.nodes[i].state != Z_DOWN && dmn_is_ancestor(z, &dmn.nodes[i]))
            dmn_node_kill(&dmn.nodes[i]);
    if (z->pid > 0) {
        kill(z->pid, SIGKILL);
        if (!z->parent)
            waitpid(z->pid, NULL, 0);
    }
    if (dmn.cur == z)
        dmn.cur = NULL;
    if (dmn.prev == z)
        dmn.prev = NULL;
    dmn_node_free(z);
}

/* Kill every node nothing uses any more. */
static void dmn_node_gc(void)
{
    for (int i = 0; i < DMN_NODES; i++)
        if (dmn.nodes[i].state != Z_DOWN && !dmn_node_in_use(&dmn.nodes[i]))
            dmn_node_kill(&dmn.nodes[i]);
}

static dmn_zygote *dmn_node_new(int level, dmn_zygote *parent, const dmn_ident *id)
{
    for (int i = 0; i < DMN_NODES; i++) {
        dmn_zygote *z = &dmn.nodes[i];
        if (z->state != Z_DOWN)
            continue;
        dmn_node_free(z);
        pf_reader_init(&z->rd);
        z->level = level;
        z->parent = parent;
        z->state = Z_BOOTING;
        z->boot_start = util_now();
        dmn_ident_copy(&z->id, id);
        dmn.level_boots[level]++;
        return z;
    }
    return NULL;
}

static void dmn_plan_hash(const util_strv *plan, char out[65])
{
    pf_sha256 c;
    pf_sha256_init(&c);
    for (size_t i = 0; i < plan->n; i++)
        pf_sha256_update(&c, plan->v[i], strlen(plan->v[i]) + 1);
    uint8_t d[32];
    pf_sha256_final(&c, d);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* The preload lists are kept per identity in "<address>.layers": line 1
 * names the format and the identity, then "s module" and "p module" lines in
 * import order, then "r" lines: how pytest rewrites (":rewrite", ":python_files
 * PATTERN", ":assertion_pass_hook") and the names it marked for rewriting. */
#define DMN_LAYERS_MAGIC "pytest-fast-layers 2 "

static void dmn_plan_key(const dmn_ident *id, char out[65])
{
    util_strv parts = {0};
    util_strv_push(&parts, id->python ? id->python : "");
    util_strv_push(&parts, id->fp ? id->fp : "");
    util_strv_push(&parts, id->cwd ? id->cwd : "");
    for (size_t i = 0; i < id->args.n; i++)
        util_strv_push(&parts, id->args.v[i]);
    dmn_plan_hash(&parts, out);
    util_strv_free(&parts);
}

static void dmn_plan_load(const dmn_ident *id)
{
    char key[65];
    dmn_plan_key(id, key);
    if (!strcmp(key, dmn.plan_key))
        return;
    for (int l = 0; l < 3; l++)
        util_strv_free(&dmn.plan[l]);
    snprintf(dmn.plan_key, sizeof dmn.plan_key, "%s", key);
    char *path = id_sibling(dmn.address, ".layers");
    char *text = util_read_file(path, 16u << 20);
    free(path);
    if (!text)
        return;
    char *line = text, *next;
    bool ours = false;
    for (; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        if (line == text) {
            ours = !strncmp(line, DMN_LAYERS_MAGIC, strlen(DMN_LAYERS_MAGIC)) &&
                   !strcmp(line + strlen(DMN_LAYERS_MAGIC), key);
            if (!ours)
                break;
        } else if ((line[0] == 's' || line[0] == 'p' || line[0] == 'r') && line[1] == ' ' && line[2]) {
            util_strv_push(&dmn.plan[line[0] == 's' ? 0 : line[0] == 'p' ? 1 : 2], line + 2);
        }
    }
    free(text);
}

/* After a collection: what it imported, split by level, for the next boot. */
static void dmn_plan_save(dmn_zygote *z)
{
    const pf_value *pre = pf_dict_get(z->ready, "preload");
    if (!pre)
        return;
    util_strv lists[3] = {{0}, {0}, {0}};
    if (!util_value_strv(pf_dict_get(pre, "site"), &lists[0]) ||
        !util_value_strv(pf_dict_get(pre, "project"), &lists[1]) ||
        !util_value_strv(pf_dict_get(pre, "rewrite"), &lists[2])) {
        for (int l = 0; l < 3; l++)
            util_strv_free(&lists[l]);
        return;
    }
    dmn_plan_key(&z->id, dmn.plan_key);
    for (int l = 0; l < 3; l++) {
        util_strv_free(&dmn.plan[l]);
        dmn.plan[l] = lists[l];
    }
    char *path = id_sibling(dmn.address, ".layers");
    char *tmp = util_fmt("%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f) {
        fprintf(f, DMN_LAYERS_MAGIC "%s\n", dmn.plan_key);
        for (int l = 0; l < 3; l++)
            for (size_t i = 0; i < dmn.plan[l].n; i++)
                fprintf(f, "%c %s\n", "spr"[l], dmn.plan[l].v[i]);
        if (fclose(f) == 0)
            rename(tmp, path);
        else
            unlink(tmp);
    } else if (fd >= 0) {
        close(fd);
    }
    free(tmp);
    free(path);
}

/* A site or project zygote stays usable for its identity; once a plan
 * exists, one that was booted before it (with nothing to preload) is not. */
static void dmn_plan_stamp(dmn_zygote *z)
{
    if (z->level == L_COLLECTED)
        return;
    snprintf(z->plan, sizeof z->plan, "%s", dmn.plan_key);
    z->planned = dmn.plan[z->level].n > 0;
}

static bool dmn_plan_fits(const dmn_zygote *z)
{
    return !strcmp(z->plan, dmn.plan_key) && z->planned == (dmn.plan[z->level].n > 0);
}

static pf_value *dmn_plan_value(pf_arena *a, int level)
{
    return level < L_COLLECTED ? util_strv_value(a, &dmn.plan[level]) : pf_new_container(a, PF_LIST);
}

/* exec `pytest-fast --zygote` with the client's environment and working
 * directory (pytest finds its rootdir and ini from the cwd; conftests read
 * the environment at import time), then hand it its level and plan. */
static dmn_zygote *dmn_exec_root(int level, const dmn_ident *id, char *err, size_t errlen)
{
    int sv[2], out[2];
    if (util_socketpair(sv) < 0) {
        snprintf(err, errlen, "cannot create the zygote's channels: %s", strerror(errno));
        return NULL;
    }
    if (pipe(out) < 0) {
        snprintf(err, errlen, "cannot create the zygote's channels: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return NULL;
    }
    util_cloexec(out[0]);
    dmn_zygote *z = dmn_node_new(level, NULL, id);
    if (!z) {
        snprintf(err, errlen, "too many zygotes alive");
        close(sv[0]);
        close(sv[1]);
        close(out[0]);
        close(out[1]);
        return NULL;
    }
    util_strv argv = {0};
    util_strv_push(&argv, util_exe);
    util_strv_push(&argv, "--zygote");
    char fdbuf[16];
    snprintf(fdbuf, sizeof fdbuf, "%d", sv[1]);
    util_strv_push(&argv, fdbuf);
    util_strv_push(&argv, id->python ? id->python : id_python(NULL));
    util_strv_push(&argv, "--");
    for (size_t i = 0; i < id->args.n; i++)
        util_strv_push(&argv, id->args.v[i]);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        dup2(out[1], 1);
        dup2(out[1], 2);
        int fl = fcntl(sv[1], F_GETFD);
        fcntl(sv[1], F_SETFD, fl & ~FD_CLOEXEC);
        if (chdir(id->cwd) < 0) {
            fprintf(stderr, "pytest-fast: cannot enter %s: %s\n", id->cwd, strerror(errno));
            _exit(4);
        }
#ifdef __linux__
        execve("/proc/self/exe", argv.v, id->env.v);   /* the file we run from, even if rebuilt */
#endif
        execve(util_exe, argv.v, id->env.v);
        fprintf(stderr, "pytest-fast: cannot exec %s: %s\n", util_exe, strerror(errno));
        _exit(3);
    }
    util_strv_free(&argv);
    close(sv[1]);
    close(out[1]);
    if (pid < 0) {
        snprintf(err, errlen, "cannot fork the zygote: %s", strerror(errno));
        close(sv[0]);
        close(out[0]);
        dmn_node_free(z);
        return NULL;
    }
    util_nonblock(sv[0]);
    util_nonblock(out[0]);
    z->pid = pid;
    z->fd = sv[0];
    z->out = out[0];
    pf_arena *a = pf_arena_new(0);
    pf_value *plan = util_msg(a, "plan");
    util_set(a, plan, "level", pf_new_int(a, level));
    util_set(a, plan, "modules", dmn_plan_value(a, level));
    util_set(a, plan, "rewrite", util_strv_value(a, &dmn.plan[2]));
    pf_send_value(z->fd, plan);
    pf_arena_free(a);
    dmn_plan_stamp(z);
    util_log("booting the %s zygote %d in %s", dmn_level_names[level], (int)pid, id->cwd);
    return z;
}

/* Ask a ready node to fork the next level; the pid arrives later. */
static dmn_zygote *dmn_fork_node(dmn_zygote *parent, int level)
{
    int sv[2];
    if (util_socketpair(sv) < 0)
        return NULL;
    dmn_zygote *z = dmn_node_new(level, parent, &parent->id);
    if (!z) {
        close(sv[0]);
        close(sv[1]);
        return NULL;
    }
    pf_arena *a = pf_arena_new(0);
    pf_value *msg = util_msg(a, "fork");
    util_set(a, msg, "level", pf_new_int(a, level));
    util_set(a, msg, "warmup", pf_new_bool(a, !dmn.warmup_tainted));
    util_set(a, msg, "modules", dmn_plan_value(a, level));
    util_set(a, msg, "rewrite", util_strv_value(a, &dmn.plan[2]));
    pf_buf b = {0};
    int rc = pf_encode(&b, msg) == 0 ? pf_frame_write(parent->fd, b.data, b.len, &sv[1], 1) : -1;
    pf_buf_free(&b);
    pf_arena_free(a);
    close(sv[1]);
    if (rc < 0) {
        close(sv[0]);
        dmn_node_free(z);
        return NULL;
    }
    util_nonblock(sv[0]);
    z->fd = sv[0];
    dmn_plan_stamp(z);
    util_log("forking the %s zygote from the %s zygote %d", dmn_level_names[level],
             dmn_level_names[parent->level], (int)parent->pid);
    return z;
}

/* The root of a node's tree: it owns the shared output pipe. */
static dmn_zygote *dmn_root(dmn_zygote *z)
{
    while (z->parent)
        z = z->parent;
    return z;
}

static void dmn_zygote_output(dmn_zygote *root)
{
    char buf[8192];
    /* A booting collected level owns what its tree prints; else the log. */
    dmn_zygote *to = dmn.bchain[2] && dmn_root(dmn.bchain[2]) == root ? dmn.bchain[2] : NULL;
    for (;;) {
        ssize_t n = read(root->out, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                util_close(&root->out);
            return;
        }
        fwrite(buf, 1, (size_t)n, stderr);   /* the daemon log keeps it all */
        if (to && to->output.len < DMN_OUTPUT_CAP)
            pf_buf_put(&to->output, buf, (size_t)n);
    }
}

static void dmn_zygote_ready(dmn_zygote *z, pf_arena *a, const pf_value *msg)
{
    z->arena = a;
    z->ready = msg;
    z->state = Z_READY;
    z->boot_wall = util_now() - z->boot_start;
    const pf_value *items = pf_dict_get(msg, "items");
    size_t n = items && pf_is_seq(items) ? items->u.seq.len : 0;
    z->items = util_alloc((n ? n : 1) * sizeof *z->items);
    for (size_t i = 0; i < n; i++) {
        const pf_value *t = items->u.seq.items[i];
        dmn_item *it = &z->items[z->nitems];
        if (!pf_is_seq(t) || t->u.seq.len != 4 || t->u.seq.items[0]->kind != PF_STR)
            continue;
        it->nodeid = t->u.seq.items[0]->u.s.ptr;
        it->fspath = t->u.seq.items[1]->kind == PF_STR ? t->u.seq.items[1]->u.s.ptr : "";
        it->lineno = t->u.seq.items[2]->kind == PF_INT ? t->u.seq.items[2]->u.i : -1;
        it->domain = t->u.seq.items[3]->kind == PF_STR ? t->u.seq.items[3]->u.s.ptr : "";
        z->nitems++;
    }
    z->errors = pf_dict_get(msg, "errors");
    z->skips = pf_dict_get(msg, "skips");
    const pf_value *w = pf_dict_get(msg, "warnings");
    z->nwarnings = w && pf_is_seq(w) ? w->u.seq.len : 0;
    const char *root = pf_dict_str(msg, "rootdir");
    snprintf(z->rootdir, sizeof z->rootdir, "%s", root ? root : z->id.cwd);
    dmn_record_watch(z);
    util_log("collected zygote ready: %zu items, %zu collection errors, %zu watched paths, %.2fs",
             z->nitems, z->errors && pf_is_seq(z->errors) ? z->errors->u.seq.len : 0,
             z->nwatch, z->boot_wall);
}

static size_t dmn_nerrors(const dmn_zygote *z)
{
    return z && z->errors && pf_is_seq(z->errors) ? z->errors->u.seq.len : 0;
}

/* Lowest stale level of z's chain (checking from the bottom), or -1. */
static int dmn_chain_stale(dmn_zygote *z, char *why, size_t len)
{
    dmn_zygote *chain[3];
    int n = 0;
    for (dmn_zygote *p = z; p && n < 3; p = p->parent)
        chain[n++] = p;
    for (int i = n - 1; i >= 0; i--)
        if (dmn_stale(chain[i], why, len))
            return chain[i]->level;
    return -1;
}

static void dmn_boot_done(dmn_zygote *z);

/* Move the tree being built one step on: exec or fork the next level
 * once the one below it is ready. */
static void dmn_boot_advance(void)
{
    dmn_zygote **b = dmn.bchain;
    if (!dmn.booting)
        return;
    char err[PF_ERRLEN] = "";
    for (int l = dmn.boot_from_layers ? L_SITE : L_COLLECTED; l <= L_COLLECTED; l++) {
        if (!b[l]) {
            b[l] = l == L_SITE || !dmn.boot_from_layers ? dmn_exec_root(l, &dmn.boot_id, err, sizeof err)
                                                        : dmn_fork_node(b[l - 1], l);
            if (!b[l]) {
                util_log("cannot start the %s zygote: %s", dmn_level_names[l], err);
                break;
            }
            return;
        }
        if (b[l]->state == Z_BOOTING)
            return;
        if (l < L_COLLECTED && b[l]->state != Z_READY) {
            /* A preload crashed the interpreter: never layer again here. */
            util_log("the %s zygote failed; layers are off for this daemon", dmn_level_names[l]);
            dmn.layers_broken = true;
            dmn.boot_from_layers = false;
            b[0] = b[1] = NULL;
            dmn_boot_advance();
            return;
        }
    }
    dmn.booting = false;
    dmn_zygote *done = b[L_COLLECTED];
    b[0] = b[1] = b[2] = NULL;
    dmn_ident_free(&dmn.boot_id);
    if (done)
        dmn_boot_done(done);
    else
        dmn_node_gc();
}

/* Start building a collected zygote for id, reusing the ready levels of
 * the current tree below `from`. */
static void dmn_boot_start(const dmn_ident *id, int from)
{
    if (dmn.cur)
        dmn_purge_changed(dmn.cur);
    dmn.booting = true;
    dmn_ident_copy(&dmn.boot_id, id);
    dmn.boot_from_layers = dmn_layers_wanted(id);
    dmn.bchain[0] = dmn.bchain[1] = dmn.bchain[2] = NULL;
    if (dmn.boot_from_layers) {
        dmn_plan_load(id);
        dmn_zygote *chain[3] = {NULL, NULL, NULL};
        for (dmn_zygote *p = dmn.cur; p; p = p->parent)
            chain[p->level] = p;
        for (int l = L_SITE; l < from && l < L_COLLECTED; l++) {
            if (!chain[l] || chain[l]->state != Z_READY || !dmn_plan_fits(chain[l]))
                break;
            dmn.bchain[l] = chain[l];
        }
    }
    dmn_boot_advance();
}

/* A collected zygote finished booting: it serves from now on.  One that
 * is broken where the current one worked does not replace it: the old
 * tree stays alive, so that reverting the edit is warm at once. */
static void dmn_boot_done(dmn_zygote *z)
{
    dmn_zygote *old = dmn.cur;
    bool regressed = old && old->state == Z_READY &&
                     (z->state != Z_READY || dmn_nerrors(z) > dmn_nerrors(old));
    if (old != z)
        dmn.prev = regressed ? old : NULL;
    dmn.cur = z;
    if (z->state == Z_READY)
        dmn_plan_save(z);
    dmn_node_gc();
    dmn_run_next();
}

/* A frame from a zygote node.  Site and project levels say "level" when
 * their preloads are done; the collected level says "ready" (or "exited"
 * when pytest stopped before collecting); parents report their children
 * with "forked" and "reaped". */
static void dmn_zygote_died(dmn_zygote *z, int status);

static dmn_zygote *dmn_node_by_pid(pid_t pid)
{
    for (int i = 0; i < DMN_NODES; i++)
        if (dmn.nodes[i].state != Z_DOWN && dmn.nodes[i].pid == pid)
            return &dmn.nodes[i];
    return NULL;
}

static void dmn_zygote_frame(dmn_zygote *z)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *msg;
    char err[160];
    if (pf_decode(a, z->rd.body.data, z->rd.need, &msg, err, sizeof err) < 0 || msg->kind != PF_DICT) {
        util_log("bad frame from a zygote: %s", err);
        pf_arena_free(a);
        return;
    }
    const char *op = pf_dict_str(msg, "op");
    int64_t pid = 0;
    pf_dict_int(msg, "pid", &pid);
    if (op && !strcmp(op, "level") && z->state == Z_BOOTING && z->level < L_COLLECTED) {
        z->arena = a;
        z->ready = msg;
        z->state = Z_READY;
        z->boot_wall = util_now() - z->boot_start;
        dmn_record_watch(z);
        int64_t failed = 0;
        pf_dict_int(msg, "failed", &failed);
        util_log("%s zygote ready in %.2fs: %zu watched paths, %lld preloads left to the normal import",
                 dmn_level_names[z->level], z->boot_wall, z->nwatch, (long long)failed);
        const pf_value *tainted = pf_dict_get(msg, "tainted");
        if (tainted && tainted->kind == PF_BOOL && tainted->u.b && dmn.bchain[z->level] == z) {
            /* Its state is not what a plain run's first test would meet:
             * build the level again, without warming up from now on. */
            util_log("configuring SQLAlchemy's mappers raised or warned in the %s zygote: "
                     "building it again without the warm-up", dmn_level_names[z->level]);
            dmn.warmup_tainted = true;
            dmn.bchain[z->level] = NULL;
            dmn_node_kill(z);
        }
        dmn_boot_advance();
        return;
    }
    if (op && !strcmp(op, "ready") && z->state == Z_BOOTING && z->level == L_COLLECTED) {
        dmn_zygote_ready(z, a, msg);
        dmn_boot_advance();
        return;
    }
    if (op && !strcmp(op, "exited") && z->state == Z_BOOTING) {
        int64_t rc = 3;
        pf_dict_int(msg, "rc", &rc);
        z->exit_rc = (int)rc;
        z->state = Z_EXITED;
        z->arena = a;      /* its file lists decide when to try again */
        z->ready = msg;
        dmn_record_watch(z);
        dmn_boot_advance();
        return;
    }
    if (op && !strcmp(op, "forked")) {
        if (z->level == L_COLLECTED) {
            if (dmn.run && dmn.run->z == z)
                dmn.run->leader_pid = (pid_t)pid;
        } else {
            for (int i = 0; i < DMN_NODES; i++)
                if (dmn.nodes[i].state == Z_BOOTING && dmn.nodes[i].parent == z && !dmn.nodes[i].pid)
                    dmn.nodes[i].pid = (pid_t)pid;
        }
    } else if (op && !strcmp(op, "reaped")) {
        int64_t status = 0;
        pf_dict_int(msg, "status", &status);
        dmn_zygote *child = z->level < L_COLLECTED ? dmn_node_by_pid((pid_t)pid) : NULL;
        if (child)
            dmn_zygote_died(child, (int)status);
        else if (dmn.run && dmn.run->z == z && pid == dmn.run->leader_pid)
            dmn.run->leader_pid = 0;
    }
    pf_arena_free(a);
}

static void dmn_zygote_read(dmn_zygote *z)
{
    for (;;) {
        int st = pf_reader_feed(&z->rd, z->fd);
        if (st == PF_READ_FRAME) {
            dmn_zygote_frame(z);
            if (z->state == Z_DOWN)
                return;
            pf_reader_reset(&z->rd);
            continue;
        }
        if (st == PF_READ_AGAIN)
            return;
        util_close(&z->fd);
        /* A forked node's socket closes when it dies; its parent may not
         * be there to report it. */
        if (z->parent)
            dmn_zygote_died(z, 0);
        return;
    }
}

/* A zygote process ended: before it was ready (pytest said why on the
 * output, or the interpreter crashed), or later (killed, crashed). */
static void dmn_zygote_died(dmn_zygote *z, int status)
{
    if (z->state == Z_DOWN)
        return;
    while (z->fd >= 0) {
        int st = pf_reader_feed(&z->rd, z->fd);
        if (st != PF_READ_FRAME) {
            util_close(&z->fd);
            break;
        }
        dmn_zygote_frame(z);
        if (z->state == Z_DOWN)
            return;
        pf_reader_reset(&z->rd);
    }
    if (!z->parent && z->out >= 0)
        dmn_zygote_output(z);
    z->pid = 0;
    if (z->state == Z_BOOTING && z->level == L_COLLECTED) {
        z->exit_rc = WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status) : 3;
        if (WIFSIGNALED(status) || !z->output.len)
            pf_buf_printf(&z->output, "\npytest-fast: the zygote %s before collecting\n",
                          WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "exited");
        z->state = Z_EXITED;
        dmn_record_watch(z);
        dmn_boot_advance();
        return;
    }
    if (z->state == Z_BOOTING) {
        z->state = Z_EXITED;
        dmn_boot_advance();
        return;
    }
    if (z->state == Z_EXITED)
        return;
    util_log("the %s zygote exited unexpectedly (status %d)", dmn_level_names[z->level], status);
    /* Everything above it dies with it; the active run (if it stands on
     * it) keeps the items until it ends. */
    for (int i = 0; i < DMN_NODES; i++) {
        dmn_zygote *n = &dmn.nodes[i];
        if (n->state != Z_DOWN && dmn_is_ancestor(z, n)) {
            util_close(&n->fd);
            n->pid = 0;
            n->state = Z_EXITED;
            n->exit_rc = -1;   /* dead, not a pytest verdict: never serves again */
        }
    }
    if (dmn.cur && dmn.cur->exit_rc == -1)
        dmn.cur = NULL;
    if (dmn.prev && dmn.prev->exit_rc == -1)
        dmn.prev = NULL;
    if (!dmn.run)
        dmn_node_gc();
    dmn_run_next();
}

/* ------------------------------------------------------------------- runs */

static void dmn_run_free(dmn_run *r)
{
    if (!r)
        return;
    util_close(&r->leader_fd);
    pf_reader_free(&r->leader_rd);
    for (int i = 0; i < r->nworkers; i++) {
        util_close(&r->workers[i].fd);
        util_close(&r->workers[i].fault);
        pf_reader_free(&r->workers[i].rd);
        pf_buf_free(&r->workers[i].faulttext);
    }
    free(r->workers);
    free(r->sel);
    free(r->severity);
    free(r->failures);
    free(r->exit_msg);
    for (size_t i = 0; i < r->nframes; i++)
        pf_arena_free(r->frames[i]);
    free(r->frames);
    pf_arena_free(r->keep);
    free(r);
}

static void dmn_kill_run_processes(dmn_run *r)
{
    if (r->leader_pid > 0)
        kill(-r->leader_pid, SIGKILL);
    for (int i = 0; i < r->nworkers; i++)
        if (r->workers[i].pid > 0 && !r->workers[i].exited)
            kill(r->workers[i].pid, SIGKILL);
}

/* Next position for worker w: its handed-back items, its own segment, or
 * the unclaimed tail half of the largest remaining segment.  -1: none. */
static long dmn_next_position(dmn_run *r, dmn_worker *w)
{
    if (r->stopping)
        return -1;
    if (w->npending)
        return (long)w->pending[--w->npending];
    if (w->seg_lo < w->seg_hi)
        return (long)w->seg_lo++;
    dmn_worker *victim = NULL;
    for (int i = 0; i < r->nworkers; i++) {
        dmn_worker *v = &r->workers[i];
        if (v->npending && !v->exited) {
            w->npending = 0;
            return (long)v->pending[--v->npending];
        }
        if (v->seg_hi - v->seg_lo > (victim ? victim->seg_hi - victim->seg_lo : 0))
            victim = v;
    }
    if (!victim)
        return -1;
    size_t left = victim->seg_hi - victim->seg_lo;
    size_t mid = victim->seg_lo + left / 2;
    w->seg_lo = mid;
    w->seg_hi = victim->seg_hi;
    victim->seg_hi = mid;
    return (long)w->seg_lo++;
}

static pf_value *dmn_index_reply(pf_arena *a, dmn_run *r, long pos)
{
    if (pos < 0)
        return r->stopping ? pf_new_int(a, -1) : pf_new_none(a);
    return pf_new_int(a, (int64_t)r->sel[pos]);
}

static bool dmn_worker_claim(dmn_run *r, dmn_worker *w, pf_arena *a, pf_value **reply)
{
    long pos = dmn_next_position(r, w);
    if (pos >= 0 && w->nclaimed < 2)
        w->claimed[w->nclaimed++] = pos;
    *reply = dmn_index_reply(a, r, pos);
    return pos >= 0;
}

static const char *dmn_str_at(const pf_value *t, size_t i)
{
    return pf_is_seq(t) && i < t->u.seq.len && t->u.seq.items[i]->kind == PF_STR
               ? t->u.seq.items[i]->u.s.ptr : NULL;
}

static void dmn_count_report(dmn_run *r, size_t pos, const char *when, const char *outcome,
                             const char *category, double duration, const char *text,
                             const pf_value *sections)
{
    int cat = dmn_category(category);
    if (cat >= 0) {
        r->counts[cat]++;
        if (cat > r->severity[pos])
            r->severity[pos] = (signed char)cat;
    } else if (r->severity[pos] < 0 && outcome && !strcmp(outcome, "passed")) {
        r->severity[pos] = 0;
    }
    if (outcome && !strcmp(outcome, "failed")) {
        if (r->nfailures == r->capfailures) {
            r->capfailures = r->capfailures ? r->capfailures * 2 : 16;
            r->failures = util_realloc(r->failures, r->capfailures * sizeof *r->failures);
        }
        r->failures[r->nfailures++] = (dmn_failure){pos, when, category ? category : "failed",
                                                    text, sections};
    }
    if (duration >= 0.005 && !isnan(duration)) {
        size_t k = r->ntop < DMN_TOP_DURATIONS ? r->ntop++ : DMN_TOP_DURATIONS - 1;
        if (k == DMN_TOP_DURATIONS - 1 && r->ntop == DMN_TOP_DURATIONS &&
            r->top[k].seconds >= duration)
            return;
        while (k > 0 && r->top[k - 1].seconds < duration) {
            r->top[k] = r->top[k - 1];
            k--;
        }
        r->top[k] = (dmn_duration){duration, when, pos};
    }
}

/* The daemon-made report for an item whose worker died or hung. */
static void dmn_crash_report(dmn_run *r, dmn_worker *w, size_t pos, const char *reason)
{
    pf_arena *a = r->keep;
    const dmn_item *it = &r->z->items[r->sel[pos]];
    char *head = util_fmt("worker 'gw%d' %s while running %s", w->wid, reason, it->nodeid);
    pf_buf text = {0};
    pf_buf_printf(&text, "%s", head);
    if (w->faulttext.len) {
        pf_buf_printf(&text, "\n\n");
        pf_buf_put(&text, w->faulttext.data, w->faulttext.len);
    }
    pf_buf_put(&text, "", 1);
    const char *stored = pf_new_cstr(a, (const char *)text.data)->u.s.ptr;
    dmn_count_report(r, pos, "call", "failed", "failed", 0, stored, NULL);
    r->failed_reports++;
    pf_value *lf = pf_new_container(a, PF_TUPLE);
    pf_append(a, lf, pf_new_cstr(a, it->nodeid));
    pf_append(a, lf, pf_new_cstr(a, "call"));
    pf_append(a, lf, pf_new_cstr(a, "failed"));
    pf_append(a, r->lf, lf);
    if (r->client && r->client->stream) {
        pf_arena *m = pf_arena_new(0);
        pf_value *d = util_msg(m, "report");
        pf_value *rep = pf_new_container(m, PF_DICT);
        util_set(m, rep, "$report_type", pf_new_cstr(m, "TestReport"));
        util_set(m, rep, "nodeid", pf_new_cstr(m, it->nodeid));
        pf_value *loc = pf_new_container(m, PF_TUPLE);
        pf_append(m, loc, pf_new_cstr(m, it->fspath));
        pf_append(m, loc, it->lineno >= 0 ? pf_new_int(m, it->lineno) : pf_new_none(m));
        pf_append(m, loc, pf_new_cstr(m, it->domain));
        util_set(m, rep, "location", loc);
        util_set(m, rep, "keywords", pf_new_container(m, PF_DICT));
        util_set(m, rep, "outcome", pf_new_cstr(m, "failed"));
        util_set(m, rep, "longrepr", pf_new_cstr(m, stored));
        util_set(m, rep, "when", pf_new_cstr(m, "call"));
        util_set(m, rep, "user_properties", pf_new_container(m, PF_LIST));
        util_set(m, rep, "sections", pf_new_container(m, PF_LIST));
        util_set(m, rep, "duration", pf_new_float(m, util_now() - w->item_start));
        util_set(m, rep, "start", pf_new_float(m, 0));
        util_set(m, rep, "stop", pf_new_float(m, 0));
        pf_value *list = pf_new_container(m, PF_LIST);
        pf_append(m, list, rep);
        util_set(m, d, "reports", list);
        util_set(m, d, "warnings", pf_new_container(m, PF_LIST));
        dmn_send(r->client, d);
        pf_arena_free(m);
    }
    r->done++;
    free(head);
    pf_buf_free(&text);
}

static void dmn_maybe_stop(dmn_run *r)
{
    int maxfail = r->client ? r->client->split.maxfail : 0;
    if (maxfail > 0 && r->failed_reports >= maxfail && !r->stopping) {
        r->stopping = true;
        if (!r->exit_msg)
            r->exit_msg = util_fmt("stopping after %d failure%s", r->failed_reports,
                                   r->failed_reports == 1 ? "" : "s");
    }
}

/* A worker finished an item: ("d", index, reports, warnings, want). */
static void dmn_worker_done(dmn_run *r, dmn_worker *w, pf_arena *a, const pf_value *frame,
                            bool *keep_arena, pf_value **reply)
{
    const pf_value *idx = frame->u.seq.items[1];
    const pf_value *reports = frame->u.seq.items[2];
    const pf_value *warnings = frame->u.seq.items[3];
    bool want = frame->u.seq.items[4]->kind == PF_BOOL && frame->u.seq.items[4]->u.b;
    if (w->nclaimed == 0 || idx->kind != PF_INT || r->sel[w->claimed[0]] != (size_t)idx->u.i) {
        util_log("worker gw%d reported an item it does not hold; dropping it", w->wid);
        w->stopped = true;
        return;
    }
    size_t pos = (size_t)w->claimed[0];
    const dmn_item *it = &r->z->items[r->sel[pos]];
    double now = util_now();
    w->busy += now - w->item_start;
    w->item_start = now;
    w->claimed[0] = w->claimed[1];
    w->nclaimed--;
    r->done++;
    for (size_t i = 0; pf_is_seq(reports) && i < reports->u.seq.len; i++) {
        const pf_value *t = reports->u.seq.items[i];
        if (!pf_is_seq(t) || t->u.seq.len != 8)
            continue;
        const char *when = dmn_str_at(t, 0), *outcome = dmn_str_at(t, 1);
        const char *category = dmn_str_at(t, 2), *text = dmn_str_at(t, 4);
        double duration = t->u.seq.items[3]->kind == PF_FLOAT ? t->u.seq.items[3]->u.f : 0;
        if (!when || !outcome)
            continue;
        if (outcome && !strcmp(outcome, "failed") && t->u.seq.items[6]->kind != PF_STR) {
            r->failed_reports++;
            *keep_arena = true;
        }
        dmn_count_report(r, pos, when, outcome, category, duration, text,
                         t->u.seq.items[5]);
        if (strcmp(outcome, "passed") || !strcmp(when, "call")) {
            pf_value *lf = pf_new_container(r->keep, PF_TUPLE);
            pf_append(r->keep, lf, pf_new_cstr(r->keep, it->nodeid));
            pf_append(r->keep, lf, pf_new_cstr(r->keep, when));
            pf_append(r->keep, lf, pf_new_cstr(r->keep, outcome));
            pf_append(r->keep, r->lf, lf);
        }
        if (duration >= 0.005)
            *keep_arena = true;
    }
    r->warnings += warnings && pf_is_seq(warnings) ? warnings->u.seq.len : 0;
    if (r->client && r->client->stream) {
        pf_arena *m = pf_arena_new(0);
        pf_value *d = util_msg(m, "report");
        pf_value *list = pf_new_container(m, PF_LIST);
        for (size_t i = 0; pf_is_seq(reports) && i < reports->u.seq.len; i++) {
            const pf_value *t = reports->u.seq.items[i];
            if (pf_is_seq(t) && t->u.seq.len == 8 && t->u.seq.items[7]->kind == PF_DICT)
                pf_append(m, list, (pf_value *)t->u.seq.items[7]);
        }
        util_set(m, d, "reports", list);
        util_set(m, d, "warnings", (pf_value *)warnings);
        dmn_send(r->client, d);
        pf_arena_free(m);
    }
    dmn_maybe_stop(r);
    if (want)
        dmn_worker_claim(r, w, a, reply);
    else if (r->stopping)
        *reply = NULL;
}

static void dmn_worker_frame(dmn_run *r, dmn_worker *w)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *v;
    char err[160];
    r->rx += w->rd.need + PF_FRAME_HEADER;
    if (pf_decode(a, w->rd.body.data, w->rd.need, &v, err, sizeof err) < 0 || !pf_is_seq(v) ||
        v->u.seq.len == 0 || v->u.seq.items[0]->kind != PF_STR) {
        util_log("worker gw%d sent a bad frame (%s); stopping it", w->wid, err);
        kill(w->pid, SIGKILL);
        pf_arena_free(a);
        return;
    }
    const char *op = v->u.seq.items[0]->u.s.ptr;
    pf_value *reply = NULL;
    bool keep = false;
    if (!strcmp(op, "n")) {
        if (w->first_ask == 0) {
            w->first_ask = util_now();
            w->item_start = w->first_ask;
            if (r->ready_at == 0)
                r->ready_at = w->first_ask;
        }
        dmn_worker_claim(r, w, a, &reply);
    } else if (!strcmp(op, "d") && v->u.seq.len == 5) {
        dmn_worker_done(r, w, a, v, &keep, &reply);
        r->round_trips++;
    } else if (!strcmp(op, "x") && v->u.seq.len == 3) {
        r->stopping = true;
        r->exit_rc = v->u.seq.items[1]->kind == PF_INT ? (int)v->u.seq.items[1]->u.i : 2;
        const char *m = dmn_str_at(v, 2);
        free(r->exit_msg);
        r->exit_msg = util_fmt("_pytest.outcomes.Exit: %s", m ? m : "");
    } else if (!strcmp(op, "f")) {
        w->finished = true;
    }
    if (reply && w->fd >= 0 && pf_send_value(w->fd, reply) < 0)
        util_log("worker gw%d: cannot send: %s", w->wid, strerror(errno));
    if (keep) {
        /* failures and durations point into this frame: keep it for the run */
        if (r->nframes == r->capframes) {
            r->capframes = r->capframes ? r->capframes * 2 : 16;
            r->frames = util_realloc(r->frames, r->capframes * sizeof *r->frames);
        }
        r->frames[r->nframes++] = a;
    } else {
        pf_arena_free(a);
    }
}

static void dmn_worker_read(dmn_run *r, dmn_worker *w)
{
    for (;;) {
        int st = pf_reader_feed(&w->rd, w->fd);
        if (st == PF_READ_FRAME) {
            dmn_worker_frame(r, w);
            pf_reader_reset(&w->rd);
            if (!w->finished)
                continue;
            /* Its session is over; _exit follows: done, without waiting
             * for the leader to report the reaping. */
            w->exited = true;
            util_close(&w->fault);
        }
        if (st != PF_READ_AGAIN)
            util_close(&w->fd);
        return;
    }
}

static void dmn_fault_read(dmn_worker *w)
{
    char buf[4096];
    for (;;) {
        ssize_t n = read(w->fault, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                util_close(&w->fault);
            return;
        }
        if (w->faulttext.len < 65536)
            pf_buf_put(&w->faulttext, buf, (size_t)n);
    }
}

static int dmn_fork_worker(dmn_run *r, dmn_worker *w)
{
    int sv[2], fp[2];
    if (util_socketpair(sv) < 0)
        return -1;
    if (pipe(fp) < 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    util_cloexec(fp[0]);
    util_cloexec(fp[1]);
    pf_arena *a = pf_arena_new(0);
    pf_value *msg = util_msg(a, "fork");
    util_set(a, msg, "wid", pf_new_int(a, w->wid));
    pf_buf b = {0};
    int fds[2] = {sv[1], fp[1]};
    int rc = pf_encode(&b, msg) == 0 ? pf_frame_write(r->leader_fd, b.data, b.len, fds, 2) : -1;
    pf_buf_free(&b);
    pf_arena_free(a);
    close(sv[1]);
    close(fp[1]);
    if (rc < 0) {
        close(sv[0]);
        close(fp[0]);
        return -1;
    }
    util_nonblock(sv[0]);
    util_nonblock(fp[0]);
    w->fd = sv[0];
    w->fault = fp[0];
    pf_reader_init(&w->rd);
    w->started = util_now();
    return 0;
}

static dmn_worker *dmn_add_worker(dmn_run *r, size_t lo, size_t hi)
{
    if (r->nworkers == r->maxworkers) {
        r->maxworkers = r->maxworkers ? r->maxworkers * 2 : 4;
        r->workers = util_realloc(r->workers, (size_t)r->maxworkers * sizeof *r->workers);
    }
    dmn_worker *w = &r->workers[r->nworkers++];
    memset(w, 0, sizeof *w);
    w->wid = r->next_wid++;
    w->fd = w->fault = -1;
    w->seg_lo = lo;
    w->seg_hi = hi;
    if (dmn_fork_worker(r, w) < 0) {
        util_log("cannot fork worker gw%d: %s", w->wid, strerror(errno));
        w->exited = true;
        w->finished = true;
        return NULL;
    }
    return w;
}

/* A worker's process is gone: attribute its running item, hand its
 * unrun items to a replacement. */
static void dmn_worker_gone(dmn_run *r, int wi, int status)
{
    dmn_worker *w = &r->workers[wi];
    if (w->fd >= 0)
        dmn_worker_read(r, w);
    w = &r->workers[wi];
    if (w->fault >= 0)
        dmn_fault_read(w);
    w->exited = true;
    w->status = status;
    util_close(&w->fd);
    util_close(&w->fault);
    if (w->finished && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return;
    if (r->cancelled)
        return;
    bool timed_out = w->faulttext.len && memmem(w->faulttext.data, w->faulttext.len, "Timeout (", 9);
    if (w->nclaimed > 0) {
        char reason[128];
        if (timed_out)
            snprintf(reason, sizeof reason, "timed out after %gs", r->client ? r->client->timeout : 0);
        else if (WIFSIGNALED(status))
            snprintf(reason, sizeof reason, "crashed (signal %d: %s)", WTERMSIG(status),
                     strsignal(WTERMSIG(status)));
        else
            snprintf(reason, sizeof reason, "exited with code %d", WEXITSTATUS(status));
        dmn_crash_report(r, w, (size_t)w->claimed[0], reason);
        dmn_maybe_stop(r);
    }
    size_t lo = w->seg_lo, hi = w->seg_hi;
    size_t pending[3];
    int npending = 0;
    if (w->nclaimed > 1)
        pending[npending++] = (size_t)w->claimed[1];
    while (w->npending && npending < 3)
        pending[npending++] = w->pending[--w->npending];
    w->seg_lo = w->seg_hi = 0;
    w->nclaimed = 0;
    if (r->stopping || (lo >= hi && npending == 0))
        return;
    if (r->exit_rc < 0 && !w->finished)
        util_log("worker gw%d died; forking a replacement", w->wid);
    dmn_worker *fresh = dmn_add_worker(r, lo, hi);
    if (fresh) {
        for (int i = npending - 1; i >= 0 && fresh->npending < 2; i--)
            fresh->pending[fresh->npending++] = pending[i];
    }
}

/* ---------------------------------------------------------------- summary */

static void dmn_indent(pf_buf *b, const char *text, const char *pad)
{
    const char *p = text;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        pf_buf_printf(b, "%s%.*s\n", pad, (int)n, p);
        p = nl ? nl + 1 : NULL;
    }
}

static const char dmn_rule[] =
    "══════════════════════════════════════════════════════════════════";

/* pytest's closing line: "1 failed, 412 passed, 3 warnings in 8.42s". */
static void dmn_stats_line(pf_buf *b, dmn_run *r, size_t collect_errors, double wall)
{
    static const int order[] = {4, 0, 1, 2, 3};
    bool any = false;
    for (size_t k = 0; k < sizeof order / sizeof *order; k++) {
        size_t n = r->counts[order[k]];
        if (n) {
            pf_buf_printf(b, "%s%zu %s", any ? ", " : "", n, dmn_categories[order[k]]);
            any = true;
        }
        if (order[k] == 1 && r->deselected) {
            pf_buf_printf(b, "%s%zu deselected", any ? ", " : "", r->deselected);
            any = true;
        }
    }
    if (r->warnings) {
        pf_buf_printf(b, "%s%zu warning%s", any ? ", " : "", r->warnings, r->warnings == 1 ? "" : "s");
        any = true;
    }
    size_t errors = r->counts[5] + collect_errors;
    if (errors) {
        pf_buf_printf(b, "%s%zu error%s", any ? ", " : "", errors, errors == 1 ? "" : "s");
        any = true;
    }
    if (!any)
        pf_buf_printf(b, "no tests ran");
    pf_buf_printf(b, " in %.2fs", wall);
}

static bool dmn_error_in_scope(const dmn_run *r, size_t i)
{
    if (!r->scoped)
        return true;
    for (size_t k = 0; k < r->scoped->u.seq.len; k++)
        if (r->scoped->u.seq.items[k]->kind == PF_INT && (size_t)r->scoped->u.seq.items[k]->u.i == i)
            return true;
    return false;
}

/* Skipped collectors follow the errors in the list the leader scopes. */
static size_t dmn_scoped_skips(const dmn_run *r, pf_arena *a, pf_value *into)
{
    const pf_value *skips = r->z->skips;
    size_t n = 0, base = dmn_nerrors(r->z);
    for (size_t j = 0; skips && pf_is_seq(skips) && j < skips->u.seq.len; j++) {
        if (!dmn_error_in_scope(r, base + j))
            continue;
        n++;
        const pf_value *e = skips->u.seq.items[j];
        if (into && pf_is_seq(e) && e->u.seq.len == 4)
            pf_append(a, into, e->u.seq.items[3]);
    }
    return n;
}

static size_t dmn_scoped_errors(const dmn_run *r)
{
    size_t n = 0;
    for (size_t i = 0; i < dmn_nerrors(r->z); i++)
        n += dmn_error_in_scope(r, i);
    return n;
}

static char *dmn_render(dmn_run *r, int rc)
{
    dmn_conn *c = r->client;
    pf_buf b = {0};
    double wall = r->end - r->start;
    double runwall = r->ready_at ? r->end - r->ready_at : 0;
    double warmup = r->ready_at ? r->ready_at - r->start : wall;
    size_t nerr = dmn_scoped_errors(r);
    pf_buf_printf(&b, "\n%s\n  FORKSERVER DAEMON  —  %dw  —  run #%u (%s)\n%s\n", dmn_rule,
                  r->nworkers, dmn.runs, c->waited ? "cold" : "warm", dmn_rule);
    pf_buf_printf(&b, "  results : ");
    dmn_stats_line(&b, r, nerr, wall);
    pf_buf_printf(&b, "  (n=%zu/%zu)\n", r->done, r->nsel);
    if (nerr) {
        pf_buf_printf(&b, "  COLLECT ERRORS (%zu) — files not collected, their tests DID NOT RUN:\n", nerr);
        for (size_t i = 0; i < dmn_nerrors(r->z); i++) {
            if (!dmn_error_in_scope(r, i))
                continue;
            const pf_value *e = r->z->errors->u.seq.items[i];
            pf_buf_printf(&b, "    ✗ %s\n", dmn_str_at(e, 0) ? dmn_str_at(e, 0) : "?");
            if (!c->split.full_trace_none && dmn_str_at(e, 2))
                dmn_indent(&b, dmn_str_at(e, 2), "      ");
        }
    }
    pf_buf_printf(&b, "  warmup  : %6.2fs   (%s)\n", warmup,
                  c->waited ? "waited for a collection, then fork" : "fork; the collection was warm");
    pf_buf_printf(&b, "  RUN     : %6.2fs   ← wall\n", runwall);
    double busy = 0, maxw = 0, minw = 0;
    for (int i = 0; i < r->nworkers; i++) {
        dmn_worker *w = &r->workers[i];
        double ww = w->first_ask ? r->end - w->first_ask : 0;
        busy += w->busy;
        maxw = ww > maxw ? ww : maxw;
        minw = (i == 0 || ww < minw) ? ww : minw;
    }
    pf_buf_printf(&b, "  par.    : %.2fx of %d   (run-wall max=%.2f min=%.2f)\n",
                  runwall > 0 ? busy / runwall : 0, r->nworkers, maxw, minw);
    pf_buf_printf(&b, "  bus     : %zu round-trips, %.0fKB rx\n", r->round_trips, (double)r->rx / 1024);
    size_t nfail = 0;
    for (size_t i = 0; i < r->nfailures; i++)
        nfail += dmn_category(r->failures[i].category) >= 4;
    if (nfail) {
        pf_buf_printf(&b, "  FAILURES (%zu):\n", nfail);
        for (size_t i = 0; i < r->nfailures; i++) {
            dmn_failure *f = &r->failures[i];
            if (dmn_category(f->category) < 4)
                continue;
            const char *nodeid = r->z->items[r->sel[f->pos]].nodeid;
            if (strcmp(f->when, "call"))
                pf_buf_printf(&b, "    ✗ %s  (%s in %s)\n", nodeid, f->category, f->when);
            else
                pf_buf_printf(&b, "    ✗ %s\n", nodeid);
            if (c->split.full_trace_none)
                continue;
            if (f->text)
                dmn_indent(&b, f->text, "      ");
            for (size_t s = 0; f->sections && pf_is_seq(f->sections) && s < f->sections->u.seq.len; s++) {
                const pf_value *sec = f->sections->u.seq.items[s];
                if (dmn_str_at(sec, 0) && dmn_str_at(sec, 1)) {
                    pf_buf_printf(&b, "      ----- %s -----\n", dmn_str_at(sec, 0));
                    dmn_indent(&b, dmn_str_at(sec, 1), "      ");
                }
            }
        }
    }
    if (r->counts[3]) {
        pf_buf_printf(&b, "  XPASS (%zu) — stale xfail entries (now pass, drop them):\n", r->counts[3]);
        for (size_t pos = 0; pos < r->nsel; pos++)
            if (r->severity[pos] == 3)
                pf_buf_printf(&b, "    ? %s\n", r->z->items[r->sel[pos]].nodeid);
    }
    size_t ntop = c->split.durations > 0 && (size_t)c->split.durations < r->ntop ? (size_t)c->split.durations
                                                                                  : r->ntop;
    if ((c->full || c->split.durations >= 0) && ntop) {
        pf_buf_printf(&b, "  DURATIONS (top %zu, ≥5ms — per phase):\n", ntop);
        for (size_t i = 0; i < ntop; i++)
            pf_buf_printf(&b, "    %8.3fs  %-9s%s\n", r->top[i].seconds, r->top[i].when,
                          r->z->items[r->sel[r->top[i].pos]].nodeid);
    }
    if (r->exit_msg)
        pf_buf_printf(&b, "  !!!!!!!!!! %s !!!!!!!!!!\n", r->exit_msg);
    if (nerr && !c->split.continue_on_errors)
        pf_buf_printf(&b, "  Interrupted: %zu error%s during collection\n", nerr, nerr == 1 ? "" : "s");
    pf_buf_printf(&b, "%s\n", dmn_rule);
    const char *color = !c->color ? "" : rc == 0 || rc == 5 ? "\033[32m" : "\033[31m";
    pf_buf_printf(&b, "%s= ", color);
    dmn_stats_line(&b, r, nerr, wall);
    pf_buf_printf(&b, " =%s\n", c->color ? "\033[0m" : "");
    pf_buf_put(&b, "", 1);
    return (char *)b.data;
}

/* JSON string escaping for node ids in the --dump file. */
static void dmn_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static int dmn_write_dump(dmn_run *r, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        snprintf(err, errlen, "cannot write --dump %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    fputc('{', f);
    bool first = true;
    for (size_t i = 0; i < dmn_nerrors(r->z); i++) {
        if (!dmn_error_in_scope(r, i))
            continue;
        fputs(first ? "\n  " : ",\n  ", f);
        dmn_json_str(f, dmn_str_at(r->z->errors->u.seq.items[i], 0));
        fputs(": \"error\"", f);
        first = false;
    }
    for (size_t pos = 0; pos < r->nsel; pos++) {
        if (r->severity[pos] < 0)
            continue;
        fputs(first ? "\n  " : ",\n  ", f);
        dmn_json_str(f, r->z->items[r->sel[pos]].nodeid);
        fprintf(f, ": \"%s\"", dmn_categories[(int)r->severity[pos]]);
        first = false;
    }
    fputs(first ? "}\n" : "\n}\n", f);
    if (fclose(f) != 0) {
        snprintf(err, errlen, "cannot write --dump %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int dmn_exit_code(dmn_run *r)
{
    if (r->cancelled)
        return 2;
    if (r->exit_rc >= 0)
        return r->exit_rc;
    size_t nerr = dmn_scoped_errors(r);
    dmn_conn *c = r->client;
    if (nerr && !c->split.continue_on_errors)
        return 2;
    for (size_t pos = 0; pos < r->nsel; pos++)
        if (r->severity[pos] >= 4)
            return 1;
    if (nerr)
        return 1;
    if (r->nsel == 0)
        return 5;
    return 0;
}

/* Tell the leader how the run went so it can update .pytest_cache (the
 * CLI's job; under `pytest --fast` the controller's own plugins do it). */
static void dmn_finish_leader(dmn_run *r)
{
    if (r->leader_fd < 0)
        return;
    if (!r->client || !r->client->stream) {
        pf_arena *a = pf_arena_new(0);
        pf_value *msg = util_msg(a, "finish");
        util_set(a, msg, "reports", r->lf);
        pf_value *errs = pf_new_container(a, PF_LIST);
        for (size_t i = 0; i < dmn_nerrors(r->z); i++)
            if (dmn_error_in_scope(r, i))
                pf_append(a, errs, pf_new_cstr(a, dmn_str_at(r->z->errors->u.seq.items[i], 0)));
        util_set(a, msg, "collect_errors", errs);
        pf_send_value(r->leader_fd, msg);
        pf_arena_free(a);
    }
    util_close(&r->leader_fd);
}

static void dmn_run_end(dmn_run *r)
{
    r->end = util_now();
    dmn_conn *c = r->client;
    int rc = dmn_exit_code(r);
    dmn_finish_leader(r);
    bool discard = c && c->discard;
    if (c) {
        char err[PF_ERRLEN] = "";
        if (c->dump && dmn_write_dump(r, c->dump, err, sizeof err) < 0)
            rc = rc ? rc : 1;
        char *summary = dmn_render(r, rc);
        if (c->stream) {
            pf_arena *a = pf_arena_new(0);
            pf_value *d = util_msg(a, "done");
            util_set(a, d, "rc", pf_new_int(a, rc));
            util_set(a, d, "exit_msg", r->exit_msg ? pf_new_cstr(a, r->exit_msg) : pf_new_none(a));
            util_set(a, d, "error", pf_new_cstr(a, err));
            dmn_send(c, d);
            pf_arena_free(a);
        } else {
            dmn_send_done(c, rc, summary, err);
        }
        free(summary);
        dmn_conn_drop(c);
    }
    util_log("run #%u done: rc %d, %zu/%zu items, %.2fs", dmn.runs, rc, r->done, r->nsel,
             r->end - r->start);
    dmn_run_free(r);
    dmn.run = NULL;
    dmn.last_activity = dmn.last_run = util_now();
    if (discard)
    {
        dmn.cur = dmn.prev = NULL;   /* --start-method spawn: nothing stays warm */
        dmn_node_gc();
    }
    dmn_run_next();
}

/* The run is over when every worker has exited and been accounted for. */
static void dmn_run_check(dmn_run *r)
{
    if (!r->selected)
        return;
    for (int i = 0; i < r->nworkers; i++)
        if (!r->workers[i].exited)
            return;
    dmn_run_end(r);
}

/* The leader's selection arrived: start the workers, or finish at once. */
static void dmn_run_selected(dmn_run *r, const pf_value *msg)
{
    dmn_conn *c = r->client;
    const pf_value *idx = pf_dict_get(msg, "indices");
    int64_t des = 0;
    pf_dict_int(msg, "deselected", &des);
    r->deselected = (size_t)des;
    const pf_value *scoped = pf_dict_get(msg, "scoped_errors");
    r->scoped = scoped && pf_is_seq(scoped) ? scoped : NULL;
    r->nsel = idx && pf_is_seq(idx) ? idx->u.seq.len : 0;
    r->sel = util_alloc((r->nsel ? r->nsel : 1) * sizeof *r->sel);
    r->severity = util_alloc(r->nsel ? r->nsel : 1);
    memset(r->severity, -1, r->nsel ? r->nsel : 1);
    size_t n = 0;
    for (size_t i = 0; i < r->nsel; i++) {
        const pf_value *v = idx->u.seq.items[i];
        if (v->kind == PF_INT && v->u.i >= 0 && (size_t)v->u.i < r->z->nitems)
            r->sel[n++] = (size_t)v->u.i;
    }
    r->nsel = n;
    r->selected = true;
    size_t nerr = dmn_scoped_errors(r);
    if (c && c->stream) {
        pf_arena *a = pf_arena_new(0);
        pf_value *d = util_msg(a, "collected");
        pf_value *items = pf_new_container(a, PF_LIST);
        for (size_t i = 0; i < r->nsel; i++) {
            const dmn_item *it = &r->z->items[r->sel[i]];
            pf_value *t = pf_new_container(a, PF_TUPLE);
            pf_append(a, t, pf_new_cstr(a, it->nodeid));
            pf_append(a, t, pf_new_cstr(a, it->fspath));
            pf_append(a, t, it->lineno >= 0 ? pf_new_int(a, it->lineno) : pf_new_none(a));
            pf_append(a, t, pf_new_cstr(a, it->domain));
            pf_append(a, items, t);
        }
        util_set(a, d, "items", items);
        util_set(a, d, "deselected", pf_new_int(a, (int64_t)r->deselected));
        pf_value *errs = pf_new_container(a, PF_LIST);
        for (size_t i = 0; i < dmn_nerrors(r->z); i++)
            if (dmn_error_in_scope(r, i)) {
                const pf_value *e = r->z->errors->u.seq.items[i];
                if (pf_is_seq(e) && e->u.seq.len == 4)
                    pf_append(a, errs, e->u.seq.items[3]);
            }
        util_set(a, d, "errors", errs);
        pf_value *skips = pf_new_container(a, PF_LIST);
        dmn_scoped_skips(r, a, skips);
        util_set(a, d, "skips", skips);
        const pf_value *warns = pf_dict_get(r->z->ready, "warnings");
        util_set(a, d, "warnings", warns ? (pf_value *)warns : pf_new_container(a, PF_LIST));
        util_set(a, d, "cold", pf_new_bool(a, c->waited));
        dmn_send(c, d);
        pf_arena_free(a);
    }
    r->warnings += r->z->nwarnings;
    r->counts[1] += dmn_scoped_skips(r, NULL, NULL);   /* pytest counts them as skipped */
    if (c && c->split.collect_only && !c->stream) {
        pf_buf b = {0};
        for (size_t i = 0; i < r->nsel; i++)
            pf_buf_printf(&b, "%s\n", r->z->items[r->sel[i]].nodeid);
        for (size_t i = 0; i < dmn_nerrors(r->z); i++)
            if (dmn_error_in_scope(r, i))
                pf_buf_printf(&b, "ERROR %s\n", dmn_str_at(r->z->errors->u.seq.items[i], 0));
        pf_buf_printf(&b, "\n%zu test%s collected", r->nsel, r->nsel == 1 ? "" : "s");
        if (r->deselected)
            pf_buf_printf(&b, ", %zu deselected", r->deselected);
        if (nerr)
            pf_buf_printf(&b, ", %zu error%s", nerr, nerr == 1 ? "" : "s");
        pf_buf_printf(&b, " in %.2fs\n", util_now() - r->start);
        pf_buf_put(&b, "", 1);
        int rc = nerr ? 2 : r->nsel ? 0 : 5;
        dmn_finish_leader(r);
        dmn_send_done(c, rc, (const char *)b.data, NULL);
        pf_buf_free(&b);
        dmn_conn_drop(c);
        r->client = NULL;
        dmn_run_free(r);
        dmn.run = NULL;
        dmn_run_next();
        return;
    }
    if ((nerr && !c->split.continue_on_errors) || r->nsel == 0 || (c && c->split.collect_only)) {
        dmn_run_end(r);
        return;
    }
    int nw = c->workers < 1 ? 1 : c->workers;
    if ((size_t)nw > r->nsel)
        nw = (int)r->nsel;
    for (int i = 0; i < nw; i++) {
        size_t lo = r->nsel * (size_t)i / (size_t)nw, hi = r->nsel * (size_t)(i + 1) / (size_t)nw;
        dmn_add_worker(r, lo, hi);
    }
    dmn_run_check(r);
}

static void dmn_leader_frame(dmn_run *r, const pf_value *msg)
{
    const char *op = pf_dict_str(msg, "op");
    if (!op)
        return;
    if (!strcmp(op, "selected") && !r->selected) {
        dmn_run_selected(r, msg);
        return;
    }
    if (!strcmp(op, "usage")) {
        const char *m = pf_dict_str(msg, "message");
        dmn_conn *c = r->client;
        char *text = util_fmt("%s\n", m ? m : "ERROR: usage error");
        r->selected = true;
        r->exit_rc = 4;
        if (c) {
            dmn_send_done(c, 4, NULL, text);
            dmn_conn_drop(c);
            r->client = NULL;
        }
        free(text);
        util_close(&r->leader_fd);
        dmn_run_free(r);
        dmn.run = NULL;
        dmn_run_next();
        return;
    }
    if (!strcmp(op, "reaped")) {
        int64_t pid = 0, status = 0;
        pf_dict_int(msg, "pid", &pid);
        pf_dict_int(msg, "status", &status);
        for (int i = 0; i < r->nworkers; i++)
            if (r->workers[i].pid == (pid_t)pid && !r->workers[i].exited) {
                dmn_worker_gone(r, i, (int)status);
                break;
            }
        dmn_run_check(r);
        return;
    }
    if (!strcmp(op, "forked")) {
        int64_t pid = 0, wid = -1;
        pf_dict_int(msg, "pid", &pid);
        pf_dict_int(msg, "wid", &wid);
        for (int i = 0; i < r->nworkers; i++)
            if (r->workers[i].wid == wid) {
                r->workers[i].pid = (pid_t)pid;
                if (pid <= 0) {
                    r->workers[i].exited = true;
                    util_log("the leader could not fork gw%d", (int)wid);
                }
            }
        dmn_run_check(r);
    }
}

/* The leader is gone before the end of its run (killed, or the zygote
 * died): its workers die with it (PDEATHSIG), so account for them now. */
static void dmn_leader_died(dmn_run *r)
{
    util_log("the run leader died; its workers die with it");
    r->stopping = true;
    for (int i = 0; i < r->nworkers; i++) {
        dmn_worker *w = &r->workers[i];
        if (w->exited)
            continue;
        if (w->fd >= 0)
            dmn_worker_read(r, w);
        if (w->nclaimed > 0 && !w->finished && !r->cancelled)
            dmn_crash_report(r, w, (size_t)w->claimed[0], "was lost (the run leader died)");
        w->exited = true;
        util_close(&w->fd);
        util_close(&w->fault);
    }
    if (r->exit_rc < 0 && !r->cancelled) {
        r->exit_rc = 3;
        free(r->exit_msg);
        r->exit_msg = util_strdup("pytest-fast: the run leader died mid-run (see the daemon log); "
                                  "the next run starts a fresh zygote");
    }
    dmn_run_check(r);
}

/* --------------------------------------------------------- request intake */

static void dmn_fail_request(dmn_conn *c, int rc, const char *err)
{
    dmn_send_done(c, rc, NULL, err);
    dmn_conn_drop(c);
}

/* A node that can serve a run: collected and ready, or a boot that ended
 * with pytest's own verdict (usage error, broken conftest) for these files. */
static bool dmn_serves(const dmn_zygote *z)
{
    return z && z->level == L_COLLECTED && (z->state == Z_READY || (z->state == Z_EXITED && z->exit_rc >= 0));
}

/* The identity a request asks for, borrowing the connection's strings. */
static dmn_ident dmn_conn_ident(dmn_conn *c)
{
    dmn_ident id = {c->split.collect, c->env, c->cwd, c->python, c->fp};
    return id;
}

/* Choose the zygote for the request at the head of the queue: the current
 * one if its files are unchanged, the previous one if an edit was reverted;
 * otherwise re-build from the lowest stale level and say why. */
static dmn_zygote *dmn_pick(dmn_conn *c)
{
    dmn_ident want = dmn_conn_ident(c);
    char why[PF_ERRLEN];
    const char *reason = NULL;
    int from = L_SITE;
    if (c->fresh && !c->booted) {
        if (dmn.booting)
            return NULL;
        reason = c->discard ? "--start-method spawn" : "--start-method fork";
    } else {
        dmn_zygote *cands[2] = {dmn.cur, dmn.prev};
        for (int i = 0; i < 2; i++) {
            dmn_zygote *z = cands[i];
            if (!dmn_serves(z))
                continue;
            const char *differs = dmn_ident_differs(&z->id, &want);
            if (differs) {
                reason = reason ? reason : differs;
                continue;
            }
            int level = dmn_chain_stale(z, why, sizeof why);
            if (level < 0) {
                if (z != dmn.cur) {
                    dmn.prev = dmn.cur;
                    dmn.cur = z;
                }
                return z;
            }
            if (i == 0) {
                from = level;
                reason = why;
            }
        }
        if (!reason && dmn.level_boots[L_COLLECTED])
            reason = "the previous zygote exited";
    }
    if (dmn.booting)
        return NULL;    /* wait for the boot under way instead of starting another */
    if (reason) {
        char *note = from > L_SITE || dmn_layers_wanted(&want)
                         ? util_fmt("re-collecting (%s): %s", dmn_level_names[from], reason)
                         : util_fmt("re-collecting: %s", reason);
        util_log("%s", note);
        dmn_send_note(c, note);
        free(note);
    }
    if (c->fresh)
        from = L_SITE;
    c->booted = true;
    dmn_boot_start(&want, from);
    return NULL;
}

/* Threads that modules started at import run in the zygote, but fork()
 * keeps only the forking thread: the first run of a collection is told
 * which ones its tests will not have, instead of meeting a mystery. */
static void dmn_tell_lost_threads(dmn_conn *c, dmn_zygote *z)
{
    if (z->threads_told)
        return;
    z->threads_told = true;
    pf_buf names = {0};
    size_t n = 0;
    for (const dmn_zygote *p = z; p; p = p->parent) {
        const pf_value *list = p->ready ? pf_dict_get(p->ready, "threads") : NULL;
        for (size_t i = 0; list && pf_is_seq(list) && i < list->u.seq.len; i++) {
            const pf_value *name = list->u.seq.items[i];
            if (name->kind != PF_STR)
                continue;
            pf_buf_printf(&names, "%s%.*s", n++ ? ", " : "", (int)name->u.s.len, name->u.s.ptr);
        }
    }
    if (n) {
        char *note = util_fmt("the collection left %zu thread%s running that no test will have "
                              "(fork() keeps only the forking thread): %.*s; start such threads "
                              "in a fixture, or run plain pytest",
                              n, n == 1 ? "" : "s", (int)names.len, (const char *)names.data);
        util_log("%s", note);
        dmn_send_note(c, note);
        free(note);
    }
    pf_buf_free(&names);
}

/* Start the run at the head of the queue once the zygote is fit for it. */
static void dmn_run_next(void)
{
    while (!dmn.run && dmn.queue) {
        dmn_conn *c = dmn.queue;
        dmn_zygote *z = dmn_pick(c);
        if (!z) {
            c->waited = true;
            return;     /* a boot is under way; it calls back when done */
        }
        dmn.queue = c->next;
        c->next = NULL;
        if (z->state == Z_EXITED) {
            /* pytest itself stopped before collecting (usage error, broken
             * conftest, --help): replay what it said, with its exit code. */
            pf_buf_put(&z->output, "", 1);
            z->output.len--;
            dmn_send_done(c, z->exit_rc, NULL, (const char *)z->output.data);
            dmn_conn_drop(c);
            continue;
        }
        if (c->options_only) {
            /* The plugin's controller learns the options conftests add. */
            pf_arena *a = pf_arena_new(0);
            pf_value *d = util_msg(a, "options");
            const pf_value *opts = pf_dict_get(z->ready, "options");
            const pf_value *header = pf_dict_get(z->ready, "header");
            util_set(a, d, "options", opts ? (pf_value *)opts : pf_new_container(a, PF_LIST));
            util_set(a, d, "header", header ? (pf_value *)header : pf_new_container(a, PF_LIST));
            dmn_send(c, d);
            pf_arena_free(a);
            dmn_conn_drop(c);
            continue;
        }
        dmn_tell_lost_threads(c, z);
        dmn_run *r = util_alloc(sizeof *r);
        r->client = c;
        r->z = z;
        r->start = util_now();
        r->exit_rc = -1;
        r->leader_fd = -1;
        r->keep = pf_arena_new(0);
        r->lf = pf_new_container(r->keep, PF_LIST);
        pf_reader_init(&r->leader_rd);
        uint8_t rnd[16];
        int rfd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (rfd < 0 || read(rfd, rnd, sizeof rnd) != (ssize_t)sizeof rnd)
            memset(rnd, 0x5a, sizeof rnd);
        if (rfd >= 0)
            close(rfd);
        for (int i = 0; i < 16; i++)
            snprintf(r->runid + 2 * i, 3, "%02x", rnd[i]);
        dmn.runs++;
        int sv[2];
        if (util_socketpair(sv) < 0) {
            dmn_fail_request(c, 3, "cannot create a socketpair for the run");
            dmn_run_free(r);
            continue;
        }
        pf_arena *a = pf_arena_new(0);
        pf_value *msg = util_msg(a, "fork");
        util_set(a, msg, "role", pf_new_cstr(a, "leader"));
        util_set(a, msg, "args", util_strv_value(a, &c->split.run));
        util_set(a, msg, "argv", util_strv_value(a, &c->argv));
        util_set(a, msg, "env", util_strv_value(a, &c->env));
        util_set(a, msg, "cwd", pf_new_cstr(a, c->cwd));
        util_set(a, msg, "workers", pf_new_int(a, c->workers));
        util_set(a, msg, "timeout", pf_new_float(a, c->timeout));
        util_set(a, msg, "full", pf_new_bool(a, c->full || c->stream));
        util_set(a, msg, "collect_only", pf_new_bool(a, c->split.collect_only));
        util_set(a, msg, "runid", pf_new_cstr(a, r->runid));
        pf_value *enodes = pf_new_container(a, PF_LIST);
        for (size_t i = 0; i < dmn_nerrors(z); i++)
            pf_append(a, enodes, pf_new_cstr(a, dmn_str_at(z->errors->u.seq.items[i], 0)));
        for (size_t i = 0; z->skips && pf_is_seq(z->skips) && i < z->skips->u.seq.len; i++)
            pf_append(a, enodes, pf_new_cstr(a, dmn_str_at(z->skips->u.seq.items[i], 0)));
        util_set(a, msg, "error_nodeids", enodes);
        pf_buf b = {0};
        int fds[4] = {sv[1], c->stdio[0], c->stdio[1], c->stdio[2]};
        int nfds = c->stdio[0] >= 0 ? 4 : 1;
        int rc = pf_encode(&b, msg) == 0 ? pf_frame_write(z->fd, b.data, b.len, fds, nfds) : -1;
        pf_buf_free(&b);
        pf_arena_free(a);
        close(sv[1]);
        if (rc < 0) {
            close(sv[0]);
            dmn_run_free(r);
            dmn.runs--;
            util_log("the zygote does not answer (%s); restarting it", strerror(errno));
            dmn_node_kill(dmn_root(z));
            c->next = dmn.queue;
            dmn.queue = c;
            continue;
        }
        util_nonblock(sv[0]);
        r->leader_fd = sv[0];
        dmn.run = r;
    }
}

static const char *dmn_env(const util_strv *env, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < env->n; i++)
        if (!strncmp(env->v[i], name, n) && env->v[i][n] == '=')
            return env->v[i] + n + 1;
    return NULL;
}

/* --with-watcher or PYTEST_FAST_WATCH=1 turns the watcher on for good;
 * PYTEST_FAST_WATCH_POLL / _DEBOUNCE (seconds) tune it. */
static void dmn_watch_config(dmn_conn *c, bool asked)
{
    const char *on = dmn_env(&c->env, "PYTEST_FAST_WATCH");
    if (!asked && !(on && strcmp(on, "0") && *on))
        return;
    const char *poll = dmn_env(&c->env, "PYTEST_FAST_WATCH_POLL");
    const char *debounce = dmn_env(&c->env, "PYTEST_FAST_WATCH_DEBOUNCE");
    double v;
    dmn.watch_poll = poll && (v = atof(poll)) > 0 ? v : 0.5;
    dmn.watch_debounce = debounce && (v = atof(debounce)) >= 0 ? v : 0.3;
    if (!dmn.watching)
        util_log("watching for changes (poll %.2fs, debounce %.2fs)", dmn.watch_poll, dmn.watch_debounce);
    dmn.watching = true;
}

static bool dmn_bool(const pf_value *req, const char *key)
{
    const pf_value *v = pf_dict_get(req, key);
    return v && v->kind == PF_BOOL && v->u.b;
}

/* Answer c with a bare message, then leave the loop (and shut down). */
static void dmn_reply_and_stop(dmn_conn *c, const char *op, const char *why)
{
    pf_arena *a = pf_arena_new(0);
    dmn_send(c, util_msg(a, op));
    pf_arena_free(a);
    dmn_conn_drop(c);
    dmn.stopping = true;
    util_log("%s", why);
}

/* A complete request frame arrived on connection c. */
static void dmn_request(dmn_conn *c)
{
    char err[PF_ERRLEN];
    pf_value *req;
    c->arena = pf_arena_new(0);
    if (pf_decode(c->arena, c->rd.body.data, c->rd.need, &req, err, sizeof err) < 0 ||
        req->kind != PF_DICT) {
        util_log("dropping a connection: malformed request (%s)", req ? err : "not a dict");
        dmn_conn_drop(c);
        return;
    }
    c->req = req;
    for (int i = 0; i < 3; i++)
        c->stdio[i] = i < c->rd.nfds ? c->rd.fds[i] : -1;
    for (int i = 3; i < c->rd.nfds; i++)
        close(c->rd.fds[i]);
    c->rd.nfds = 0;
    const char *op = pf_dict_str(req, "op");
    int64_t proto = 0;
    if (!op || !pf_dict_int(req, "proto", &proto)) {
        dmn_conn_drop(c);
        return;
    }
    if (proto != PF_PROTOCOL) {
        snprintf(err, sizeof err, "protocol mismatch: client speaks %lld, daemon %d; "
                 "stop the daemon (pytest-fast --stop) after upgrading", (long long)proto, PF_PROTOCOL);
        dmn_fail_request(c, 4, err);
        return;
    }
    const char *build = pf_dict_str(req, "build");
    if (build && strcmp(build, util_build) != 0) {
        /* The client is a rebuilt binary: make way for a daemon of its own. */
        dmn_reply_and_stop(c, "restart", "a client runs another build of pytest-fast; "
                                         "exiting so it can start its own");
        return;
    }
    if (!strcmp(op, "status")) {
        pf_arena *a = pf_arena_new(0);
        pf_value *d = util_msg(a, "status");
        static const char *const states[] = {"down", "booting", "ready", "exited"};
        dmn_zygote *z = dmn.cur;
        util_set(a, d, "pid", pf_new_int(a, getpid()));
        util_set(a, d, "zygote", pf_new_cstr(a, dmn.booting ? "booting" : z ? states[z->state] : "down"));
        util_set(a, d, "zygote_pid", pf_new_int(a, z ? z->pid : 0));
        util_set(a, d, "items", pf_new_int(a, z ? (int64_t)z->nitems : 0));
        util_set(a, d, "boots", pf_new_int(a, dmn.level_boots[L_COLLECTED]));
        pf_value *levels = pf_new_container(a, PF_DICT);
        for (int l = L_SITE; l <= L_COLLECTED; l++)
            util_set(a, levels, dmn_level_names[l], pf_new_int(a, dmn.level_boots[l]));
        util_set(a, d, "level_boots", levels);
        util_set(a, d, "layers", pf_new_bool(a, z && z->parent != NULL));
        util_set(a, d, "planned", pf_new_bool(a, z && z->parent && z->parent->planned));
        util_set(a, d, "watching", pf_new_bool(a, dmn.watching));
        util_set(a, d, "runs", pf_new_int(a, dmn.runs));
        util_set(a, d, "running", pf_new_bool(a, dmn.run != NULL));
        size_t queued = 0;
        for (dmn_conn *q = dmn.queue; q; q = q->next)
            queued++;
        util_set(a, d, "queued", pf_new_int(a, (int64_t)queued));
        util_set(a, d, "ttl", pf_new_float(a, dmn.ttl));
        util_set(a, d, "idle", pf_new_float(a, dmn.run ? 0 : util_now() - dmn.last_activity));
        util_set(a, d, "address", pf_new_cstr(a, dmn.address));
        util_set(a, d, "rootdir", pf_new_cstr(a, z ? z->rootdir : ""));
        dmn_send(c, d);
        pf_arena_free(a);
        dmn_conn_drop(c);
        return;
    }
    if (!strcmp(op, "stop")) {
        dmn_reply_and_stop(c, "bye", "stop requested");
        return;
    }
    if (strcmp(op, "run") != 0 && strcmp(op, "options") != 0) {
        dmn_conn_drop(c);
        return;
    }
    c->options_only = !strcmp(op, "options");
    const char *cwd = pf_dict_str(req, "cwd");
    int64_t workers = 1;
    if (!util_value_strv(pf_dict_get(req, "args"), &c->argv) ||
        !util_value_strv(pf_dict_get(req, "env"), &c->env) || !cwd || cwd[0] != '/' ||
        !pf_dict_int(req, "workers", &workers) || workers < 1 || workers > 4096) {
        dmn_fail_request(c, 4, "malformed run request");
        return;
    }
    char msg[PF_ERRLEN];
    const pf_value *options = dmn.cur && dmn.cur->state == Z_READY ? pf_dict_get(dmn.cur->ready, "options") : NULL;
    if (arg_classify((int)c->argv.n, c->argv.v, &c->split, options, cwd, msg, sizeof msg) < 0) {
        char *text = util_fmt("ERROR: %s", msg);
        dmn_fail_request(c, 4, text);
        free(text);
        return;
    }
    c->cwd = util_strdup(cwd);
    c->workers = (int)workers;
    const pf_value *t = pf_dict_get(req, "timeout");
    c->timeout = t && t->kind == PF_FLOAT ? t->u.f : t && t->kind == PF_INT ? (double)t->u.i : 0;
    const char *method = pf_dict_str(req, "start_method");
    c->fresh = method && (!strcmp(method, "fork") || !strcmp(method, "spawn"));
    c->discard = method && !strcmp(method, "spawn");
    c->full = dmn_bool(req, "full");
    dmn_watch_config(c, dmn_bool(req, "watch"));
    c->stream = dmn_bool(req, "stream");
    c->color = dmn_bool(req, "color");
    const char *fp = pf_dict_str(req, "fp");
    const char *dump = pf_dict_str(req, "dump");
    c->fp = fp ? util_strdup(fp) : NULL;
    c->dump = dump ? util_strdup(dump) : NULL;
    const char *python = pf_dict_str(req, "python");
    c->python = python && python[0] == '/' ? util_strdup(python) : NULL;
    if (c->split.refused[0] && (!c->stream || !strcmp(c->split.refused, "-n") ||
                                !strcmp(c->split.refused, "--numprocesses"))) {
        const char *r = c->split.refused;
        char *text;
        if (!strcmp(r, "-n") || !strcmp(r, "--numprocesses"))
            text = util_fmt("ERROR: %s is pytest-xdist's; pytest-fast runs its own workers: use --workers N", r);
        else
            text = util_fmt("ERROR: %s needs pytest's own reporting or the test process: use `pytest --fast %s` "
                            "or plain pytest", r, r);
        dmn_fail_request(c, 4, text);
        free(text);
        return;
    }
    c->queued = true;
    dmn_conn **q = &dmn.queue;
    while (*q)
        q = &(*q)->next;
    *q = c;
    dmn_run_next();
}

/* Frames from the run's leader; its EOF before the end means it died. */
static void dmn_leader_read(dmn_run *r)
{
    for (;;) {
        int st = pf_reader_feed(&r->leader_rd, r->leader_fd);
        if (st == PF_READ_AGAIN)
            return;
        if (st == PF_READ_FRAME) {
            pf_value *msg;
            char err[160];
            int ok = pf_decode(r->keep, r->leader_rd.body.data, r->leader_rd.need, &msg, err, sizeof err);
            pf_reader_reset(&r->leader_rd);
            if (ok == 0 && msg->kind == PF_DICT) {
                dmn_leader_frame(r, msg);
                if (dmn.run != r)
                    return;
            } else {
                util_log("bad frame from the run leader: %s", err);
            }
            continue;
        }
        util_close(&r->leader_fd);
        if (r->selected) {
            dmn_leader_died(r);
            return;
        }
        dmn_conn *c = r->client;
        r->client = NULL;
        if (c)
            dmn_fail_request(c, 3, "pytest-fast: the run leader died before selecting tests "
                                   "(see the daemon log)");
        dmn_run_free(r);
        dmn.run = NULL;
        dmn_run_next();
        return;
    }
}

/* ------------------------------------------------------------------- loop */

/* Connections that have not sent a whole request: slow or stalled peers. */
static bool dmn_conn_pending(const dmn_conn *c)
{
    return !c->req;
}

/* At the connection cap, the oldest peer that never finished its request
 * makes room: a flood of stalled connections cannot lock clients out. */
static bool dmn_evict_idle_conn(void)
{
    dmn_conn *oldest = NULL;
    for (int i = 0; i < dmn.nconns; i++)
        if (dmn_conn_pending(dmn.conns[i]) && (!oldest || dmn.conns[i]->accepted < oldest->accepted))
            oldest = dmn.conns[i];
    if (oldest)
        dmn_conn_drop(oldest);
    return oldest != NULL;
}

/* Drop peers that did not send a request in time (slowloris). */
static void dmn_expire_conns(double now)
{
    for (int i = dmn.nconns - 1; i >= 0; i--)
        if (i < dmn.nconns && dmn_conn_pending(dmn.conns[i]) &&
            now - dmn.conns[i]->accepted > DMN_REQUEST_TIMEOUT)
            dmn_conn_drop(dmn.conns[i]);
}

static void dmn_accept(void)
{
    for (;;) {
        int fd = util_accept(dmn.listen_fd);
        if (fd < 0)
            return;
        uid_t uid = (uid_t)-1;
        if (id_peer_uid(fd, &uid) < 0 || uid != geteuid()) {
            util_log("refused a connection from uid %d", (int)uid);
            close(fd);
            continue;
        }
        if (dmn.nconns == DMN_MAX_CONNS && !dmn_evict_idle_conn()) {
            close(fd);
            continue;
        }
        dmn_conn *c = util_alloc(sizeof *c);
        c->fd = fd;
        c->stdio[0] = c->stdio[1] = c->stdio[2] = -1;
        c->accepted = util_now();
        pf_reader_init(&c->rd);
        dmn.conns[dmn.nconns++] = c;
    }
}

static void dmn_conn_readable(dmn_conn *c)
{
    dmn.last_activity = util_now();
    if (c->req) {
        /* During its run a client may only cancel (or hang up). */
        char buf[256];
        ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) || n > 0) {
            if (dmn.run && dmn.run->client == c) {
                util_log("client cancelled run #%u", dmn.runs);
                dmn.run->cancelled = true;
                dmn.run->stopping = true;
                dmn_kill_run_processes(dmn.run);
                if (n == 0)
                    util_close(&c->fd);
                dmn.run->selected = true;
                for (int i = 0; i < dmn.run->nworkers; i++)
                    dmn.run->workers[i].exited = true;
                dmn_run_end(dmn.run);
            } else {
                dmn_conn_drop(c);
            }
        }
        return;
    }
    int st = pf_reader_feed(&c->rd, c->fd);
    if (st == PF_READ_FRAME)
        dmn_request(c);
    else if (st == PF_READ_EOF || st == PF_READ_ERROR)
        dmn_conn_drop(c);
}

static void dmn_check_timeouts(dmn_run *r, double now)
{
    double limit = r->client ? r->client->timeout : 0;
    if (limit <= 0)
        return;
    for (int i = 0; i < r->nworkers; i++) {
        dmn_worker *w = &r->workers[i];
        if (!w->exited && w->nclaimed && w->pid > 0 && now - w->item_start > limit + DMN_TIMEOUT_GRACE) {
            util_log("gw%d exceeded --timeout by %.0fs; killing it", w->wid, DMN_TIMEOUT_GRACE);
            if (!w->faulttext.len)
                pf_buf_printf(&w->faulttext, "Timeout (%gs): no Python traceback (the test did not "
                              "return to the interpreter)\n", limit);
            kill(w->pid, SIGKILL);
        }
    }
}

static void dmn_send_progress(dmn_run *r, double now)
{
    if (!r->client || r->client->stream || r->done == r->progress_sent ||
        now - r->last_progress < DMN_PROGRESS_EVERY)
        return;
    pf_arena *a = pf_arena_new(0);
    pf_value *d = util_msg(a, "progress");
    util_set(a, d, "done", pf_new_int(a, (int64_t)r->done));
    util_set(a, d, "total", pf_new_int(a, (int64_t)r->nsel));
    util_set(a, d, "failed", pf_new_int(a, (int64_t)(r->counts[4] + r->counts[5])));
    dmn_send(r->client, d);
    pf_arena_free(a);
    r->last_progress = now;
    r->progress_sent = r->done;
}

/* The pre-warm watcher: while idle, poll the current tree's files; once a
 * change has settled for the debounce time, re-build the stale levels in
 * the background so the next run finds a fresh zygote.  It never counts
 * as activity, so it does not keep an idle daemon past its TTL. */
/* The first collection of an identity finds nothing to preload, so its
 * site and project levels are empty.  Once idle, re-build the tree with
 * the plan it produced, so the first edit already restarts one level. */
static void dmn_layers_tick(double now)
{
    dmn_zygote *z = dmn.cur;
    if (dmn.booting || dmn.queue || !z || z->state != Z_READY || !z->parent ||
        now - dmn.last_run < 1.0)
        return;
    dmn_zygote *project = z->parent;
    if (project->planned || !dmn.plan[L_PROJECT].n || strcmp(project->plan, dmn.plan_key) != 0)
        return;
    util_log("preparing the site and project levels in the background");
    dmn_ident id = {{0}, {0}, NULL, NULL, NULL};
    dmn_ident_copy(&id, &z->id);
    dmn_boot_start(&id, L_SITE);
    dmn_ident_free(&id);
}

/* Linux: inotify on the directories that hold the current tree's watched
 * files wakes the watcher as soon as something there changes.  It only
 * says when to look: the stat check stays the judge, and where inotify is
 * missing or its watch limit is reached, the poll alone does the work. */
static void dmn_notify_sync(void)
{
#ifdef __linux__
    dmn_zygote *z = dmn.cur;
    pid_t pid = z && dmn_serves(z) ? z->pid : 0;
    if (pid == dmn.notify_pid)
        return;
    util_close(&dmn.notify_fd);   /* drops every watch of the old tree */
    dmn.notify_pid = pid;
    if (!pid || (dmn.notify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0)
        return;
    util_strv dirs = {0};
    for (const dmn_zygote *n = z; n; n = n->parent)
        for (size_t i = 0; i < n->nwatch; i++) {
            char *dir = util_strdup(n->watch[i].path);
            char *slash = n->watch[i].dir ? NULL : strrchr(dir, '/');
            if (slash && slash != dir)
                *slash = 0;
            util_strv_push(&dirs, dir);
            free(dir);
        }
    if (dirs.n)
        qsort(dirs.v, dirs.n, sizeof *dirs.v, util_cmp_str);
    for (size_t i = 0; i < dirs.n; i++)
        if (i == 0 || strcmp(dirs.v[i], dirs.v[i - 1]) != 0)
            inotify_add_watch(dmn.notify_fd, dirs.v[i],
                              IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE |
                                  IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF);
    util_strv_free(&dirs);
#endif
}

/* Events arrived: look now, and let a change that is still going on
 * settle for the debounce time again. */
static void dmn_notify_read(double now)
{
    char buf[4096];
    while (read(dmn.notify_fd, buf, sizeof buf) > 0)
        ;
    if (dmn.stale_since)
        dmn.stale_since = now;
    else
        dmn.next_poll = now;
}

static void dmn_watch_tick(double now)
{
    if (dmn.booting || dmn.queue || now < dmn.next_poll)
        return;
    dmn.next_poll = now + dmn.watch_poll;
    char why[PF_ERRLEN];
    dmn_zygote *z = dmn.cur;
    if (!z || !dmn_serves(z))
        return;
    int level = dmn_chain_stale(z, why, sizeof why);
    if (level >= 0 && dmn.prev && dmn_serves(dmn.prev) && dmn_chain_stale(dmn.prev, why, sizeof why) < 0) {
        dmn_zygote *fresh = dmn.prev;   /* the edit was reverted */
        dmn.prev = dmn.cur;
        dmn.cur = fresh;
        return;
    }
    if (level < 0) {
        dmn.stale_since = 0;
        return;
    }
    if (!dmn.stale_since) {
        dmn.stale_since = now;
        dmn.next_poll = now + dmn.watch_debounce;
        return;
    }
    if (now - dmn.stale_since < dmn.watch_debounce) {
        dmn.next_poll = dmn.stale_since + dmn.watch_debounce;
        return;
    }
    dmn.stale_since = 0;
    util_log("pre-warming (%s): %s", dmn_level_names[level], why);
    dmn_ident id = {{0}, {0}, NULL, NULL, NULL};
    dmn_ident_copy(&id, &z->id);
    dmn_boot_start(&id, level);
    dmn_ident_free(&id);
}

static void dmn_shutdown(void)
{
    if (dmn.run) {
        dmn_kill_run_processes(dmn.run);
        if (dmn.run->client)
            dmn_send_done(dmn.run->client, 2, NULL, "pytest-fast: the daemon is shutting down");
    }
    for (int i = 0; i < DMN_NODES; i++)
        if (!dmn.nodes[i].parent)
            dmn_node_kill(&dmn.nodes[i]);
    unlink(dmn.address);
    unlink(dmn.pidfile);
    util_log("bye");
}

static volatile sig_atomic_t dmn_term;

static void dmn_on_term(int sig)
{
    dmn_term = sig;
}

/* The loop.  Every fd is non-blocking; every handler finishes quickly. */
static int dmn_loop(void)
{
    struct pollfd *p = util_alloc((DMN_MAX_CONNS + 2 * DMN_NODES + 2 * 4096 + 8) * sizeof *p);
    dmn_conn **polled = util_alloc(DMN_MAX_CONNS * sizeof *polled);
    while (!dmn.stopping && !dmn_term) {
        size_t n = 0;
        p[n++] = (struct pollfd){dmn.listen_fd, POLLIN, 0};
        /* The connections as polled: handlers below may drop some. */
        size_t conn0 = n;
        int npolled = dmn.nconns;
        for (int i = 0; i < npolled; i++) {
            polled[i] = dmn.conns[i];
            p[n++] = (struct pollfd){dmn.conns[i]->fd, POLLIN, 0};
        }
        size_t zy = n;
        for (int i = 0; i < DMN_NODES; i++) {
            p[n++] = (struct pollfd){dmn.nodes[i].fd, POLLIN, 0};
            p[n++] = (struct pollfd){dmn.nodes[i].out, POLLIN, 0};
        }
        size_t lead = n, w0 = n + 1;
        dmn_run *r = dmn.run;
        p[n++] = (struct pollfd){r ? r->leader_fd : -1, POLLIN, 0};
        int nw = r ? r->nworkers : 0;
        if (nw > 4096)
            nw = 4096;
        for (int i = 0; i < nw; i++) {
            p[n++] = (struct pollfd){r->workers[i].fd, POLLIN, 0};
            p[n++] = (struct pollfd){r->workers[i].fault, POLLIN, 0};
        }
        if (dmn.watching)
            dmn_notify_sync();
        size_t notified = n;
        p[n++] = (struct pollfd){dmn.notify_fd, POLLIN, 0};
        double now = util_now();
        int timeout = 1000;
        if (!r && !dmn.queue && !dmn.booting) {
            double left = dmn.ttl - (now - dmn.last_activity);
            if (left <= 0) {
                util_log("idle for %.0fs — shutting down", dmn.ttl);
                break;
            }
            timeout = left < 1 ? (int)(left * 1000) + 1 : 1000;
            double next = dmn.next_poll - now;
            if (dmn.watching && timeout > (int)(next * 1000))
                timeout = next > 0 ? (int)(next * 1000) + 1 : 0;
        } else if (r) {
            timeout = 100;
        }
        for (int i = 0; i < dmn.nconns; i++) {
            double left = dmn.conns[i]->accepted + DMN_REQUEST_TIMEOUT - now;
            if (dmn_conn_pending(dmn.conns[i]) && left * 1000 < timeout)
                timeout = left > 0 ? (int)(left * 1000) + 1 : 0;
        }
        int rc = poll(p, n, timeout);
        if (rc < 0 && errno != EINTR) {
            util_log("poll: %s", strerror(errno));
            break;
        }
        now = util_now();
        /* Reap exec'ed zygotes first: a death explains the EOFs below. */
        for (int i = 0; i < DMN_NODES; i++) {
            dmn_zygote *z = &dmn.nodes[i];
            int status;
            if (z->state != Z_DOWN && !z->parent && z->pid > 0 && waitpid(z->pid, &status, WNOHANG) == z->pid)
                dmn_zygote_died(z, status);
        }
        for (int i = 0; rc > 0 && i < DMN_NODES; i++) {
            dmn_zygote *z = &dmn.nodes[i];
            if (p[zy + 2 * (size_t)i].revents && z->fd >= 0 && p[zy + 2 * (size_t)i].fd == z->fd)
                dmn_zygote_read(z);
            if (p[zy + 2 * (size_t)i + 1].revents && z->out >= 0 && p[zy + 2 * (size_t)i + 1].fd == z->out)
                dmn_zygote_output(z);
        }
        if (r && dmn.run == r && rc > 0) {
            for (int i = 0; i < nw && dmn.run == r; i++) {
                if (p[w0 + 2 * (size_t)i].revents && r->workers[i].fd >= 0)
                    dmn_worker_read(r, &r->workers[i]);
                if (p[w0 + 2 * (size_t)i + 1].revents && r->workers[i].fault >= 0)
                    dmn_fault_read(&r->workers[i]);
            }
            if (dmn.run == r && p[lead].revents && r->leader_fd >= 0)
                dmn_leader_read(r);
            if (dmn.run == r)
                dmn_run_check(r);
        }
        if (rc > 0 && p[notified].revents && dmn.notify_fd >= 0)
            dmn_notify_read(now);   /* during a run too: a pending event would wake poll at once */
        if (dmn.run) {
            dmn_check_timeouts(dmn.run, now);
            dmn_send_progress(dmn.run, now);
        } else {
            if (dmn.watching)
                dmn_watch_tick(now);
            dmn_layers_tick(now);
        }
        if (rc > 0 && p[0].revents)
            dmn_accept();
        for (int i = 0; rc > 0 && i < npolled; i++) {
            if (!p[conn0 + (size_t)i].revents)
                continue;
            bool alive = false;
            for (int k = 0; k < dmn.nconns && !alive; k++)
                alive = dmn.conns[k] == polled[i];
            if (alive)
                dmn_conn_readable(polled[i]);
        }
        dmn_expire_conns(now);
        if (dmn.run || dmn.queue)
            dmn.last_activity = now;
    }
    free(p);
    free(polled);
    dmn_shutdown();
    return 0;
}

/* `pytest-fast --daemon ADDRESS TTL READY_FD`: bind, say ready, serve. */
static int dmn_main(const char *address, double ttl, int ready_fd)
{
    util_role = "daemon";
    dmn.address = address;
    dmn.ttl = ttl;
    dmn.pidfile = id_sibling(address, ".pid");
    dmn.notify_fd = -1;
    for (int i = 0; i < DMN_NODES; i++)
        dmn_node_free(&dmn.nodes[i]);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);   /* a full log (RLIMIT_FSIZE) fails writes, not the daemon */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = dmn_on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    char msg[PF_ERRLEN];
    struct sockaddr_un sun;
    if (id_sockaddr(address, &sun, msg, sizeof msg) < 0) {
        util_log("%s", msg);
        dprintf(ready_fd, "%s\n", msg);
        return 1;
    }
    dmn.listen_fd = util_socket(true);
    unlink(address);
    mode_t old = umask(0177);
    int rc = dmn.listen_fd < 0 ? -1 : bind(dmn.listen_fd, (struct sockaddr *)&sun, sizeof sun);
    umask(old);
    if (rc < 0 || chmod(address, 0600) < 0 || listen(dmn.listen_fd, 128) < 0) {
        snprintf(msg, sizeof msg, "cannot listen on %s: %s", address, strerror(errno));
        util_log("%s", msg);
        dprintf(ready_fd, "%s\n", msg);
        return 1;
    }
    char *tmp = util_fmt("%s.tmp", dmn.pidfile);
    int pfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (pfd >= 0) {
        dprintf(pfd, "%d\n", (int)getpid());
        close(pfd);
        rename(tmp, dmn.pidfile);
    }
    free(tmp);
    util_log("listening on %s, ttl %.0fs", address, ttl);
    if (!util_write_all(ready_fd, "ok\n", 3))
        util_log("the starting client went away");
    close(ready_fd);
    dmn.last_activity = util_now();
    return dmn_loop();
}


/* ==========================================================================
 * Client
 *
 * Owns: the Ctrl-C flag of the client process.
 * `pytest-fast [options] [pytest args]`: finds or starts the daemon (one
 * starter at a time, under a lock, with a deadline), sends one request with
 * its stdio fds, shows progress, prints the summary and exits with pytest's
 * exit code.  Never initializes Python.  Calls everything above but the
 * Daemon and Zygote, which it only execs.
 * ========================================================================== */

#define CLI_START_DEADLINE 30.0   /* seconds for a daemon to listen */
#define CLI_RESTART (-1)          /* the daemon belongs to another build */

static volatile sig_atomic_t cli_interrupts;

static void cli_on_sigint(int sig)
{
    (void)sig;
    cli_interrupts++;
}

typedef struct cli_opts {
    const char *address, *python, *dump, *start_method;
    double ttl, timeout;
    int workers, runs;
    bool full_report, status, stop, print_workers, explain, help, version, ensure, watch;
    util_strv pytest_args;
} cli_opts;

static const char cli_usage[] =
    "usage: pytest-fast [options] [pytest arguments]\n"
    "\n"
    "Run pytest through a resident daemon that imported and collected the\n"
    "project once; every later run forks warm workers from it.  Source and\n"
    "environment changes are noticed and re-collected automatically.\n"
    "\n"
    "options:\n"
    "  --address PATH          daemon socket (or $PYTEST_FAST_ADDRESS; default: a\n"
    "                          private per-user directory, one daemon per project,\n"
    "                          interpreter and relevant environment)\n"
    "  --workers N             parallel workers (or $PYTEST_FAST_WORKERS; default:\n"
    "                          performance cores, see --print-inferred-workers)\n"
    "  --ttl SECONDS           idle time before the daemon exits (or $PYTEST_FAST_TTL;\n"
    "                          default 600)\n"
    "  --timeout SECONDS       per-test timeout, 0 = off (or $PYTEST_FAST_TIMEOUT); a\n"
    "                          test over it fails with its Python traceback\n"
    "  --full-report           ship full per-phase reports: adds a DURATIONS table\n"
    "  --with-watcher          pre-warm: the daemon re-collects in the background as\n"
    "                          soon as files change (or $PYTEST_FAST_WATCH=1; tune\n"
    "                          with $PYTEST_FAST_WATCH_POLL / _DEBOUNCE seconds)\n"
    "  --dump PATH             write {nodeid: outcome} JSON after the run\n"
    "  --python PATH           interpreter whose environment runs the tests (default:\n"
    "                          $VIRTUAL_ENV/bin/python, $PYTEST_FAST_PYTHON, else the\n"
    "                          one this binary was built for)\n"
    "  --start-method M        forkserver (default): fork workers from the warm zygote;\n"
    "                          fork: re-collect now, keep the new zygote warm;\n"
    "                          spawn: a fresh zygote for this run only, nothing stays warm\n"
    "  --runs N                local mode: no resident daemon; N runs, then exit\n"
    "  --status                show the daemon's state\n"
    "  --stop                  stop the daemon\n"
    "  --print-inferred-workers  print the default worker count (-v: explain it)\n"
    "  --ensure-daemon         start the daemon if none answers; print its address,\n"
    "                          the environment fingerprint and the worker count\n"
    "                          (used by `pytest --fast`)\n"
    "  --version               print versions\n"
    "  -h, --help              this help\n"
    "\n"
    "Everything else goes to pytest.  Selection (-k, -m, paths, node ids,\n"
    "--deselect, --lf, --ff, -x, --maxfail) is applied per run to the cached\n"
    "collection; options that change collection (-p, -o, -c, --rootdir, ...)\n"
    "re-collect.  Exit codes are pytest's.  For pytest's own reporting\n"
    "(--junitxml, plugins, -rA ...) use `pytest --fast`.\n";

static int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("pytest-fast: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 2;
}

static bool cli_parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0)
        return false;
    *out = v;
    return true;
}

/* Our options may appear anywhere; everything else is pytest's. */
static int cli_parse(int argc, char **argv, cli_opts *o)
{
    o->ttl = 600;
    o->runs = 0;
    const char *workers = util_getenv("PYTEST_FAST_WORKERS");
    const char *ttl = util_getenv("PYTEST_FAST_TTL");
    const char *timeout = util_getenv("PYTEST_FAST_TIMEOUT");
    const char *runs = NULL;
    o->address = util_getenv("PYTEST_FAST_ADDRESS");
    bool pass_rest = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (pass_rest) {
            util_strv_push(&o->pytest_args, a);
            continue;
        }
        static const char *const valued[] = {"--address", "--workers", "--ttl", "--timeout", "--dump",
                                             "--python", "--start-method", "--runs"};
        const char *value = NULL;
        int which = -1;
        for (int k = 0; k < (int)(sizeof valued / sizeof *valued); k++) {
            size_t n = strlen(valued[k]);
            if (!strncmp(a, valued[k], n) && (a[n] == '=' || a[n] == 0)) {
                which = k;
                if (a[n] == '=')
                    value = a + n + 1;
                else if (i + 1 < argc)
                    value = argv[++i];
                else
                    return cli_usage_error("%s expects a value", valued[k]);
                break;
            }
        }
        switch (which) {
        case 0: o->address = value; continue;
        case 1: workers = value; continue;
        case 2: ttl = value; continue;
        case 3: timeout = value; continue;
        case 4: o->dump = value; continue;
        case 5: o->python = value; continue;
        case 6: o->start_method = value; continue;
        case 7: runs = value; continue;
        default: break;
        }
        if (!strcmp(a, "--full-report"))
            o->full_report = true;
        else if (!strcmp(a, "--status"))
            o->status = true;
        else if (!strcmp(a, "--stop"))
            o->stop = true;
        else if (!strcmp(a, "--print-inferred-workers"))
            o->print_workers = true;
        else if (!strcmp(a, "--version"))
            o->version = true;
        else if (!strcmp(a, "--ensure-daemon"))
            o->ensure = true;
        else if (!strcmp(a, "--with-watcher"))
            o->watch = true;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            o->help = true;
        else if (!strcmp(a, "--")) {
            pass_rest = true;
            util_strv_push(&o->pytest_args, a);
        } else
            util_strv_push(&o->pytest_args, a);
    }
    if (o->print_workers)
        for (size_t i = 0; i < o->pytest_args.n; i++)
            o->explain |= !strcmp(o->pytest_args.v[i], "-v");
    if (workers && pf_parse_workers(workers, &o->workers) < 0)
        return cli_usage_error("invalid worker count '%s': expected a whole number >= 1", workers);
    if (ttl && (!cli_parse_double(ttl, &o->ttl) || o->ttl <= 0))
        return cli_usage_error("invalid ttl '%s': expected seconds > 0", ttl);
    if (timeout && !cli_parse_double(timeout, &o->timeout))
        return cli_usage_error("invalid timeout '%s': expected seconds >= 0", timeout);
    if (runs && (pf_parse_workers(runs, &o->runs) < 0))
        return cli_usage_error("invalid --runs '%s': expected a whole number >= 1", runs);
    if (o->start_method && strcmp(o->start_method, "forkserver") && strcmp(o->start_method, "fork") &&
        strcmp(o->start_method, "spawn"))
        return cli_usage_error("invalid --start-method '%s': expected forkserver, fork or spawn",
                               o->start_method);
    return 0;
}

/* Connect to a daemon, refusing one that runs as another user. */
static int cli_connect(const char *address, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    if (id_sockaddr(address, &sun, err, errlen) < 0)
        return -2;
    int fd = util_socket(false);
    if (fd < 0)
        return -2;
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    uid_t uid = (uid_t)-1;
    if (id_peer_uid(fd, &uid) < 0 || uid != geteuid()) {
        snprintf(err, errlen, "the daemon at %s runs as uid %d, not as you; refusing it", address, (int)uid);
        close(fd);
        return -2;
    }
    return fd;
}

/* Start a daemon unless one answers, one starter at a time.  Returns a
 * connected fd, or -1 with err set. */
static int cli_start(const char *address, double ttl, char *err, size_t errlen)
{
    char *lockpath = id_sibling(address, ".lock");
    char *logpath = id_sibling(address, ".log");
    int lock = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    int fd = -1;
    if (lock < 0) {
        snprintf(err, errlen, "cannot open %s: %s", lockpath, strerror(errno));
        goto out;
    }
    while (flock(lock, LOCK_EX) < 0 && errno == EINTR)
        ;
    fd = cli_connect(address, err, errlen);
    if (fd >= 0 || fd == -2) {
        fd = fd >= 0 ? fd : -1;
        goto out;
    }
    int log = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (log < 0) {
        snprintf(err, errlen, "cannot open the daemon log %s: %s", logpath, strerror(errno));
        goto out;
    }
    int ready[2];
    if (pipe(ready) < 0) {
        close(log);
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        goto out;
    }
    util_cloexec(ready[0]);
    pid_t pid = fork();
    if (pid == 0) {
        /* Detach twice: the daemon belongs to no terminal and no client. */
        setsid();
        if (fork() != 0)
            _exit(0);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(log, 1);
        dup2(log, 2);
        char ttlbuf[32], fdbuf[16];
        snprintf(ttlbuf, sizeof ttlbuf, "%g", ttl);
        snprintf(fdbuf, sizeof fdbuf, "%d", ready[1]);
        char *argv[] = {util_exe, (char *)"--daemon", (char *)address, ttlbuf, fdbuf, NULL};
        execv(util_exe, argv);
        dprintf(ready[1], "cannot exec %s: %s\n", util_exe, strerror(errno));
        _exit(127);
    }
    close(ready[1]);
    close(log);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    char buf[512] = "";
    size_t have = 0;
    double deadline = util_now() + CLI_START_DEADLINE;
    while (have < sizeof buf - 1) {
        struct pollfd p = {ready[0], POLLIN, 0};
        int left = (int)((deadline - util_now()) * 1000);
        if (left <= 0 || poll(&p, 1, left) == 0) {
            snprintf(err, errlen, "the daemon did not start within %.0fs (log: %s)", CLI_START_DEADLINE, logpath);
            break;
        }
        ssize_t n = read(ready[0], buf + have, sizeof buf - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = 0;
        if (strchr(buf, '\n'))
            break;
    }
    close(ready[0]);
    if (!strcmp(buf, "ok\n"))
        fd = cli_connect(address, err, errlen);
    else if (!err[0])
        snprintf(err, errlen, "the daemon failed to start: %s(log: %s)",
                 buf[0] ? buf : "no reason given ", logpath);
    if (fd < 0 && !err[0])
        snprintf(err, errlen, "cannot connect to the new daemon at %s: %s", address, strerror(errno));
out:
    if (lock >= 0)
        close(lock);
    free(lockpath);
    free(logpath);
    return fd;
}

static int cli_send(int fd, pf_value *req, bool with_stdio)
{
    pf_buf b = {0};
    int fds[3] = {0, 1, 2};
    int rc = pf_encode(&b, req) == 0 ? pf_frame_write(fd, b.data, b.len, fds, with_stdio ? 3 : 0) : -1;
    pf_buf_free(&b);
    return rc;
}

/* A one-shot control request (status, stop); the reply or NULL.  With
 * `build`, a daemon of another build replies "restart" and exits. */
static pf_value *cli_control(const char *address, const char *op, const char *build, pf_arena *a,
                             char *err, size_t errlen)
{
    int fd = cli_connect(address, err, errlen);
    if (fd < 0)
        return NULL;
    pf_value *req = util_msg(a, op);
    util_set(a, req, "proto", pf_new_int(a, PF_PROTOCOL));
    if (build)
        util_set(a, req, "build", pf_new_cstr(a, build));
    pf_value *reply = NULL;
    pf_reader r;
    pf_reader_init(&r);
    if (cli_send(fd, req, false) == 0 && pf_read_frame(&r, fd, 10000) == PF_READ_FRAME &&
        pf_decode(a, r.body.data, r.need, &reply, err, errlen) < 0)
        reply = NULL;
    pf_reader_free(&r);
    close(fd);
    return reply;
}

static void cli_progress(const pf_value *msg, bool tty)
{
    int64_t done = 0, total = 0, failed = 0;
    if (!tty || !pf_dict_int(msg, "done", &done) || !pf_dict_int(msg, "total", &total))
        return;
    pf_dict_int(msg, "failed", &failed);
    if (failed)
        fprintf(stdout, "\r  running %lld/%lld … %lld failed ", (long long)done, (long long)total,
                (long long)failed);
    else
        fprintf(stdout, "\r  running %lld/%lld … ", (long long)done, (long long)total);
    fflush(stdout);
}

/* One run: send, stream, print.  Returns pytest's exit code. */
static int cli_run_once(const cli_opts *o, const char *address, const char *fp, const char *python)
{
    char err[PF_ERRLEN] = "";
    int fd = cli_connect(address, err, sizeof err);
    if (fd == -1)
        fd = cli_start(address, o->ttl, err, sizeof err);
    if (fd < 0) {
        fprintf(stderr, "pytest-fast: %s\n", err[0] ? err : strerror(errno));
        return 3;
    }
    pf_arena *a = pf_arena_new(0);
    pf_value *req = util_msg(a, "run");
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) {
        fprintf(stderr, "pytest-fast: cannot read the working directory: %s\n", strerror(errno));
        return 4;
    }
    extern char **environ;
    util_strv env = {0};
    for (char **e = environ; *e; e++)
        util_strv_push(&env, *e);
    bool tty = isatty(1);
    util_set(a, req, "proto", pf_new_int(a, PF_PROTOCOL));
    util_set(a, req, "build", pf_new_cstr(a, util_build));
    util_set(a, req, "args", util_strv_value(a, &o->pytest_args));
    util_set(a, req, "env", util_strv_value(a, &env));
    util_set(a, req, "cwd", pf_new_cstr(a, cwd));
    util_set(a, req, "fp", pf_new_cstr(a, fp));
    util_set(a, req, "python", pf_new_cstr(a, python));
    util_set(a, req, "workers", pf_new_int(a, o->workers));
    util_set(a, req, "timeout", pf_new_float(a, o->timeout));
    util_set(a, req, "full", pf_new_bool(a, o->full_report));
    util_set(a, req, "watch", pf_new_bool(a, o->watch));
    util_set(a, req, "color", pf_new_bool(a, tty && !getenv("NO_COLOR")));
    if (o->start_method)
        util_set(a, req, "start_method", pf_new_cstr(a, o->start_method));
    if (o->dump) {
        char *abs = o->dump[0] == '/' ? util_strdup(o->dump) : util_fmt("%s/%s", cwd, o->dump);
        util_set(a, req, "dump", pf_new_cstr(a, abs));
        free(abs);
    }
    util_strv_free(&env);
    if (cli_send(fd, req, true) < 0) {
        fprintf(stderr, "pytest-fast: cannot send the request: %s\n", strerror(errno));
        return 3;
    }
    pf_arena_free(a);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cli_on_sigint;
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    pf_reader r;
    pf_reader_init(&r);
    util_nonblock(fd);
    int rc = 3;
    bool progress_shown = false, cancel_sent = false;
    double cancel_at = 0;
    for (;;) {
        if (cli_interrupts && !cancel_sent) {
            /* Any byte means "cancel"; the daemon kills the run's workers. */
            if (write(fd, "c", 1) < 0) {
                rc = 2;
                break;
            }
            cancel_sent = true;
            cancel_at = util_now();
            fputs("\npytest-fast: interrupted, cancelling the run (Ctrl-C again to leave now)\n", stderr);
        }
        if (cli_interrupts > 1 || (cancel_sent && util_now() - cancel_at > 2.0)) {
            rc = 2;
            break;
        }
        struct pollfd p = {fd, POLLIN, 0};
        int n = poll(&p, 1, cancel_sent ? 100 : 1000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            continue;
        int st = pf_reader_feed(&r, fd);
        if (st == PF_READ_AGAIN)
            continue;
        if (st != PF_READ_FRAME) {
            if (progress_shown)
                fputs("\r\033[K", stdout);
            fprintf(stderr, "pytest-fast: the daemon closed the connection mid-run (log: %s)\n",
                    id_sibling(address, ".log"));
            rc = cancel_sent ? 2 : 3;
            break;
        }
        pf_arena *m = pf_arena_new(0);
        pf_value *msg;
        char derr[160];
        if (pf_decode(m, r.body.data, r.need, &msg, derr, sizeof derr) < 0 || msg->kind != PF_DICT) {
            fprintf(stderr, "pytest-fast: bad frame from the daemon: %s\n", derr);
            pf_arena_free(m);
            rc = 3;
            break;
        }
        pf_reader_reset(&r);
        const char *op = pf_dict_str(msg, "op");
        if (op && !strcmp(op, "progress")) {
            cli_progress(msg, tty);
            progress_shown = tty;
        } else if (op && !strcmp(op, "note")) {
            fprintf(stderr, "pytest-fast: %s\n", pf_dict_str(msg, "text") ? pf_dict_str(msg, "text") : "");
        } else if (op && !strcmp(op, "restart")) {
            rc = CLI_RESTART;
            pf_arena_free(m);
            break;
        } else if (op && !strcmp(op, "done")) {
            if (progress_shown)
                fputs("\r\033[K", stdout);
            int64_t code = 3;
            pf_dict_int(msg, "rc", &code);
            const char *summary = pf_dict_str(msg, "summary");
            const char *e = pf_dict_str(msg, "error");
            if (summary && *summary)
                fputs(summary, stdout);
            fflush(stdout);
            if (e && *e)
                fprintf(stderr, "%s%s", e, e[strlen(e) - 1] == '\n' ? "" : "\n");
            rc = (int)code;
            pf_arena_free(m);
            break;
        }
        pf_arena_free(m);
    }
    pf_reader_free(&r);
    close(fd);
    if (cancel_sent && rc != 2 && rc != 0)
        rc = 2;
    return rc;
}

/* Waits for a stopping daemon to remove its socket. */
static void cli_await_gone(const char *address)
{
    struct stat st;
    for (int i = 0; i < 500 && stat(address, &st) == 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static int cli_run(const cli_opts *o, const char *address, const char *fp, const char *python)
{
    int rc = cli_run_once(o, address, fp, python);
    if (rc == CLI_RESTART) {
        cli_await_gone(address);
        rc = cli_run_once(o, address, fp, python);
    }
    return rc == CLI_RESTART ? 3 : rc;
}

static int cli_status(const char *address)
{
    pf_arena *a = pf_arena_new(0);
    char err[PF_ERRLEN] = "";
    pf_value *s = cli_control(address, "status", NULL, a, err, sizeof err);
    if (!s) {
        printf("no daemon at %s%s%s\n", address, err[0] ? ": " : "", err);
        pf_arena_free(a);
        return 1;
    }
    int64_t pid = 0, zpid = 0, items = 0, boots = 0, runs = 0, queued = 0;
    pf_dict_int(s, "pid", &pid);
    pf_dict_int(s, "zygote_pid", &zpid);
    pf_dict_int(s, "items", &items);
    pf_dict_int(s, "boots", &boots);
    pf_dict_int(s, "runs", &runs);
    pf_dict_int(s, "queued", &queued);
    const pf_value *idle = pf_dict_get(s, "idle");
    printf("daemon   : pid %lld, %s\n", (long long)pid, address);
    printf("zygote   : %s (pid %lld), %lld items collected, %lld boot%s\n",
           pf_dict_str(s, "zygote") ? pf_dict_str(s, "zygote") : "?", (long long)zpid,
           (long long)items, (long long)boots, boots == 1 ? "" : "s");
    printf("runs     : %lld done, %s, %lld queued\n", (long long)runs,
           pf_dict_get(s, "running") && pf_dict_get(s, "running")->u.b ? "one running" : "idle",
           (long long)queued);
    const pf_value *lb = pf_dict_get(s, "level_boots");
    int64_t site = 0, project = 0, collected = 0;
    if (lb && pf_dict_int(lb, "site", &site) && pf_dict_int(lb, "project", &project) &&
        pf_dict_int(lb, "collected", &collected))
        printf("layers   : %s; boots: site %lld, project %lld, collected %lld\n",
               !(pf_dict_get(s, "layers") && pf_dict_get(s, "layers")->u.b) ? "off"
               : pf_dict_get(s, "planned") && pf_dict_get(s, "planned")->u.b ? "on (preloading)"
                                                                            : "on (no plan yet)",
               (long long)site, (long long)project, (long long)collected);
    printf("watcher  : %s\n", pf_dict_get(s, "watching") && pf_dict_get(s, "watching")->u.b ? "on" : "off");
    printf("rootdir  : %s\n", pf_dict_str(s, "rootdir") ? pf_dict_str(s, "rootdir") : "");
    if (idle && idle->kind == PF_FLOAT)
        printf("idle     : %.0fs\n", idle->u.f);
    pf_arena_free(a);
    return 0;
}

static int cli_stop(const char *address)
{
    pf_arena *a = pf_arena_new(0);
    char err[PF_ERRLEN] = "";
    pf_value *s = cli_control(address, "stop", NULL, a, err, sizeof err);
    pf_arena_free(a);
    if (!s) {
        printf("no daemon at %s\n", address);
        return 0;
    }
    cli_await_gone(address);
    printf("stopped the daemon at %s\n", address);
    return 0;
}

/* Ask the interpreter which pytest it has (only for --version: the client
 * otherwise never starts Python). */
static void cli_pytest_version(const char *python, char *out, size_t outlen)
{
    snprintf(out, outlen, "not importable by that interpreter");
    int p[2];
    if (pipe(p) < 0)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 2);
        char *argv[] = {(char *)python, (char *)"-c", (char *)"import pytest; print(pytest.__version__)", NULL};
        execv(python, argv);
        _exit(127);
    }
    close(p[1]);
    char buf[128];
    ssize_t n = pid > 0 ? read(p[0], buf, sizeof buf - 1) : -1;
    close(p[0]);
    int status = 1;
    if (pid > 0)
        waitpid(pid, &status, 0);
    if (n > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        buf[n] = 0;
        buf[strcspn(buf, "\n")] = 0;
        snprintf(out, outlen, "%s", buf);
    }
}

static int cli_main(int argc, char **argv)
{
    cli_opts o;
    memset(&o, 0, sizeof o);
    int rc = cli_parse(argc, argv, &o);
    if (rc)
        return rc;
    if (o.help) {
        fputs(cli_usage, stdout);
        return 0;
    }
    char python[PATH_MAX];
    if (id_absolute(id_python(o.python), python, sizeof python) < 0) {
        fprintf(stderr, "pytest-fast: interpreter %s not found\n", id_python(o.python));
        return 4;
    }
    if (o.version) {
        char pytest_version[128], linked[256];
        cli_pytest_version(python, pytest_version, sizeof pytest_version);
        snprintf(linked, sizeof linked, "%s", Py_GetVersion());
        for (char *p = linked; *p; p++)   /* 3.9's version string has a newline */
            if (*p == '\n')
                *p = ' ';
        printf("pytest-fast %s (protocol %d)\nlinked libpython %s\ninterpreter %s\npytest %s\n",
               PF_VERSION, PF_PROTOCOL, linked, python, pytest_version);
        return 0;
    }
    if (!o.workers || o.print_workers) {
        pf_cores cores;
        pf_cores_detect(&cores);
        if (o.print_workers) {
            if (o.workers)
                printf("%d%s\n", o.workers, o.explain ? ": set by --workers / PYTEST_FAST_WORKERS" : "");
            else
                printf("%s\n", o.explain ? cores.why : util_fmt("%d", cores.workers));
            return 0;
        }
        o.workers = cores.workers;
    }
    int major, minor;
    if (id_python_version(python, &major, &minor) && (major != PY_MAJOR_VERSION || minor != PY_MINOR_VERSION)) {
        fprintf(stderr,
                "pytest-fast: %s is Python %d.%d, but this pytest-fast was built against libpython %d.%d.\n"
                "Rebuild it for that interpreter (PYTHON=%s ./build.sh), or pip/uv install pytest-fast "
                "into that environment.\n",
                python, major, minor, PY_MAJOR_VERSION, PY_MINOR_VERSION, python);
        return 4;
    }
    char cwd[PATH_MAX], root[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) {
        fprintf(stderr, "pytest-fast: cannot read the working directory: %s\n", strerror(errno));
        return 4;
    }
    const char *rootenv = util_getenv("PYTEST_FAST_ROOT");
    if (!realpath(rootenv ? rootenv : cwd, root))
        snprintf(root, sizeof root, "%s", rootenv ? rootenv : cwd);
    extern char **environ;
    char fp[65];
    id_fingerprint(root, python, environ, fp);
    char address[PATH_MAX], msg[PF_ERRLEN];
    if (o.runs > 0) {
        /* Local mode: a private daemon in a fresh 0700 directory, gone after. */
        const char *tmp = util_getenv("TMPDIR");
        char *tmpl = util_fmt("%s/pytest-fast-local-XXXXXX", tmp ? tmp : "/tmp");
        char *dir = mkdtemp(tmpl);
        if (!dir) {
            fprintf(stderr, "pytest-fast: cannot create a private directory: %s\n", strerror(errno));
            return 3;
        }
        snprintf(address, sizeof address, "%s/local.sock", dir);
        o.ttl = 60;
        int last = 0;
        for (int i = 0; i < o.runs; i++)
            last = cli_run(&o, address, fp, python);
        pf_arena *a = pf_arena_new(0);
        cli_control(address, "stop", NULL, a, msg, sizeof msg);
        pf_arena_free(a);
        cli_await_gone(address);
        static const char *const leftovers[] = {"local.pid", "local.lock", "local.log", "local.sock"};
        for (size_t i = 0; i < sizeof leftovers / sizeof *leftovers; i++) {
            char *p = util_fmt("%s/%s", dir, leftovers[i]);
            unlink(p);
            free(p);
        }
        rmdir(dir);
        free(tmpl);
        return last;
    }
    if (o.address) {
        snprintf(address, sizeof address, "%s", o.address);
    } else if (id_default_address(fp, address, sizeof address, msg, sizeof msg) < 0) {
        fprintf(stderr, "pytest-fast: %s\n", msg);
        return 4;
    }
    if (o.ensure) {
        /* A status request that carries our build: a daemon of another
         * build (this binary was rebuilt) exits and a new one starts. */
        char err[PF_ERRLEN] = "";
        pf_arena *a = pf_arena_new(0);
        pf_value *s = cli_control(address, "status", util_build, a, err, sizeof err);
        const char *op = s ? pf_dict_str(s, "op") : NULL;
        bool answered = op && !strcmp(op, "status");
        if (op && !strcmp(op, "restart"))
            cli_await_gone(address);
        pf_arena_free(a);
        if (!answered && !err[0]) {
            int fd = cli_start(address, o.ttl, err, sizeof err);
            if (fd >= 0)
                close(fd);
        }
        if (!answered && err[0]) {
            fprintf(stderr, "pytest-fast: %s\n", err);
            return 3;
        }
        printf("%s\n%s\n%d\n", address, fp, o.workers);
        return 0;
    }
    if (o.status)
        return cli_status(address);
    if (o.stop)
        return cli_stop(address);
    return cli_run(&o, address, fp, python);
}

/* ==========================================================================
 * main
 *
 * Owns nothing.  Internal roles are chosen by a leading flag: --daemon and
 * --zygote are started by this binary itself, never by users.
 * ========================================================================== */

#ifdef PF_NO_MAIN
#define PF_MAIN pf_main   /* linked into a test program, which has its own main */
#else
#define PF_MAIN main
#endif

int PF_MAIN(int argc, char **argv)
{
    util_find_exe(argv[0]);
    util_find_build();
    if (argc >= 5 && !strcmp(argv[1], "--daemon")) {
        double ttl = atof(argv[3]);
        return dmn_main(argv[2], ttl > 0 ? ttl : 600, atoi(argv[4]));
    }
    if (argc >= 5 && !strcmp(argv[1], "--zygote") && !strcmp(argv[4], "--"))
        return zyg_main(atoi(argv[2]), argv[3], argc - 5, argv + 5);
    return cli_main(argc, argv);
}

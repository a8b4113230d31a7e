/*
 * pytest_fast.h -- public interface of pytest-fast.
 *
 * pytest-fast is a resident, fork-based pytest accelerator.  This header is
 * what the C unit tests and the fuzz target see: the version, the protocol
 * constants, the value tree and its pickle codec, framing, hashing and the
 * worker-count logic.  Everything else in pytest_fast.c is static.
 *
 * Compile pytest_fast.c with -DPF_NO_MAIN to link it into a test program:
 * its entry point is then pf_main() instead of main().
 */
#ifndef PYTEST_FAST_H
#define PYTEST_FAST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PF_VERSION "0.1.0"

/* ---------------------------------------------------------------- protocol */

/* Bumped whenever a frame's shape changes; client and daemon must agree. */
#define PF_PROTOCOL 1

#define PF_FRAME_HEADER 4u                    /* uint32, big-endian length */
#define PF_MAX_FRAME (256u * 1024u * 1024u)   /* payload bytes */
#define PF_MAX_DEPTH 200                      /* container nesting */
#define PF_MAX_FDS 4                          /* SCM_RIGHTS fds per frame */

/* The values a decode produces never take more than this many bytes per
 * payload byte (plus PF_DECODE_SLACK), whatever the input says; the
 * decoder's temporary stack, memo and key tables, freed before it
 * returns, grow with the input too (at most about as much again). */
#define PF_DECODE_FACTOR 48u
#define PF_DECODE_SLACK (64u * 1024u)

/* ------------------------------------------------------------- value tree */

typedef enum pf_kind {
    PF_NONE,
    PF_BOOL,
    PF_INT,       /* fits in int64_t */
    PF_BIGINT,    /* exact: little-endian two's complement bytes, as LONG1 */
    PF_FLOAT,
    PF_STR,       /* UTF-8 (lone surrogates allowed, as Python's surrogatepass) */
    PF_BYTES,
    PF_BYTEARRAY,
    PF_TUPLE,
    PF_LIST,
    PF_DICT,      /* items[2i] = key, items[2i+1] = value; len = pair count */
    PF_SET,
    PF_FROZENSET
} pf_kind;

typedef struct pf_value pf_value;
struct pf_value {
    pf_kind kind;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            char *ptr;     /* NUL-terminated for convenience; len excludes it */
            size_t len;
        } s;               /* STR, BYTES, BYTEARRAY, BIGINT */
        struct {
            pf_value **items;
            size_t len, cap;
        } seq;             /* TUPLE, LIST, DICT, SET, FROZENSET */
    } u;
};

/* All values live in an arena and are freed together.  An arena created
 * with a non-zero limit refuses to grow past it (allocations return NULL). */
typedef struct pf_arena pf_arena;

pf_arena *pf_arena_new(size_t limit);
void pf_arena_free(pf_arena *a);
size_t pf_arena_used(const pf_arena *a);

pf_value *pf_new_none(pf_arena *a);
pf_value *pf_new_bool(pf_arena *a, bool b);
pf_value *pf_new_int(pf_arena *a, int64_t i);
pf_value *pf_new_float(pf_arena *a, double f);
pf_value *pf_new_str(pf_arena *a, const char *s, size_t len);   /* copies */
pf_value *pf_new_cstr(pf_arena *a, const char *s);
pf_value *pf_new_bytes(pf_arena *a, const void *p, size_t len); /* copies */
pf_value *pf_new_container(pf_arena *a, pf_kind kind);          /* TUPLE..FROZENSET */

/* Return 0, or -1 when the arena is exhausted. */
int pf_append(pf_arena *a, pf_value *container, pf_value *item);
int pf_dict_set(pf_arena *a, pf_value *dict, pf_value *key, pf_value *value);

/* Lookups return NULL when absent or of the wrong kind. */
const pf_value *pf_dict_get(const pf_value *dict, const char *key);
const char *pf_dict_str(const pf_value *dict, const char *key);
bool pf_dict_int(const pf_value *dict, const char *key, int64_t *out);
bool pf_is_seq(const pf_value *v);             /* TUPLE or LIST */
bool pf_value_equal(const pf_value *a, const pf_value *b);

/* ------------------------------------------------------------ pickle codec */

typedef struct pf_buf {
    uint8_t *data;
    size_t len, cap;
} pf_buf;

int pf_buf_reserve(pf_buf *b, size_t extra);        /* 0 or -1 (ENOMEM) */
int pf_buf_put(pf_buf *b, const void *p, size_t n);
int pf_buf_printf(pf_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void pf_buf_free(pf_buf *b);

/* Append a pickle (protocol 4, no FRAME) of v to out.  0 or -1 (ENOMEM, or
 * nesting deeper than PF_MAX_DEPTH). */
int pf_encode(pf_buf *out, const pf_value *v);

/* Decode one pickle (protocols 2-5) that holds only data.  On success
 * returns 0 and *out points into the arena.  On failure returns -1 and
 * writes a one-line reason to err.  Code-carrying opcodes (GLOBAL,
 * STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT1/2/4,
 * PERSID, BINPERSID) are refused, as are cycles, nesting beyond
 * PF_MAX_DEPTH, and anything that would allocate more than
 * PF_DECODE_FACTOR * len + PF_DECODE_SLACK bytes. */
int pf_decode(pf_arena *a, const uint8_t *data, size_t len, pf_value **out,
              char *err, size_t errlen);

/* ------------------------------------------------------------------ framing */

/* Write header + payload completely (EINTR, short writes, MSG_NOSIGNAL);
 * the fds, if any, ride with the first byte.  0, or -1 with errno. */
int pf_frame_write(int fd, const void *payload, size_t len, const int *fds,
                   int nfds);
int pf_send_value(int fd, const pf_value *v);

/* Incremental reader: feed it whenever fd is readable (blocking or not). */
typedef struct pf_reader {
    uint8_t hdr[PF_FRAME_HEADER];
    size_t hdr_have;
    size_t need;           /* payload length once the header is complete */
    pf_buf body;
    int fds[PF_MAX_FDS];   /* received with this frame, owned by the caller */
    int nfds;
} pf_reader;

enum {
    PF_READ_FRAME = 1,     /* body.data[0..need) is a complete payload */
    PF_READ_AGAIN = 0,     /* would block; call again when readable */
    PF_READ_EOF = -1,      /* orderly close between frames */
    PF_READ_ERROR = -2     /* errno set; EMSGSIZE for an oversize header,
                              EPROTO for EOF inside a frame */
};

void pf_reader_init(pf_reader *r);
int pf_reader_feed(pf_reader *r, int fd);
void pf_reader_reset(pf_reader *r);  /* after consuming a frame; keeps memory */
void pf_reader_free(pf_reader *r);   /* closes unclaimed fds */

/* Blocking: read one frame into r, waiting at most timeout_ms (-1 forever).
 * Returns PF_READ_FRAME, PF_READ_EOF or PF_READ_ERROR (ETIMEDOUT). */
int pf_read_frame(pf_reader *r, int fd, int timeout_ms);

/* ----------------------------------------------------------------- hashing */

typedef struct pf_sha256 {
    uint32_t h[8];
    uint64_t total;
    uint8_t block[64];
    size_t fill;
} pf_sha256;

void pf_sha256_init(pf_sha256 *c);
void pf_sha256_update(pf_sha256 *c, const void *p, size_t n);
void pf_sha256_final(pf_sha256 *c, uint8_t out[32]);
void pf_sha256_hex(const void *p, size_t n, char out[65]);

/* ------------------------------------------------------------ worker count */

/* Parsers fed from fixture strings in the tests.  Each returns -1 for
 * malformed input. */
int pf_cpulist_count(const char *list);              /* "0-3,8" -> 5 */
double pf_cgroup2_quota(const char *cpu_max);        /* "max 100000" -> 0 */
double pf_cgroup1_quota(const char *quota_us, const char *period_us);

typedef struct pf_cores {
    int online;       /* sysconf(_SC_NPROCESSORS_ONLN) */
    int perf;         /* performance cores, 0 when not a hybrid CPU */
    int affinity;     /* CPUs this process may run on, 0 if unknown */
    double quota;     /* cgroup CPU quota in cores, 0 when unlimited */
    int workers;      /* the resulting default, >= 1 */
    char why[256];    /* "2: 2 online, affinity 2, no cgroup quota" */
} pf_cores;

void pf_cores_detect(pf_cores *out);

/* Combine facts into a default worker count (>= 1) and explain it. */
int pf_cores_combine(pf_cores *c);

/* Parse a worker count: a decimal integer >= 1.  0 on success, -1 else. */
int pf_parse_workers(const char *s, int *out);

/* ------------------------------------------------------------------- entry */

/* The command line entry point (main, or pf_main under PF_NO_MAIN). */
int pf_main(int argc, char **argv);

#endif /* PYTEST_FAST_H */

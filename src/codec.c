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

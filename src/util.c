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
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    localtime_r(&now.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
    /* milliseconds: an edit-to-result timeline is read off this log */
    fprintf(stderr, "[%s.%03ld] [%s %d] ", stamp, now.tv_nsec / 1000000, util_role, (int)getpid());
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

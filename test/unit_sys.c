/* Unit tests for the SHA-256 and worker-count sections, for the daemon's
 * zygote table (orderings of frames that a loaded machine produces only
 * now and then, set up here exactly) and for the zygote's prefault. */
#define PF_NO_MAIN
#include "../pytest_fast.c"

#include <stdlib.h>
#include <sys/stat.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

static int passed, failed;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (cond) {                                                          \
            passed++;                                                        \
        } else {                                                             \
            failed++;                                                        \
            fprintf(stderr, "%s:%d: FAIL: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                    \
    } while (0)

#define CHECK_STR(got, want)                                                 \
    do {                                                                     \
        const char *g_ = (got), *w_ = (want);                                \
        if (strcmp(g_, w_) == 0) {                                           \
            passed++;                                                        \
        } else {                                                             \
            failed++;                                                        \
            fprintf(stderr, "%s:%d: FAIL: %s\n  got  \"%s\"\n  want \"%s\"\n", \
                    __FILE__, __LINE__, #got, g_, w_);                       \
        }                                                                    \
    } while (0)

/* Exact comparison is right: every expected quota is a ratio of integers
 * that the parser divides the same way. */
#define CHECK_DBL(got, want) CHECK((got) == (want))

static void to_hex(const uint8_t d[32], char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* Deterministic PRNG so failures reproduce. */
static uint32_t rng_next(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

/* ------------------------------------------------------------------ sha */

static void test_sha_vectors(void)
{
    char hex[65];
    pf_sha256_hex("", 0, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    pf_sha256_hex("abc", 3, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    pf_sha256_hex(m448, strlen(m448), hex);
    CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 =
        "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
        "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    pf_sha256_hex(m896, strlen(m896), hex);
    CHECK_STR(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    pf_sha256_hex(NULL, 0, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_sha_million_a(void)
{
    /* Odd chunk sizes cross block boundaries at every offset. */
    static const size_t chunks[] = {1, 3, 7, 13, 63, 64, 65, 127, 200, 1009};
    char a[1009];
    memset(a, 'a', sizeof a);
    pf_sha256 c;
    pf_sha256_init(&c);
    size_t left = 1000000;
    for (size_t i = 0; left > 0; i++) {
        size_t n = chunks[i % (sizeof chunks / sizeof chunks[0])];
        if (n > left)
            n = left;
        pf_sha256_update(&c, a, n);
        left -= n;
    }
    uint8_t d[32];
    char hex[65];
    pf_sha256_final(&c, d);
    to_hex(d, hex);
    CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* Every length 0..199 covers all padding cases (fill < 56, == 55, 56..63,
 * whole blocks).  The expected value is Python's
 *   sha256(b"".join(sha256(bytes((i*7+L) & 0xff for i in range(L))).digest()
 *                   for L in range(200)))                                 */
static void test_sha_lengths(void)
{
    uint8_t msg[200], d[32];
    pf_sha256 chain;
    pf_sha256_init(&chain);
    for (int len = 0; len < 200; len++) {
        for (int i = 0; i < len; i++)
            msg[i] = (uint8_t)(i * 7 + len);
        pf_sha256 c;
        pf_sha256_init(&c);
        pf_sha256_update(&c, msg, (size_t)len);
        pf_sha256_final(&c, d);
        pf_sha256_update(&chain, d, sizeof d);
    }
    char hex[65];
    pf_sha256_final(&chain, d);
    to_hex(d, hex);
    CHECK_STR(hex, "8c7c9ff69da76fc28823a1cb97268672663e628e1ea955868b16db46bab0545d");
}

static void test_sha_random_splits(void)
{
    uint8_t msg[1000];
    uint32_t rng = 12345;
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)rng_next(&rng);
    int mismatches = 0;
    for (int trial = 0; trial < 300; trial++) {
        size_t len = rng_next(&rng) % (sizeof msg + 1);
        char want[65], got[65];
        pf_sha256_hex(msg, len, want);
        pf_sha256 c;
        pf_sha256_init(&c);
        for (size_t off = 0; off < len;) {
            size_t n = rng_next(&rng) % 150; /* includes empty updates */
            if (n > len - off)
                n = len - off;
            pf_sha256_update(&c, msg + off, n);
            off += n;
        }
        uint8_t d[32];
        pf_sha256_final(&c, d);
        to_hex(d, got);
        mismatches += strcmp(got, want) != 0;
    }
    CHECK(mismatches == 0);
}

/* -------------------------------------------------------------- parsers */

static void test_cpulist(void)
{
    CHECK(pf_cpulist_count("0-3,8,10-11") == 7);
    CHECK(pf_cpulist_count("0-3,8,10-11\n") == 7);
    CHECK(pf_cpulist_count("  0-3 \n") == 4);
    CHECK(pf_cpulist_count("0") == 1);
    CHECK(pf_cpulist_count("5\n") == 1);
    CHECK(pf_cpulist_count("0-3,8") == 5);
    CHECK(pf_cpulist_count("0,2,4,6") == 4);
    CHECK(pf_cpulist_count("3-3") == 1);
    CHECK(pf_cpulist_count("0-4095") == 4096);
    CHECK(pf_cpulist_count("0-2147483646") == INT_MAX);

    CHECK(pf_cpulist_count("") == -1);
    CHECK(pf_cpulist_count("\n") == -1);
    CHECK(pf_cpulist_count("3-1") == -1);
    CHECK(pf_cpulist_count("a") == -1);
    CHECK(pf_cpulist_count("1,,2") == -1);
    CHECK(pf_cpulist_count("1-") == -1);
    CHECK(pf_cpulist_count("-1") == -1);
    CHECK(pf_cpulist_count("1,") == -1);
    CHECK(pf_cpulist_count(",1") == -1);
    CHECK(pf_cpulist_count("1-2-3") == -1);
    CHECK(pf_cpulist_count("0-3,2") == -1);      /* overlap */
    CHECK(pf_cpulist_count("4,1") == -1);        /* not ascending */
    CHECK(pf_cpulist_count("1 2") == -1);
    CHECK(pf_cpulist_count("+1") == -1);
    CHECK(pf_cpulist_count("0x3") == -1);
    CHECK(pf_cpulist_count("0-2147483647") == -1);
    CHECK(pf_cpulist_count("99999999999999999999") == -1);
    CHECK(pf_cpulist_count("0-99999999999999999999") == -1);
}

static void test_cgroup2(void)
{
    CHECK_DBL(pf_cgroup2_quota("max 100000\n"), 0);
    CHECK_DBL(pf_cgroup2_quota("max 100000"), 0);
    CHECK_DBL(pf_cgroup2_quota("200000 100000"), 2.0);
    CHECK_DBL(pf_cgroup2_quota("150000 100000\n"), 1.5);
    CHECK_DBL(pf_cgroup2_quota("50000 100000"), 0.5);
    CHECK_DBL(pf_cgroup2_quota("600000 100000"), 6.0);

    CHECK_DBL(pf_cgroup2_quota(""), -1);
    CHECK_DBL(pf_cgroup2_quota("max"), -1);
    CHECK_DBL(pf_cgroup2_quota("max\n"), -1);
    CHECK_DBL(pf_cgroup2_quota("200000"), -1);
    CHECK_DBL(pf_cgroup2_quota("200000 0"), -1);
    CHECK_DBL(pf_cgroup2_quota("0 100000"), -1);
    CHECK_DBL(pf_cgroup2_quota("-1 100000"), -1);
    CHECK_DBL(pf_cgroup2_quota("abc 100000"), -1);
    CHECK_DBL(pf_cgroup2_quota("maximum 100000"), -1);
    CHECK_DBL(pf_cgroup2_quota("200000 100000 5"), -1);
    CHECK_DBL(pf_cgroup2_quota("200000 max"), -1);
    CHECK_DBL(pf_cgroup2_quota("2e5 100000"), -1);
    CHECK_DBL(pf_cgroup2_quota("99999999999999999999 100000"), -1);
}

static void test_cgroup1(void)
{
    CHECK_DBL(pf_cgroup1_quota("-1", "100000"), 0);
    CHECK_DBL(pf_cgroup1_quota("-1\n", "100000\n"), 0);
    CHECK_DBL(pf_cgroup1_quota("50000", "100000"), 0.5);
    CHECK_DBL(pf_cgroup1_quota("200000\n", "100000\n"), 2.0);

    CHECK_DBL(pf_cgroup1_quota("", "100000"), -1);
    CHECK_DBL(pf_cgroup1_quota("-2", "100000"), -1);
    CHECK_DBL(pf_cgroup1_quota("-10", "100000"), -1);
    CHECK_DBL(pf_cgroup1_quota("0", "100000"), -1);
    CHECK_DBL(pf_cgroup1_quota("abc", "100000"), -1);
    CHECK_DBL(pf_cgroup1_quota("50000", "0"), -1);
    CHECK_DBL(pf_cgroup1_quota("50000", ""), -1);
    CHECK_DBL(pf_cgroup1_quota("-1", "x"), -1);
    CHECK_DBL(pf_cgroup1_quota("5 0000", "100000"), -1);
    CHECK_DBL(pf_cgroup1_quota("99999999999999999999", "100000"), -1);
}

static void test_parse_workers(void)
{
    int w = -7;
    CHECK(pf_parse_workers("1", &w) == 0 && w == 1);
    CHECK(pf_parse_workers("8", &w) == 0 && w == 8);
    CHECK(pf_parse_workers(" 12\n", &w) == 0 && w == 12);
    CHECK(pf_parse_workers("007", &w) == 0 && w == 7);
    CHECK(pf_parse_workers("4096", &w) == 0 && w == 4096);

    w = -7;
    static const char *const bad[] = {
        "", " ", "0", "-1", "abc", "3.5", "0x4", "1e3", "+3", "4097",
        "99999999999999999999", "1 2", "3abc",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (pf_parse_workers(bad[i], &w) != -1) {
            fprintf(stderr, "%s:%d: FAIL: pf_parse_workers accepted \"%s\"\n",
                    __FILE__, __LINE__, bad[i]);
            failed++;
        } else {
            passed++;
        }
    }
    CHECK(w == -7); /* untouched on failure */
}

/* ------------------------------------------------------------- combine */

static pf_cores facts(int online, int perf, int affinity, double quota)
{
    pf_cores c;
    memset(&c, 0, sizeof c);
    c.online = online;
    c.perf = perf;
    c.affinity = affinity;
    c.quota = quota;
    return c;
}

static void check_combine(pf_cores c, int workers, const char *why, int line)
{
    int got = pf_cores_combine(&c);
    if (got == workers && c.workers == workers && strcmp(c.why, why) == 0) {
        passed++;
        return;
    }
    failed++;
    fprintf(stderr, "%s:%d: FAIL: combine got %d/%d \"%s\"\n  want %d \"%s\"\n",
            __FILE__, line, got, c.workers, c.why, workers, why);
}

#define COMBINE(c, workers, why) check_combine((c), (workers), (why), __LINE__)

static void test_combine(void)
{
    COMBINE(facts(2, 0, 2, 0), 2, "2: 2 online, affinity 2, no cgroup quota");
    COMBINE(facts(8, 4, 8, 6.0), 4,
            "4: 8 online, 4 performance cores, affinity 8, cgroup quota 6.00 CPUs");
    COMBINE(facts(2, 0, 2, 0.5), 1,
            "1: 2 online, affinity 2, cgroup quota 0.50 CPUs (rounded down, at least 1)");
    /* affinity caps */
    COMBINE(facts(16, 0, 4, 0), 4, "4: 16 online, affinity 4, no cgroup quota");
    COMBINE(facts(16, 8, 4, 0), 4,
            "4: 16 online, 8 performance cores, affinity 4, no cgroup quota");
    COMBINE(facts(16, 8, 12, 0), 8,
            "8: 16 online, 8 performance cores, affinity 12, no cgroup quota");
    /* quota caps, rounded down */
    COMBINE(facts(8, 0, 8, 2.0), 2, "2: 8 online, affinity 8, cgroup quota 2.00 CPUs");
    COMBINE(facts(8, 0, 8, 1.5), 1,
            "1: 8 online, affinity 8, cgroup quota 1.50 CPUs (rounded down)");
    COMBINE(facts(8, 0, 8, 6.5), 6,
            "6: 8 online, affinity 8, cgroup quota 6.50 CPUs (rounded down)");
    /* a quota that does not bind is reported but not rounded */
    COMBINE(facts(2, 0, 2, 6.5), 2, "2: 2 online, affinity 2, cgroup quota 6.50 CPUs");
    COMBINE(facts(4, 0, 4, 4.0), 4, "4: 4 online, affinity 4, cgroup quota 4.00 CPUs");
    COMBINE(facts(1, 0, 1, 0.25), 1,
            "1: 1 online, affinity 1, cgroup quota 0.25 CPUs (rounded down, at least 1)");
    /* all three limits, tightest wins */
    COMBINE(facts(32, 16, 12, 3.0), 3,
            "3: 32 online, 16 performance cores, affinity 12, cgroup quota 3.00 CPUs");
    /* unknowns */
    COMBINE(facts(4, 0, 0, 0), 4, "4: 4 online, affinity unknown, no cgroup quota");
    COMBINE(facts(0, 0, 0, 0), 1, "1: 0 online, affinity unknown, no cgroup quota");
    COMBINE(facts(10, 4, 0, 0), 4,
            "4: 10 online, 4 performance cores, affinity unknown, no cgroup quota");
    COMBINE(facts(4, 0, 0, 1e12), 4,
            "4: 4 online, affinity unknown, cgroup quota 1000000000000.00 CPUs");
}

/* ------------------------------------------------- cgroup tree fixtures */

static void put(const char *dir, const char *rel, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    /* mkdir -p for the parents */
    for (char *p = path + strlen(dir) + 1; (p = strchr(p, '/')); p++) {
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static void rm_tree(const char *dir)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* Empty dir again for the next fixture tree. */
static int reset_dir(const char *dir)
{
    rm_tree(dir);
    if (mkdir(dir, 0700) == 0)
        return 0;
    perror(dir);
    failed++;
    return -1;
}

static double quota_in(const char *dir, const char *proc_text)
{
    char proc[PATH_MAX], root[PATH_MAX];
    snprintf(proc, sizeof proc, "%s/proc_cgroup", dir);
    snprintf(root, sizeof root, "%s/cg", dir);
    put(dir, "proc_cgroup", proc_text);
    return cores_cgroup_quota(proc, root);
}

static void test_cgroup_tree(void)
{
    char tmpl[] = "/tmp/unit_sys.XXXXXX";
    char *dir = mkdtemp(tmpl);
    if (!dir) {
        perror("mkdtemp");
        failed++;
        return;
    }
    /* v2: the tightest ancestor wins, unlimited levels are skipped. */
    put(dir, "cg/a/cpu.max", "400000 100000\n");
    put(dir, "cg/a/b/cpu.max", "max 100000\n");
    put(dir, "cg/a/b/c/cpu.max", "300000 100000\n");
    put(dir, "cg/a/b/c/d/cpu.max", "max 100000\n");
    CHECK_DBL(quota_in(dir, "0::/a/b/c/d\n"), 3.0);
    CHECK_DBL(quota_in(dir, "0::/a/b/c/d/\n"), 3.0);
    CHECK_DBL(quota_in(dir, "0::/a/b\n"), 4.0);
    CHECK_DBL(quota_in(dir, "0::/a/b/gone (deleted)\n"), 4.0);
    CHECK_DBL(quota_in(dir, "0::/\n"), 0);
    CHECK_DBL(quota_in(dir, "0::/a/../a/b/c\n"), 0);
    put(dir, "cg/x/cpu.max", "max 100000\n");
    CHECK_DBL(quota_in(dir, "0::/x\n"), 0);
    /* a container's cgroup mounted as root: the limit sits at the root */
    put(dir, "cg/cpu.max", "150000 100000\n");
    CHECK_DBL(quota_in(dir, "0::/\n"), 1.5);
    CHECK_DBL(quota_in(dir, "0::/a/b/c\n"), 1.5);
    CHECK_DBL(quota_in(dir, "0::/x\n"), 1.5);
    /* malformed files are ignored, not trusted */
    put(dir, "cg/x/cpu.max", "garbage\n");
    CHECK_DBL(quota_in(dir, "0::/x\n"), 1.5);

    /* v1 only (no cpu.max anywhere under this root), cpu,cpuacct mount */
    if (reset_dir(dir) < 0)
        return;
    put(dir, "cg/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put(dir, "cg/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put(dir, "cg/cpu,cpuacct/app/cpu.cfs_quota_us", "250000\n");
    put(dir, "cg/cpu,cpuacct/app/cpu.cfs_period_us", "100000\n");
    const char *hybrid =
        "12:pids:/app\n"
        "4:cpuset:/other\n"
        "3:cpu,cpuacct:/app\n"
        "1:name=systemd:/app\n"
        "0::/app\n";
    CHECK_DBL(quota_in(dir, hybrid), 2.5);
    CHECK_DBL(quota_in(dir, "3:cpuacct,cpu:/app\n"), 2.5);
    CHECK_DBL(quota_in(dir, "3:cpu,cpuacct:/\n"), 0);
    /* host path that does not exist inside the container: walk up */
    CHECK_DBL(quota_in(dir, "3:cpu,cpuacct:/docker/0123abcd\n"), 0);
    /* "cpuset" and "cpuacct" alone are not the cpu controller */
    CHECK_DBL(quota_in(dir, "4:cpuset:/app\n2:cpuacct:/app\n"), 0);

    /* v1 with only a "cpu" mount, as on this kind of host */
    if (reset_dir(dir) < 0)
        return;
    put(dir, "cg/cpu/cpu.cfs_quota_us", "50000\n");
    put(dir, "cg/cpu/cpu.cfs_period_us", "100000\n");
    CHECK_DBL(quota_in(dir, "1:cpu:/docker/0123abcd\n"), 0.5);

    /* nothing usable */
    CHECK_DBL(quota_in(dir, ""), 0);
    CHECK_DBL(quota_in(dir, "garbage\n"), 0);
    CHECK_DBL(cores_cgroup_quota("/nonexistent/proc/cgroup", dir), 0);
    rm_tree(dir);
}

/* --------------------------------------------------------------- detect */

static void test_detect(void)
{
    pf_cores c;
    memset(&c, 0x55, sizeof c);
    pf_cores_detect(&c);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(c.online == (online > 0 ? online : 1));
    CHECK(c.perf >= 0);
    CHECK(c.affinity >= 0);
    CHECK(c.quota >= 0);
    CHECK(c.workers >= 1);
    CHECK(c.workers <= (c.perf > 0 ? c.perf : c.online));
    CHECK(c.affinity == 0 || c.workers <= c.affinity);
#ifdef __linux__
    CHECK(c.affinity >= 1 && c.affinity <= c.online);
#endif
    CHECK(memchr(c.why, '\0', sizeof c.why) != NULL);
    char prefix[16];
    snprintf(prefix, sizeof prefix, "%d: ", c.workers);
    CHECK(strncmp(c.why, prefix, strlen(prefix)) == 0);
    /* detect's verdict is exactly combine over its own facts */
    pf_cores again = c;
    CHECK(pf_cores_combine(&again) == c.workers && strcmp(again.why, c.why) == 0);
}

/* --------------------------------------------------------------- daemon */

static dmn_zygote *node(int slot, int state, int level, dmn_zygote *parent, int fd)
{
    dmn_zygote *z = &dmn.nodes[slot];
    memset(z, 0, sizeof *z);
    pf_reader_init(&z->rd);
    z->state = state;
    z->level = level;
    z->parent = parent;
    z->fd = fd;
    z->out = -1;
    z->gen = ++dmn.node_gen;
    return z;
}

/* The full collection's "reaped" for its incremental child is read before
 * the child's own "refused": dmn_zygote_died() reads the refusal, the
 * full re-collect that follows takes the child's free slot, and the new
 * booting node must come out of it untouched, not be read to its end and
 * declared dead ("the zygote exited before collecting", CI on 3.10). */
static void test_refusal_read_from_the_reaped_frame(void)
{
    for (int i = 0; i < DMN_NODES; i++)
        dmn.nodes[i].state = Z_DOWN;
    int child[2], project[2];
    CHECK(util_socketpair(child) == 0 && util_socketpair(project) == 0);
    util_nonblock(child[0]);
    util_nonblock(project[0]);
    dmn_zygote *site = node(3, Z_READY, L_SITE, NULL, -1);
    dmn_zygote *proj = node(1, Z_READY, L_PROJECT, site, project[0]);
    dmn_zygote *full = node(2, Z_READY, L_COLLECTED, proj, -1);
    dmn_zygote *inc = node(0, Z_BOOTING, L_COLLECTED, full, child[0]);
    inc->incremental = true;
    inc->pid = 12345;
    dmn.level_boots[L_COLLECTED] = 2;
    dmn.booting = true;
    dmn.boot_from_layers = true;
    dmn.boot_from = L_COLLECTED;
    dmn.bchain[L_SITE] = site;
    dmn.bchain[L_PROJECT] = proj;
    dmn.bchain[L_COLLECTED] = inc;

    pf_arena *a = pf_arena_new(0);
    pf_value *refused = util_msg(a, "refused");
    util_set(a, refused, "why", pf_new_cstr(a, "a function ran"));
    CHECK(pf_send_value(child[1], refused) == 0);
    pf_arena_free(a);
    close(child[1]);   /* it exited after saying so */

    dmn_zygote_died(inc, 0);

    dmn_zygote *next = dmn.bchain[L_COLLECTED];
    CHECK(next == &dmn.nodes[0]);   /* the slot was taken again */
    if (next != &dmn.nodes[0])
        return;                     /* the boot ended: the new node was declared dead */
    CHECK(next->state == Z_BOOTING);
    CHECK(!next->incremental);
    CHECK(next->parent == proj);
    CHECK(next->fd >= 0);
    CHECK(next->output.len == 0);
    CHECK(strncmp(next->how, "full (a function ran)", 21) == 0);
    CHECK(!strcmp(dmn.boot_why, "a function ran"));

    /* The project level was asked to fork it. */
    pf_reader rd;
    pf_reader_init(&rd);
    CHECK(pf_read_frame(&rd, project[1], 1000) == PF_READ_FRAME);
    pf_arena *b = pf_arena_new(0);
    pf_value *msg = NULL;
    char err[160];
    CHECK(pf_decode(b, rd.body.data, rd.need, &msg, err, sizeof err) == 0);
    const char *op = msg ? pf_dict_str(msg, "op") : NULL;
    CHECK(op && !strcmp(op, "fork"));
    pf_arena_free(b);
    for (int i = 0; i < rd.nfds; i++)
        close(rd.fds[i]);
    pf_reader_free(&rd);
    close(project[1]);
    for (int i = 0; i < DMN_NODES; i++)
        if (dmn.nodes[i].state != Z_DOWN)
            dmn_node_free(&dmn.nodes[i]);
}

/* A frame from `peer`'s other end, decoded into a; NULL if none came. */
static pf_value *read_msg(pf_arena *a, int peer)
{
    pf_reader rd;
    pf_reader_init(&rd);
    pf_value *msg = NULL;
    char err[160];
    if (pf_read_frame(&rd, peer, 1000) != PF_READ_FRAME ||
        pf_decode(a, rd.body.data, rd.need, &msg, err, sizeof err) < 0)
        msg = NULL;
    for (int i = 0; i < rd.nfds; i++)
        close(rd.fds[i]);
    pf_reader_free(&rd);
    return msg;
}

/* An edit after the spare fork exists: the spare is told the files and
 * becomes the collected level being built; the full collection is asked
 * for no fork.  Its "forked" reply, which may come after the next fork
 * request, names the oldest of its children still without a pid. */
static void test_the_next_edit_takes_the_spare(void)
{
    for (int i = 0; i < DMN_NODES; i++)
        dmn.nodes[i].state = Z_DOWN;
    int full_sock[2], spare_sock[2];
    CHECK(util_socketpair(full_sock) == 0 && util_socketpair(spare_sock) == 0);
    util_nonblock(full_sock[0]);
    dmn_zygote *full = node(0, Z_READY, L_COLLECTED, NULL, full_sock[0]);
    dmn_zygote *spare = node(1, Z_SPARE, L_COLLECTED, full, spare_sock[0]);
    dmn.level_boots[L_COLLECTED] = 1;

    util_strv files = {0};
    util_strv_push(&files, "/p/tests/test_a.py");
    dmn_zygote *z = dmn_fork_recollect(NULL, full, &files);
    util_strv_free(&files);
    CHECK(z == spare);
    CHECK(spare->state == Z_BOOTING && spare->incremental);
    CHECK(dmn.level_boots[L_COLLECTED] == 2);
    pf_arena *a = pf_arena_new(0);
    pf_value *msg = read_msg(a, spare_sock[1]);
    const pf_value *told = msg ? pf_dict_get(msg, "recollect") : NULL;
    CHECK(told && pf_is_seq(told) && told->u.seq.len == 1 &&
          !strcmp(told->u.seq.items[0]->u.s.ptr, "/p/tests/test_a.py"));
    struct pollfd p = {full_sock[1], POLLIN, 0};
    CHECK(poll(&p, 1, 0) == 0);   /* no fork asked of the full collection */

    /* A second child of it, asked for after the spare: the replies come in
     * the order of the requests. */
    dmn_zygote *later = node(2, Z_SPARE, L_COLLECTED, full, -1);
    CHECK(later->gen > spare->gen);
    for (int pid = 101; pid <= 102; pid++) {
        pf_value *forked = util_msg(a, "forked");
        util_set(a, forked, "pid", pf_new_int(a, pid));
        util_set(a, forked, "wid", pf_new_int(a, -2));
        CHECK(pf_send_value(full_sock[1], forked) == 0);
    }
    dmn_zygote_read(full);
    CHECK(spare->pid == 101);
    CHECK(later->pid == 102);
    pf_arena_free(a);
    close(full_sock[1]);
    close(spare_sock[1]);
    for (int i = 0; i < DMN_NODES; i++)
        if (dmn.nodes[i].state != Z_DOWN)
            dmn_node_free(&dmn.nodes[i]);
}

#ifdef __linux__
/* Whether this process's page at p is mapped and exclusively its own. */
static bool page_exclusive(const void *p)
{
    int fd = open("/proc/self/pagemap", O_RDONLY);
    uint64_t e = 0;
    long page = sysconf(_SC_PAGESIZE);
    bool got = fd >= 0 && pread(fd, &e, sizeof e, (off_t)((uintptr_t)p / (uintptr_t)page * sizeof e)) ==
                              (ssize_t)sizeof e;
    if (fd >= 0)
        close(fd);
    return got && (e >> 63 & 1) && (e >> 56 & 1);
}
#endif

/* The spare fork copies the pages its sibling wrote since the fork, and
 * only those, keeping its own contents: a sibling writes the even pages
 * of a buffer; the spare, forked after, prefaults from it and finds the
 * even pages its own (with the parent's bytes) and the odd ones shared. */
static void test_prefault_copies_what_the_sibling_wrote(void)
{
#ifdef __linux__
    enum { N = 32 };
    long page = sysconf(_SC_PAGESIZE);
    char *buf = mmap(NULL, N * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(buf != MAP_FAILED);
    if (buf == MAP_FAILED)
        return;
    memset(buf, 1, N * (size_t)page);
    int wrote[2], release[2], verdict[2];
    CHECK(pipe(wrote) == 0 && pipe(release) == 0 && pipe(verdict) == 0);
    pid_t sibling = fork();
    if (sibling == 0) {
        for (int i = 0; i < N; i += 2)
            buf[(size_t)i * (size_t)page] = 2;
        char c = 'w';
        ssize_t w = write(wrote[1], &c, 1);
        (void)w;
        ssize_t r = read(release[0], &c, 1);   /* alive until the spare is done */
        _exit(r == 1 ? 0 : 1);
    }
    char c;
    CHECK(read(wrote[0], &c, 1) == 1);
    pid_t spare = fork();
    if (spare == 0) {
        /* 0: fine; else the first failing page + 1, or N + 1 for the count */
        int bad = 0;
        size_t copied = zyg_prefault(sibling);
        char *probe = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        bool supported = probe != MAP_FAILED && (madvise(probe, (size_t)page, MADV_POPULATE_WRITE) == 0 ||
                                                 errno != EINVAL);
        for (int i = 0; i < N && !bad; i++)
            if (buf[(size_t)i * (size_t)page] != 1 || page_exclusive(buf + (size_t)i * (size_t)page) !=
                                                          (supported && i % 2 == 0))
                bad = i + 1;
        /* the sibling's own pages (its stack, its heap) count too */
        if (!bad && (supported ? copied < N / 2 : copied != 0))
            bad = N + 1;
        ssize_t w = write(verdict[1], &bad, sizeof bad);
        _exit(w == (ssize_t)sizeof bad ? 0 : 1);
    }
    int bad = -1;
    CHECK(read(verdict[0], &bad, sizeof bad) == (ssize_t)sizeof bad);
    CHECK(bad == 0);
    if (bad)
        fprintf(stderr, "  prefault: page %d is not as it should be\n", bad - 1);
    CHECK(write(release[1], "x", 1) == 1);
    int st;
    CHECK(waitpid(spare, &st, 0) == spare && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(waitpid(sibling, &st, 0) == sibling && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    for (int i = 0; i < 2; i++) {
        close(wrote[i]);
        close(release[i]);
        close(verdict[i]);
    }
    munmap(buf, N * (size_t)page);
#endif
}

int main(void)
{
    test_sha_vectors();
    test_sha_million_a();
    test_sha_lengths();
    test_sha_random_splits();
    test_cpulist();
    test_cgroup2();
    test_cgroup1();
    test_parse_workers();
    test_combine();
    test_cgroup_tree();
    test_detect();
    test_refusal_read_from_the_reaped_frame();
    test_the_next_edit_takes_the_spare();
    test_prefault_copies_what_the_sibling_wrote();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

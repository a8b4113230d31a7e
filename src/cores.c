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

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
        "PYTEST_FAST_WATCH_DEBOUNCE=", "PYTEST_FAST_WATCH=", "PYTEST_FAST_SHARD=",
        "PYTEST_FAST_RECORD=",
        "PYTEST_FAST_INCREMENTAL=",
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
 * PYTEST_ADDOPTS, PYTEST_FAST_* (but run parameters), PYTHON*, VIRTUAL_ENV,
 * COVERAGE_* (coverage.py reads them when the chain starts measuring: a
 * COVERAGE_FILE per CI shard must not reuse another's data file) and every
 * PYTEST_FAST_ENV_PREFIXES prefix.  Sorted, so order is moot. */
static void id_env_relevant(char **envp, util_strv *out)
{
    const char *prefixes = NULL;
    for (char **e = envp; *e; e++)
        if (!strncmp(*e, "PYTEST_FAST_ENV_PREFIXES=", 25))
            prefixes = *e + 25;
    for (char **e = envp; *e; e++) {
        const char *kv = *e;
        bool take = !strncmp(kv, "PYTEST_ADDOPTS=", 15) || !strncmp(kv, "PYTHON", 6) ||
                    !strncmp(kv, "VIRTUAL_ENV=", 12) || !strncmp(kv, "COVERAGE_", 9) ||
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

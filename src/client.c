/* ==========================================================================
 * Client
 *
 * Owns: the Ctrl-C flag of the client process, and --watch's saved terminal mode.
 * `pytest-fast [options] [pytest args]`: finds or starts the daemon (one
 * starter at a time, under a lock, with a deadline), sends one request with
 * its stdio fds, shows progress, prints the summary and exits with pytest's
 * exit code.  Never initializes Python.  Calls everything above but the
 * Daemon and Zygote, which it only execs.
 * ========================================================================== */

#define CLI_START_DEADLINE 30.0   /* seconds for a daemon to listen */
#define CLI_RESTART (-1)          /* the daemon belongs to another build */

static volatile sig_atomic_t cli_interrupts;
static struct termios cli_tty_saved;   /* --watch: the terminal as it was */

static void cli_tty_restore(void)
{
    tcsetattr(0, TCSANOW, &cli_tty_saved);
}

static void cli_on_sigint(int sig)
{
    (void)sig;
    cli_interrupts++;
}

typedef struct cli_opts {
    const char *address, *python, *dump, *start_method;
    double ttl, timeout;
    int workers, runs;
    int shard_k, shard_n;       /* 0/0: no shard */
    bool store_durations;
    bool full_report, status, stop, print_workers, explain, help, version, ensure, prewarm, watch;
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
    "  --affected              run only the tests an edit since their last run could\n"
    "                          change, those that failed and those never run\n"
    "  --watch                 stay in the foreground: on every save, run the tests\n"
    "                          the edit affects first, then the rest; a new save\n"
    "                          cancels the run in flight.  Keys on a terminal (h)\n"
    "  --dump PATH             write {nodeid: outcome} JSON after the run\n"
    "  --shard K/N             run only shard K of N (1-based; or $PYTEST_FAST_SHARD;\n"
    "                          GitLab's CI_NODE_INDEX/CI_NODE_TOTAL when set), split\n"
    "                          by recorded durations, one job per shard\n"
    "  --store-durations       also merge this run's durations into .test_durations\n"
    "                          (pytest-split's file), as pytest-split does\n"
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
    "re-collect.  Exit codes are pytest's.  The summary is lean (-v, -q, -r,\n"
    "--durations, --show-capture shape it); for pytest's own reporting\n"
    "(--junitxml, plugins' sections ...) use `pytest --fast`.\n";

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
    const char *shard = util_getenv("PYTEST_FAST_SHARD");
    const char *shard_from = "PYTEST_FAST_SHARD";
    o->address = util_getenv("PYTEST_FAST_ADDRESS");
    bool pass_rest = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (pass_rest) {
            util_strv_push(&o->pytest_args, a);
            continue;
        }
        static const char *const valued[] = {"--address", "--workers", "--ttl", "--timeout", "--dump",
                                             "--python", "--start-method", "--runs", "--shard"};
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
        case 8: shard = value; shard_from = "--shard"; continue;
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
        else if (!strcmp(a, "--store-durations"))
            o->store_durations = true;
        else if (!strcmp(a, "--with-watcher"))
            o->prewarm = true;
        else if (!strcmp(a, "--watch"))
            o->watch = true;
        else if (!strcmp(a, "--affected"))
            util_strv_push(&o->pytest_args, "--fast-affected");   /* the leader's name for it */
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
    char *ci = NULL;
    if (!shard && util_getenv("CI_NODE_INDEX") && util_getenv("CI_NODE_TOTAL")) {
        /* GitLab's `parallel:` jobs: the same 1-based K of N. */
        shard = ci = util_fmt("%s/%s", util_getenv("CI_NODE_INDEX"), util_getenv("CI_NODE_TOTAL"));
        shard_from = "CI_NODE_INDEX/CI_NODE_TOTAL";
    }
    if (shard && arg_parse_shard(shard, &o->shard_k, &o->shard_n) < 0) {
        cli_usage_error("invalid %s '%s': expected K/N, shard K of N with 1 <= K <= N "
                        "(e.g. 1/3, 2/3 and 3/3 for three jobs)", shard_from, shard);
        free(ci);
        return 2;
    }
    free(ci);
    if (o->watch && (o->dump || o->runs || o->status || o->stop || o->ensure || o->shard_n))
        return cli_usage_error("--watch runs on every save: it does not combine with --dump, --runs, "
                               "--shard, --status, --stop or --ensure-daemon");
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

/* What one run asks for beyond the options: its pytest arguments and
 * --dump path, and, under --watch, the session it belongs to. */
typedef struct cli_watch cli_watch;
typedef struct cli_job {
    const util_strv *args;
    const char *dump;
    cli_watch *watch;
} cli_job;

#define CLI_CHANGED (-2)          /* --watch: a save cancelled the run */
#define CLI_QUIT (-3)             /* --watch: the user asked to leave */

static int cli_watch_fds(const cli_watch *w, struct pollfd *out);
static void cli_watch_keys(cli_watch *w, bool on);
static int cli_watch_event(cli_watch *w, bool running);

/* One run: send, stream, print.  Returns pytest's exit code. */
static int cli_run_once(const cli_opts *o, const cli_job *job, const char *address, const char *fp,
                        const char *python)
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
        if (!job->watch || strncmp(*e, "PYTEST_FAST_RECORD=", 19))
            util_strv_push(&env, *e);
    if (job->watch)   /* every run records, so the next save's --affected knows */
        util_strv_push(&env, "PYTEST_FAST_RECORD=1");
    bool tty = isatty(1);
    util_set(a, req, "proto", pf_new_int(a, PF_PROTOCOL));
    util_set(a, req, "build", pf_new_cstr(a, util_build));
    util_set(a, req, "args", util_strv_value(a, job->args));
    util_set(a, req, "env", util_strv_value(a, &env));
    util_set(a, req, "cwd", pf_new_cstr(a, cwd));
    util_set(a, req, "fp", pf_new_cstr(a, fp));
    util_set(a, req, "python", pf_new_cstr(a, python));
    util_set(a, req, "workers", pf_new_int(a, o->workers));
    util_set(a, req, "timeout", pf_new_float(a, o->timeout));
    util_set(a, req, "full", pf_new_bool(a, o->full_report));
    util_set(a, req, "brief", pf_new_bool(a, job->watch != NULL));
    util_set(a, req, "watch", pf_new_bool(a, o->prewarm));
    if (o->shard_n) {
        pf_value *shard = pf_new_container(a, PF_TUPLE);
        pf_append(a, shard, pf_new_int(a, o->shard_k));
        pf_append(a, shard, pf_new_int(a, o->shard_n));
        util_set(a, req, "shard", shard);
    }
    util_set(a, req, "store_durations", pf_new_bool(a, o->store_durations));
    util_set(a, req, "color", pf_new_bool(a, tty && !getenv("NO_COLOR")));
    if (o->start_method)
        util_set(a, req, "start_method", pf_new_cstr(a, o->start_method));
    if (job->dump) {
        char *abs = job->dump[0] == '/' ? util_strdup(job->dump) : util_fmt("%s/%s", cwd, job->dump);
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
    int why = 0;   /* CLI_CHANGED / CLI_QUIT: --watch cancelled this run */
    bool progress_shown = false, cancel_sent = false, debugger = false;
    double cancel_at = 0;
    for (;;) {
        if (cli_interrupts && debugger && !cancel_sent) {
            /* The terminal sent us its Ctrl-C: it is the open debugger's. */
            cli_interrupts = 0;
            if (write(fd, "i", 1) < 0) {
                rc = 2;
                break;
            }
            continue;
        }
        if (cli_interrupts && job->watch && !why)
            why = CLI_QUIT;
        if ((cli_interrupts || why) && !cancel_sent) {
            /* Any byte means "cancel"; the daemon kills the run's workers. */
            if (write(fd, "c", 1) < 0) {
                rc = 2;
                break;
            }
            cancel_sent = true;
            cancel_at = util_now();
            if (!why)
                fputs("\npytest-fast: interrupted, cancelling the run (Ctrl-C again to leave now)\n", stderr);
        }
        if ((cli_interrupts > 1 && !why) || (cancel_sent && util_now() - cancel_at > 2.0)) {
            rc = 2;
            break;
        }
        struct pollfd p[3] = {{fd, POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLIN, 0}};
        nfds_t np = 1;
        if (job->watch && !why && !debugger)   /* a save or a key can cancel the run */
            np += (nfds_t)cli_watch_fds(job->watch, p + 1);
        int n = poll(p, np, cancel_sent ? 100 : 1000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n > 0 && np > 1 && (p[1].revents || p[2].revents))
            why = cli_watch_event(job->watch, true);
        if (n <= 0 || !p[0].revents)
            continue;
        int st = pf_reader_feed(&r, fd);
        if (st == PF_READ_AGAIN)
            continue;
        if (st != PF_READ_FRAME) {
            if (progress_shown)
                fputs("\r\033[K", stdout);
            if (!why)
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
            if (!debugger) {
                cli_progress(msg, tty);
                progress_shown = tty;
            }
        } else if (op && !strcmp(op, "debugger")) {
            /* A worker's debugger has the terminal until it closes. */
            const pf_value *open = pf_dict_get(msg, "open");
            debugger = open && open->kind == PF_BOOL && open->u.b;
            if (job->watch)   /* its keys are the debugger's now, in the terminal's own mode */
                cli_watch_keys(job->watch, !debugger);
            if (debugger) {
                /* Clear the line, then say so: the debugger writes only after. */
                if (progress_shown)
                    fputs("\r\033[K", stdout);
                fflush(stdout);
                if (write(fd, "a", 1) < 0) {
                    rc = 3;
                    pf_arena_free(m);
                    break;
                }
            }
            progress_shown = false;
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
            if (summary && *summary && !why)
                fputs(summary, stdout);
            fflush(stdout);
            if (e && *e && !why)
                fprintf(stderr, "%s%s", e, e[strlen(e) - 1] == '\n' ? "" : "\n");
            rc = (int)code;
            pf_arena_free(m);
            break;
        }
        pf_arena_free(m);
    }
    pf_reader_free(&r);
    close(fd);
    if (debugger && job->watch)   /* the run ended with a debugger open: single keys again */
        cli_watch_keys(job->watch, true);
    if (why)
        return why;
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

static int cli_run(const cli_opts *o, const cli_job *job, const char *address, const char *fp,
                   const char *python)
{
    int rc = cli_run_once(o, job, address, fp, python);
    if (rc == CLI_RESTART) {
        cli_await_gone(address);
        rc = cli_run_once(o, job, address, fp, python);
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
    const char *how = pf_dict_str(s, "recollect");
    if (how && how[0])
        printf("collected: %s\n", how);
    int64_t spare = 0;
    if (pf_dict_int(s, "spare_pid", &spare) && spare > 0)
        printf("spare    : pid %lld, forked ahead of the next incremental re-collect\n", (long long)spare);
    printf("watcher  : %s\n", pf_dict_get(s, "watching") && pf_dict_get(s, "watching")->u.b ? "on" : "off");
    int64_t subs = 0;
    if (pf_dict_int(s, "watch_clients", &subs) && subs > 0)
        printf("--watch  : %lld client%s%s\n", (long long)subs, subs == 1 ? "" : "s",
               pf_dict_get(s, "settling") && pf_dict_get(s, "settling")->u.b ? ", a change settling" : "");
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

/* ------------------------------------------------------------------ watch */

/* `pytest-fast --watch`: a subscription to the daemon's file watch (see the
 * daemon's Subscribers) and a loop of runs.  The first run is the whole
 * selection; after each settled save, the tests the edit affects run first
 * and print at once, then the rest of the selection, so nothing is skipped
 * silently.  A save during a run cancels it and starts over.  Every run
 * records what its tests ran, which is what the next save's selection
 * reads.  On a terminal, single keys change the selection. */
struct cli_watch {
    const cli_opts *o;
    const char *address, *fp, *python;
    int sub;                    /* the subscription; -1 between daemons */
    pf_reader rd;
    bool keys;                  /* stdin and stdout are a terminal */
    struct termios saved;
    util_strv changed;          /* what the last "changed" named */
    int64_t nchanged;
    util_strv paths;            /* p: paths or node ids */
    char *kexpr;                /* t: a -k expression */
    bool failed_only;           /* f: --lf */
    char root[PATH_MAX];
};

static const char cli_watch_help[] =
    "  a, Enter  run the whole selection\n"
    "  f         only the tests that failed (--lf); f again: all\n"
    "  p         filter by paths or node ids\n"
    "  t         filter by a -k expression\n"
    "  c         clear the filters\n"
    "  q         quit (Ctrl-C too)\n"
    "  h         this help\n";

/* Subscribe: starts a daemon if none answers; a daemon of another build
 * makes way first, as for a run. */
static int cli_watch_subscribe(cli_watch *w)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        char err[PF_ERRLEN] = "";
        int fd = cli_connect(w->address, err, sizeof err);
        if (fd == -1)
            fd = cli_start(w->address, w->o->ttl, err, sizeof err);
        if (fd < 0) {
            fprintf(stderr, "pytest-fast: %s\n", err[0] ? err : strerror(errno));
            return -1;
        }
        char cwd[PATH_MAX];
        const char *debounce = util_getenv("PYTEST_FAST_WATCH_DEBOUNCE");
        const char *poll_s = util_getenv("PYTEST_FAST_WATCH_POLL");
        double v;
        pf_arena *a = pf_arena_new(0);
        pf_value *req = util_msg(a, "watch");
        util_set(a, req, "proto", pf_new_int(a, PF_PROTOCOL));
        util_set(a, req, "build", pf_new_cstr(a, util_build));
        util_set(a, req, "cwd", pf_new_cstr(a, getcwd(cwd, sizeof cwd) ? cwd : "/"));
        if (debounce && cli_parse_double(debounce, &v))
            util_set(a, req, "debounce", pf_new_float(a, v));
        if (poll_s && cli_parse_double(poll_s, &v) && v > 0)
            util_set(a, req, "poll", pf_new_float(a, v));
        pf_value *reply = NULL;
        pf_reader r;
        pf_reader_init(&r);
        if (cli_send(fd, req, false) < 0 || pf_read_frame(&r, fd, 30000) != PF_READ_FRAME ||
            pf_decode(a, r.body.data, r.need, &reply, err, sizeof err) < 0)
            reply = NULL;
        pf_reader_free(&r);
        const char *op = reply && reply->kind == PF_DICT ? pf_dict_str(reply, "op") : NULL;
        if (op && !strcmp(op, "watching")) {
            snprintf(w->root, sizeof w->root, "%s", pf_dict_str(reply, "root") ? pf_dict_str(reply, "root") : "");
            pf_arena_free(a);
            util_nonblock(fd);
            pf_reader_init(&w->rd);
            w->sub = fd;
            return 0;
        }
        close(fd);
        pf_arena_free(a);
        if (!op || strcmp(op, "restart") != 0) {
            fprintf(stderr, "pytest-fast: the daemon did not take the watch request (log: %s)\n",
                    id_sibling(w->address, ".log"));
            return -1;
        }
        cli_await_gone(w->address);
    }
    return -1;
}

/* Single keys on (no echo, no line editing; Ctrl-C stays a signal), or
 * the terminal as it was: for a line of input or an open debugger. */
static void cli_watch_keys(cli_watch *w, bool on)
{
    if (!w->keys)
        return;
    struct termios raw = w->saved;
    raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    tcsetattr(0, TCSANOW, on ? &raw : &w->saved);
}

static int cli_watch_fds(const cli_watch *w, struct pollfd *out)
{
    out[0] = (struct pollfd){w->sub, POLLIN, 0};
    out[1] = (struct pollfd){w->keys ? 0 : -1, POLLIN, 0};
    return 2;
}

/* What the subscription or the keyboard says: CLI_CHANGED, CLI_QUIT, a key
 * (only when not running: a run only listens for q), or 0. */
static int cli_watch_event(cli_watch *w, bool running)
{
    for (;;) {
        int st = w->sub >= 0 ? pf_reader_feed(&w->rd, w->sub) : PF_READ_AGAIN;
        if (st == PF_READ_AGAIN)
            break;
        if (st != PF_READ_FRAME) {
            /* The daemon went away (--stop, a rebuilt binary) or dropped a
             * subscriber that did not read: subscribe again, and run the
             * whole selection (what changed meanwhile is unknown). */
            close(w->sub);
            w->sub = -1;
            pf_reader_free(&w->rd);
            util_strv_free(&w->changed);
            w->nchanged = 0;
            fputs("pytest-fast --watch: the subscription ended; subscribing again\n", stderr);
            return cli_watch_subscribe(w) < 0 ? CLI_QUIT : CLI_CHANGED;
        }
        pf_arena *a = pf_arena_new(0);
        pf_value *msg = NULL;
        char err[160];
        int ok = pf_decode(a, w->rd.body.data, w->rd.need, &msg, err, sizeof err);
        pf_reader_reset(&w->rd);
        const char *op = ok == 0 && msg->kind == PF_DICT ? pf_dict_str(msg, "op") : NULL;
        if (op && !strcmp(op, "changed")) {
            util_strv_free(&w->changed);
            util_value_strv(pf_dict_get(msg, "files"), &w->changed);
            w->nchanged = 0;
            pf_dict_int(msg, "count", &w->nchanged);
            pf_arena_free(a);
            return CLI_CHANGED;
        }
        pf_arena_free(a);
    }
    unsigned char key;
    struct pollfd p = {0, POLLIN, 0};
    while (w->keys && poll(&p, 1, 0) > 0 && read(0, &key, 1) == 1) {
        if (key == 'q')
            return CLI_QUIT;
        if (!running)
            return key;
    }
    return 0;
}

/* A line from the terminal, echoed: keys are read one at a time otherwise. */
static char *cli_watch_line(cli_watch *w, const char *prompt)
{
    cli_watch_keys(w, false);
    fputs(prompt, stdout);
    fflush(stdout);
    char buf[4096];
    bool got = fgets(buf, sizeof buf, stdin) != NULL;
    cli_watch_keys(w, true);
    if (!got)
        return NULL;
    buf[strcspn(buf, "\r\n")] = 0;
    return util_strdup(buf);
}

/* "failed only; -k 'expr'; path path", or nothing. */
static void cli_watch_filters(const cli_watch *w, pf_buf *b)
{
    if (w->failed_only)
        pf_buf_printf(b, "failed only");
    if (w->kexpr)
        pf_buf_printf(b, "%s-k '%s'", b->len ? "; " : "", w->kexpr);
    for (size_t i = 0; i < w->paths.n; i++)
        pf_buf_printf(b, "%s%s", i ? " " : b->len ? "; " : "", w->paths.v[i]);
}

/* The run's arguments: the command line's, then the filters, then extra. */
static void cli_watch_args(const cli_watch *w, util_strv *args, const char *extra)
{
    for (size_t i = 0; i < w->o->pytest_args.n; i++)
        util_strv_push(args, w->o->pytest_args.v[i]);
    if (w->failed_only)
        util_strv_push(args, "--lf");
    if (w->kexpr) {
        util_strv_push(args, "-k");
        util_strv_push(args, w->kexpr);
    }
    if (extra)
        util_strv_push(args, extra);
    for (size_t i = 0; i < w->paths.n; i++)
        util_strv_push(args, w->paths.v[i]);
}

static int cli_watch_run(cli_watch *w, const char *extra, const char *dump)
{
    util_strv args = {0};
    cli_watch_args(w, &args, extra);
    cli_job job = {&args, dump, w};
    int rc = cli_run(w->o, &job, w->address, w->fp, w->python);
    util_strv_free(&args);
    return rc;
}

/* After a save: the affected tests, then the rest.  pytest's exit code of
 * the pair (the worse one), or CLI_CHANGED / CLI_QUIT. */
static int cli_watch_after_change(cli_watch *w)
{
    pf_buf b = {0};
    for (size_t i = 0; i < w->changed.n; i++)
        pf_buf_printf(&b, "%s%s", i ? ", " : "", w->changed.v[i]);
    if (w->nchanged > (int64_t)w->changed.n)
        pf_buf_printf(&b, " and %lld more", (long long)(w->nchanged - (int64_t)w->changed.n));
    printf("\npytest-fast --watch: %.*s changed: the tests it affects first\n", (int)b.len, b.data);
    pf_buf_free(&b);
    fflush(stdout);
    const char *tmp = util_getenv("TMPDIR");
    char *dump = util_fmt("%s/pytest-fast-watch-XXXXXX", tmp ? tmp : "/tmp");
    int fd = mkstemp(dump);
    if (fd < 0) {
        free(dump);
        return cli_watch_run(w, NULL, NULL);
    }
    close(fd);
    int rc = cli_watch_run(w, "--fast-affected", dump);
    struct stat st;
    if ((rc == 0 || rc == 1) && stat(dump, &st) == 0 && st.st_size > 0) {
        /* the rest: all but what the first run reported (its dump) */
        printf("\npytest-fast --watch: the rest of the selection\n");
        fflush(stdout);
        char *exclude = util_fmt("--fast-exclude=%s", dump);
        int rest = cli_watch_run(w, exclude, NULL);
        free(exclude);
        if (rest == CLI_CHANGED || rest == CLI_QUIT || rest > 1)
            rc = rest == 5 ? rc : rest;
        else if (rest > rc)
            rc = rest;
    }
    unlink(dump);
    free(dump);
    return rc;
}

/* Between runs: the prompt, then a save, a key or Ctrl-C. */
static int cli_watch_wait(cli_watch *w)
{
    pf_buf b = {0};
    cli_watch_filters(w, &b);
    printf("\npytest-fast --watch: waiting for changes in %s%s%.*s%s%s\n", w->root,
           b.len ? " [filter: " : "", (int)b.len, b.data, b.len ? "]" : "",
           w->keys ? "; h for help, q to quit" : "");
    pf_buf_free(&b);
    fflush(stdout);
    for (;;) {
        if (cli_interrupts)
            return CLI_QUIT;
        struct pollfd p[2];
        cli_watch_fds(w, p);
        if (poll(p, 2, 1000) < 0 && errno != EINTR)
            return CLI_QUIT;
        int ev = cli_watch_event(w, false);
        if (ev == CLI_CHANGED || ev == CLI_QUIT)
            return ev;
        char *line;
        switch (ev) {
        case '\n': case '\r': case 'a':
            return 'a';
        case 'f':
            w->failed_only = !w->failed_only;
            return 'a';
        case 'c':
            w->failed_only = false;
            free(w->kexpr);
            w->kexpr = NULL;
            util_strv_free(&w->paths);
            return 'a';
        case 't':
            if (!(line = cli_watch_line(w, "-k expression (empty: none): ")))
                break;
            free(w->kexpr);
            w->kexpr = *line ? line : NULL;
            if (!*line)
                free(line);
            return 'a';
        case 'p':
            if (!(line = cli_watch_line(w, "paths or node ids, space-separated (empty: none): ")))
                break;
            util_strv_free(&w->paths);
            for (char *tok = strtok(line, " \t"); tok; tok = strtok(NULL, " \t"))
                util_strv_push(&w->paths, tok);
            free(line);
            return 'a';
        case 'h':
            fputs(cli_watch_help, stdout);
            fflush(stdout);
            break;
        default:
            break;
        }
    }
}

static int cli_watch_main(const cli_opts *o, const char *address, const char *fp, const char *python)
{
    cli_watch w;
    memset(&w, 0, sizeof w);
    w.o = o;
    w.address = address;
    w.fp = fp;
    w.python = python;
    w.sub = -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cli_on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (cli_watch_subscribe(&w) < 0)
        return 3;
    /* Keys only in the foreground: a background job that touched the
     * terminal would be stopped (SIGTTOU). */
    w.keys = isatty(0) && isatty(1) && tcgetpgrp(0) == getpgrp() && tcgetattr(0, &w.saved) == 0;
    if (w.keys) {
        cli_tty_saved = w.saved;
        atexit(cli_tty_restore);   /* whatever path leaves the process */
    }
    cli_watch_keys(&w, true);
    int next = 'a', rc = 0;
    while (next != CLI_QUIT) {
        rc = next == CLI_CHANGED && w.nchanged ? cli_watch_after_change(&w) : cli_watch_run(&w, NULL, NULL);
        next = rc == CLI_CHANGED || rc == CLI_QUIT ? rc : cli_watch_wait(&w);
    }
    cli_watch_keys(&w, false);
    if (w.sub >= 0)
        close(w.sub);
    pf_reader_free(&w.rd);
    util_strv_free(&w.changed);
    util_strv_free(&w.paths);
    free(w.kexpr);
    printf("\npytest-fast --watch: bye\n");
    return cli_interrupts ? 2 : 0;
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
        cli_job job = {&o.pytest_args, o.dump, NULL};
        for (int i = 0; i < o.runs; i++)
            last = cli_run(&o, &job, address, fp, python);
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
    if (o.watch)
        return cli_watch_main(&o, address, fp, python);
    cli_job job = {&o.pytest_args, o.dump, NULL};
    return cli_run(&o, &job, address, fp, python);
}

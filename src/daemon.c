/* ==========================================================================
 * Daemon
 *
 * Owns: the listening socket, the client connections, the zygote, the run
 * queue and the one active run.  A single-threaded poll loop, so that
 * `status` is answered while a run or a re-collect is in progress and no
 * lock is ever needed.  Python code never runs here: a crash in a test, a
 * conftest or the interpreter costs a child process, never the daemon.
 * Calls Utilities, codec, Framing, SHA-256, Arguments, Identity, Tree.
 * ========================================================================== */

#define DMN_REQUEST_TIMEOUT 5.0     /* seconds for a request to arrive */
#define DMN_FINISH_WAIT 10.0        /* seconds the reply waits for the leader's cache update */
#ifndef DMN_COV_WAIT               /* -DDMN_COV_WAIT=3.0 to try it by hand */
#define DMN_COV_WAIT 300.0          /* ... and for its coverage combine and report */
#endif
#define DMN_PROGRESS_EVERY 0.1
#define DMN_TIMEOUT_GRACE 5.0       /* after --timeout, before SIGKILL */
#define DMN_MAX_CONNS 512
#define DMN_OUTPUT_CAP (1u << 20)   /* zygote boot output kept for clients */
#define DMN_TOP_DURATIONS 15

/* Z_SPARE: forked from the full collection ahead of an edit, waiting for
 * the files of an incremental re-collect (see dmn_spare_ensure). */
enum { Z_DOWN, Z_BOOTING, Z_READY, Z_EXITED, Z_SPARE };

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
    uint64_t gen;               /* which use of the slot: a frame's handler may free
                                   the node and a new one take its slot */
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
    bool incremental;           /* collected level: forked from the full collection
                                   (its parent) with only the changed test modules
                                   collected again and the function bodies edited in
                                   app modules swapped in */
    bool patched;               /* ... some of those in files the project level
                                   imported: its watch list speaks for that level too */
    char how[256];              /* collected level: "full (why)" or "incremental (...)" */
    char rootdir[PATH_MAX];
} dmn_zygote;

typedef struct dmn_conn dmn_conn;

/* A `pytest-fast --watch` client's subscription (see Subscribers). */
typedef struct dmn_sub {
    char *cwd;                  /* the client's directory */
    char *root;                 /* what is walked: the collection's rootdir if cwd is in it */
    tree seen;                  /* what the client last heard of */
    tree settling;              /* a newer snapshot, waiting to hold still */
    bool pending;
    double since, debounce, poll, next_scan;
    double last_scan, walk_cost;    /* when it last walked, and for how long */
} dmn_sub;

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
    bool finished, exited;
    bool wants_tty;             /* its debugger waits for the terminal */
    bool held;                  /* its ask for an item waits for a debugger to close */
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

#define DMN_OTHER_CATS 8

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
    size_t pool;                /* selected before --shard and --affected took their part */
    int64_t max_warnings;       /* pytest 9's --max-warnings, -1: none */
    const pf_value *scoped;     /* indices into zygote errors, or NULL = all */
    signed char *severity;      /* per position, -1 = no report yet */
    unsigned char *cats;        /* per position: a bit for each category it reported */
    const char **reason;        /* per position, with -r s/x/X or -v: why it skipped or xfailed */
    double *seconds;            /* per position: its reports' durations, summed */
    bool *cut;                  /* per position: a worker may start here (--dist
                                   groups stay on one worker); NULL = anywhere */
    dmn_worker *workers;
    int nworkers, maxworkers, next_wid;
    size_t done;
    int failed_reports;         /* for --maxfail, as Session counts them */
    bool stopping, cancelled;
    bool stepwise_stopped;      /* --sw stopped it: pytest's Interrupted, exit code 2 */
    int tty_owner;              /* the worker whose debugger has the terminal, -1 */
    bool tty_acked;             /* ... and the front end made way for it */
    bool finishing;             /* the leader is updating .pytest_cache */
    bool cached;                /* the leader updated .pytest_cache (the --affected record follows) */
    bool replied;               /* the client has its reply (--watch: before that update) */
    int reply_rc;               /* the exit code the reply carried */
    double finish_since;        /* since when the reply waits for that */
    int exit_rc;                /* pytest.exit() / internal error, or -1 */
    char *exit_msg;
    size_t counts[8];
    /* categories pytest does not know ("subtests passed", a plugin's "rerun"):
     * its closing line names them after the known ones, as first seen */
    char *other_cat[DMN_OTHER_CATS];
    size_t other_n[DMN_OTHER_CATS];
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
    bool coverage;              /* the workers measure coverage (pytest-cov) */
    bool cov_wait;              /* the CLI's run waits for the leader's combine */
    bool cov_fail;              /* --cov-fail-under failed the run */
    char *cov_text;             /* the coverage report for the CLI's summary */
    const pf_value *terminal_summary;  /* the conftests' pytest_terminal_summary calls, for
                                          the plugin's controller to replay (in keep) */
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
    int shard_k, shard_n;       /* 0/0: the whole selection */
    bool store_durations;
    bool full, stream, color, options_only;
    bool brief;                     /* --watch: failures and the closing line only */
    bool fresh, discard, booted;    /* --start-method fork / spawn */
    bool waited;                    /* this run waited for a collection: cold */
    dmn_sub *sub;                   /* a --watch subscription, not a run */
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
    uint64_t node_gen;          /* the last dmn_zygote.gen handed out */
    bool layers_broken;
    bool cov_relayered;         /* the last chain was rebuilt for coverage settings */
    bool warmup_tainted;        /* a project level's warm-up raised or warned: no more */
    bool incremental_off;       /* PYTEST_FAST_INCREMENTAL=0 in the last request */
    int boot_from;              /* the lowest level the boot builds, unless incremental */
    char boot_why[PF_ERRLEN];   /* why the collected level is being built in full */
    util_strv plan[3];          /* preload lists: site, project; then how pytest rewrites */
    char plan_key[65];
    bool watching;
    double watch_poll, watch_debounce, stale_since, next_poll;
    int notify_fd;              /* inotify on the current tree's directories (Linux) */
    int sub_notify_fd;          /* inotify on the subscribers' directories (Linux) */
    util_strv sub_dirs;         /* ... the directories it watches */
    int nsubs;
    char *watch_list;           /* the last recording run's data files (see tree.c) */
    pid_t notify_pid;           /* the collected zygote it was set up for */
    dmn_run *run;
    unsigned runs;
    bool stopping;
    bool stop_after_run;        /* a stop came while a replied run's leader still records */
    dmn_conn *stop_client;      /* who asked, told "bye" then (NULL: it hung up) */
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
    if (c->sub) {
        if (--dmn.nsubs == 0) {   /* the last watcher left: no more inotify for it */
            util_close(&dmn.sub_notify_fd);
            util_strv_free(&dmn.sub_dirs);
        }
        free(c->sub->cwd);
        free(c->sub->root);
        tree_free(&c->sub->seen);
        tree_free(&c->sub->settling);
        free(c->sub);
    }
    free(c);
}

static void dmn_conn_drop(dmn_conn *c)
{
    if (c == dmn.stop_client)
        dmn.stop_client = NULL;
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
static void dmn_reply_and_stop(dmn_conn *c, const char *op, const char *why);
static void dmn_prewarm(const char *who);
static bool dmn_subs_settling(void);

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

static void dmn_watch_clear(dmn_zygote *z)
{
    for (size_t i = 0; i < z->nwatch; i++)
        free(z->watch[i].path);
    free(z->watch);
    z->watch = NULL;
    z->nwatch = 0;
}

static void dmn_node_free(dmn_zygote *z)
{
    util_close(&z->fd);
    util_close(&z->out);
    pf_reader_free(&z->rd);
    pf_buf_free(&z->output);
    pf_arena_free(z->arena);
    free(z->items);
    dmn_watch_clear(z);
    dmn_ident_free(&z->id);
    memset(z, 0, sizeof *z);
    z->fd = z->out = -1;
    z->state = Z_DOWN;
}

/* A node is in use while it, or a node forked from it, serves the active
 * run, is current, is kept for a revert, or is being built. */
static bool dmn_node_in_use(const dmn_zygote *z)
{
    if (z->state == Z_SPARE)
        return dmn_node_in_use(z->parent);   /* it serves its parent's next edit */
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
        z->gen = ++dmn.node_gen;
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

/* Send parent a fork request, msg, with one end of a new socketpair: the
 * child it forks talks to us on the other.  The new node (its pid arrives
 * later), or NULL. */
static dmn_zygote *dmn_fork_child(dmn_zygote *parent, int level, const pf_value *msg)
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
    pf_buf b = {0};
    int rc = pf_encode(&b, msg) == 0 ? pf_frame_write(parent->fd, b.data, b.len, &sv[1], 1) : -1;
    pf_buf_free(&b);
    close(sv[1]);
    if (rc < 0) {
        close(sv[0]);
        dmn.level_boots[level]--;   /* never started: not a boot */
        dmn_node_free(z);
        return NULL;
    }
    util_nonblock(sv[0]);
    z->fd = sv[0];
    return z;
}

/* Ask a ready node to fork the next level. */
static dmn_zygote *dmn_fork_node(dmn_zygote *parent, int level)
{
    pf_arena *a = pf_arena_new(0);
    pf_value *msg = util_msg(a, "fork");
    util_set(a, msg, "level", pf_new_int(a, level));
    util_set(a, msg, "warmup", pf_new_bool(a, !dmn.warmup_tainted));
    util_set(a, msg, "modules", dmn_plan_value(a, level));
    util_set(a, msg, "rewrite", util_strv_value(a, &dmn.plan[2]));
    dmn_zygote *z = dmn_fork_child(parent, level, msg);
    pf_arena_free(a);
    if (!z)
        return NULL;
    dmn_plan_stamp(z);
    util_log("forking the %s zygote from the %s zygote %d", dmn_level_names[level],
             dmn_level_names[parent->level], (int)parent->pid);
    return z;
}

/* The node of `level` in z's chain, or NULL. */
static dmn_zygote *dmn_level_node(dmn_zygote *z, int level)
{
    while (z && z->level != level)
        z = z->parent;
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
    const char *how = pf_dict_str(msg, "how");
    if (how)
        snprintf(z->how, sizeof z->how, "%s", how);
    dmn_record_watch(z);
    /* An incremental re-collect says how much of it was pytest's own
     * collection hooks: the floor the bench shows beside its time. */
    const pf_value *hooks = pf_dict_get(msg, "hooks_s");
    char floor[64] = "";
    if (hooks && hooks->kind == PF_FLOAT)
        snprintf(floor, sizeof floor, "; pytest's collection hooks %.3fs", hooks->u.f);
    util_log("collected zygote ready: %zu items, %zu collection errors, %zu watched paths, %.3fs, %s%s",
             z->nitems, z->errors && pf_is_seq(z->errors) ? z->errors->u.seq.len : 0,
             z->nwatch, z->boot_wall, z->how, floor);
}

static size_t dmn_nerrors(const dmn_zygote *z)
{
    return z && z->errors && pf_is_seq(z->errors) ? z->errors->u.seq.len : 0;
}

/* Lowest stale level of z's chain (checking from the bottom), or -1.  The
 * full collection an incremental one was forked from is stale by design:
 * z's own watch list speaks for the collected level, and for the project
 * level too when z swapped in edits to files that level imported. */
static int dmn_chain_stale(dmn_zygote *z, char *why, size_t len)
{
    if (z->patched) {
        if (!dmn_stale(z, why, len))
            return -1;
        dmn_zygote *site = dmn_level_node(z, L_SITE);
        char below[PF_ERRLEN];
        /* else the project level's: it runs the code from before the swap */
        return site && dmn_stale(site, below, sizeof below) ? L_SITE : L_PROJECT;
    }
    dmn_zygote *chain[3];
    int n = 0;
    for (dmn_zygote *p = z; p && n < 3; p = p->parent)
        if (p == z || p->level != L_COLLECTED)
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
            if (b[l] && l == L_COLLECTED)
                snprintf(b[l]->how, sizeof b[l]->how, "full (%.240s)", dmn.boot_why);
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

/* The changed files since the project level `project` (NULL: it is
 * current), the full collection `base` and `cur` (an incremental one built
 * on it), when all are Python modules that an incremental re-collect may
 * import again or swap function bodies in: true with their paths in
 * `files`, and *patched when some belong to the project level; else
 * false, and why. */
static bool dmn_incremental_files(dmn_zygote *project, dmn_zygote *base, dmn_zygote *cur, util_strv *files,
                                  bool *patched, char *why, size_t len)
{
    dmn_zygote *nodes[3] = {base, cur, project};
    for (int k = 0; k < 3; k++) {
        if (!nodes[k] || (k == 1 && cur == base))
            continue;
        for (size_t i = 0; i < nodes[k]->nwatch; i++) {
            dmn_watch *w = &nodes[k]->watch[i];
            dmn_watch now = *w;
            dmn_watch_stat(&now);
            if (dmn_watch_same(w, &now))
                continue;
            const char *rel = dmn_relpath(w->path, base->id.cwd);
            if (w->dir) {
                char listing[65];
                if (now.present && w->present && dmn_listing(w->path, listing) && !strcmp(listing, w->listing))
                    continue;
                snprintf(why, len, "%s/: files added or removed", rel);
                return false;
            }
            if (!now.present || !w->present) {
                snprintf(why, len, "%s %s", rel, !now.present ? "removed" : "created");
                return false;
            }
            const char *name = strrchr(w->path, '/');
            name = name ? name + 1 : w->path;
            size_t n = strlen(name);
            if (!strcmp(name, "conftest.py") || n < 3 || strcmp(name + n - 3, ".py")) {
                snprintf(why, len, "%s changed", rel);
                return false;
            }
            bool have = false;
            for (size_t j = 0; j < files->n && !have; j++)
                have = !strcmp(files->v[j], w->path);
            if (!have)
                util_strv_push(files, w->path);
            *patched |= nodes[k] == project;
        }
    }
    if (!files->n)
        snprintf(why, len, "no module changed");
    return files->n > 0;
}

/* The full collection a collected zygote stands on: itself, or the parent
 * of an incremental re-collect. */
static dmn_zygote *dmn_full_of(dmn_zygote *z)
{
    return z && z->incremental ? z->parent : z;
}

/* The spare fork of the full collection `base` (see dmn_spare_ensure), or NULL. */
static dmn_zygote *dmn_spare_of(const dmn_zygote *base)
{
    for (int i = 0; base && i < DMN_NODES; i++)
        if (dmn.nodes[i].state == Z_SPARE && dmn.nodes[i].parent == base)
            return &dmn.nodes[i];
    return NULL;
}

/* The spare fork of the full collection `base` (see dmn_spare_ensure)
 * told to re-collect `files`: it becomes the collected level being built,
 * timed from now.  NULL when base has none, or it is gone. */
static dmn_zygote *dmn_spare_take(dmn_zygote *base, pf_arena *a, const util_strv *files)
{
    dmn_zygote *z = dmn_spare_of(base);
    if (!z)
        return NULL;
    pf_value *msg = util_msg(a, "recollect");
    util_set(a, msg, "recollect", util_strv_value(a, files));
    if (z->fd < 0 || pf_send_value(z->fd, msg) < 0) {
        dmn_node_kill(z);
        return NULL;
    }
    z->state = Z_BOOTING;
    z->boot_start = util_now();
    dmn.level_boots[L_COLLECTED]++;
    return z;
}

/* When the daemon is idle (a run ended, or a boot no client waits for),
 * have the full collection under the current one fork a spare that waits
 * for the next edit: an incremental re-collect then starts without
 * waiting for fork() and the child's after-fork work (5-6 ms of
 * make_app's 20 ms).  Not while a run or a boot waits: the fork would
 * hold up the process they fork from. */
static void dmn_spare_ensure(void)
{
    dmn_zygote *cur = dmn.cur;
    if (dmn.run || dmn.queue || dmn.booting || dmn.stopping || dmn.incremental_off || !cur ||
        cur->state != Z_READY || cur->level != L_COLLECTED)
        return;
    dmn_zygote *base = dmn_full_of(cur);
    if (!base || base->state != Z_READY || base->fd < 0 || dmn_spare_of(base))
        return;
    pf_arena *a = pf_arena_new(0);
    pf_value *msg = util_msg(a, "fork");
    util_set(a, msg, "wid", pf_new_int(a, -2));
    util_set(a, msg, "spare", pf_new_bool(a, true));
    /* the last incremental re-collect wrote the pages the next one will */
    util_set(a, msg, "pages_of", pf_new_int(a, cur->incremental && cur->pid > 0 ? cur->pid : 0));
    dmn_zygote *z = dmn_fork_child(base, L_COLLECTED, msg);
    pf_arena_free(a);
    if (!z)
        return;
    z->state = Z_SPARE;
    z->incremental = true;
    dmn.level_boots[L_COLLECTED]--;   /* a boot when it is taken */
}

/* Ask the full collection `base` to fork a child that imports `files`
 * again, or swaps their edited function bodies in, and becomes the next
 * collected zygote ("refused" if it cannot).  With `project_now` (the
 * project level's watch list as it was before the changes were looked
 * for), the child also answers for that level's files: it takes the list. */
static dmn_zygote *dmn_fork_recollect(dmn_zygote *project_now, dmn_zygote *base, const util_strv *files)
{
    pf_arena *a = pf_arena_new(0);
    dmn_zygote *z = dmn_spare_take(base, a, files);
    if (!z) {
        pf_value *msg = util_msg(a, "fork");
        util_set(a, msg, "wid", pf_new_int(a, -2));   /* its "forked" reply names a node, not a leader */
        util_set(a, msg, "recollect", util_strv_value(a, files));
        z = dmn_fork_child(base, L_COLLECTED, msg);
    }
    pf_arena_free(a);
    if (!z)
        return NULL;
    z->incremental = true;
    z->patched = project_now != NULL;
    if (project_now) {
        z->watch = project_now->watch;
        z->nwatch = project_now->nwatch;
        project_now->watch = NULL;
        project_now->nwatch = 0;
    }
    snprintf(z->how, sizeof z->how, "incremental (%zu module%s)", files->n, files->n == 1 ? "" : "s");
    util_log("re-collecting incrementally from the collected zygote %d: %zu changed module%s",
             (int)base->pid, files->n, files->n == 1 ? "" : "s");
    return z;
}

/* Only Python modules changed under the current collection (the
 * project level's too, when `from` is that level): fork the incremental
 * re-collect as the collected level being built.  Otherwise the levels
 * from `from` up are built in full, and dmn.boot_why says why. */
static void dmn_try_incremental(int from)
{
    dmn_zygote *cur = dmn.cur;
    if (dmn.incremental_off) {
        size_t n = strlen(dmn.boot_why);
        snprintf(dmn.boot_why + n, sizeof dmn.boot_why - n, "; incremental re-collect off");
        return;
    }
    if (!cur || cur->state != Z_READY || cur->level != L_COLLECTED)
        return;
    dmn_zygote *base = dmn_full_of(cur);
    if (!base || base->state != Z_READY || base->fd < 0 || dmn_ident_differs(&base->id, &dmn.boot_id))
        return;
    /* It must stand on the levels this boot reuses, and on the project
     * level that it may answer for. */
    dmn_zygote *project = from == L_PROJECT ? dmn_level_node(base, L_PROJECT) : NULL;
    if (from == L_PROJECT && (!project || project->state != Z_READY || project->fd < 0))
        return;
    for (dmn_zygote *p = base->parent; p; p = p->parent)
        if (!dmn.boot_from_layers || (dmn.bchain[p->level] != p && p != project))
            return;
    if (!base->parent && dmn.boot_from_layers)
        return;
    /* The project level's files as they are before looking for changes: an
     * edit after this is one the child may not have seen. */
    dmn_zygote before = {0};
    for (size_t i = 0; project && i < project->nwatch; i++)
        dmn_watch_add(&before, project->watch[i].path, project->watch[i].dir);
    util_strv files = {0};
    char why[PF_ERRLEN];
    bool patched = false;
    bool ok = dmn_incremental_files(project, base, cur, &files, &patched, why, sizeof why) &&
              (patched || from == L_COLLECTED);
    dmn_zygote *z = ok ? dmn_fork_recollect(patched ? &before : NULL, base, &files) : NULL;
    util_strv_free(&files);
    dmn_watch_clear(&before);
    if (!ok && from == L_COLLECTED)
        snprintf(dmn.boot_why, sizeof dmn.boot_why, "%s", why);
    if (z)
        dmn.bchain[L_COLLECTED] = z;
    if (z && project)
        dmn.bchain[L_PROJECT] = project;   /* reused after all; dropped again if z refuses */
}

/* The incremental re-collect could not splice or swap (or died): build
 * the levels in full instead (the project level too, when it changed);
 * the attempt does not count as a boot. */
static void dmn_recollect_refused(dmn_zygote *z, const char *why)
{
    util_log("incremental re-collect refused (%s): re-collecting in full", why);
    snprintf(dmn.boot_why, sizeof dmn.boot_why, "%s", why);
    dmn.level_boots[L_COLLECTED]--;
    bool building = dmn.bchain[L_COLLECTED] == z;
    if (building) {
        dmn.bchain[L_COLLECTED] = NULL;
        if (dmn.boot_from < L_COLLECTED)
            dmn.bchain[L_PROJECT] = NULL;
    }
    dmn_node_kill(z);
    if (building)
        dmn_boot_advance();
}

/* Start building a collected zygote for id, reusing the ready levels of
 * the current tree below `from`; `why` says what made the tree stale. */
static void dmn_boot_start(const dmn_ident *id, int from, const char *why)
{
    if (dmn.cur)
        dmn_purge_changed(dmn.cur);
    snprintf(dmn.boot_why, sizeof dmn.boot_why, "%s", why);
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
    dmn.boot_from = from;
    if (from >= L_PROJECT)
        dmn_try_incremental(from);
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
    if (!dmn.nsubs)
        dmn_spare_ensure();   /* a --watch client's run is on its way: after it */
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
    /* A booting collected level flushed what pytest printed before this
     * frame, into the tree's shared pipe: take it now, while it is still
     * the boot's output, not at the pipe's turn in the poll loop. */
    dmn_zygote *root = dmn_root(z);
    if (z->state == Z_BOOTING && z->level == L_COLLECTED && root->out >= 0)
        dmn_zygote_output(root);
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
        const pf_value *relayer = pf_dict_get(msg, "relayer");
        if (relayer && relayer->kind == PF_BOOL && relayer->u.b && dmn.bchain[L_COLLECTED] == z) {
            /* Its levels measured coverage otherwise than this collection
             * asks (or not at all): their import-time lines would be wrong.
             * Build the chain again with the plan this collection wrote;
             * a second time, without layers. */
            util_log("the levels below measured coverage otherwise than the collection asks: "
                     "building them again%s", dmn.cov_relayered ? " without layers" : "");
            dmn_plan_save(z);
            if (dmn.cov_relayered)
                dmn.layers_broken = true;
            dmn.cov_relayered = true;
            dmn.boot_from_layers = !dmn.layers_broken;
            dmn.bchain[0] = dmn.bchain[1] = dmn.bchain[2] = NULL;
            dmn_node_kill(z);
        } else {
            dmn.cov_relayered = false;   /* only twice in a row turns layers off */
        }
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
    if (op && !strcmp(op, "refused") && z->state == Z_BOOTING && z->incremental) {
        const char *why = pf_dict_str(msg, "why");
        dmn_recollect_refused(z, why ? why : "refused");
        pf_arena_free(a);
        return;
    }
    int64_t wid = -1;
    pf_dict_int(msg, "wid", &wid);
    if (op && !strcmp(op, "forked")) {
        if (z->level == L_COLLECTED && wid != -2) {
            if (dmn.run && dmn.run->z == z)
                dmn.run->leader_pid = (pid_t)pid;
        } else {
            /* The oldest of its children still without a pid: a parent
             * answers its fork requests in order. */
            dmn_zygote *child = NULL;
            for (int i = 0; i < DMN_NODES; i++) {
                dmn_zygote *n = &dmn.nodes[i];
                if ((n->state == Z_BOOTING || n->state == Z_SPARE) && n->parent == z && !n->pid &&
                    (!child || n->gen < child->gen))
                    child = n;
            }
            if (child)
                child->pid = (pid_t)pid;
        }
    } else if (op && !strcmp(op, "reaped")) {
        int64_t status = 0;
        pf_dict_int(msg, "status", &status);
        dmn_zygote *child = dmn_node_by_pid((pid_t)pid);
        if (child && child->parent == z)
            dmn_zygote_died(child, (int)status);
        else if (dmn.run && dmn.run->z == z && pid == dmn.run->leader_pid)
            dmn.run->leader_pid = 0;
    }
    pf_arena_free(a);
}

static void dmn_zygote_read(dmn_zygote *z)
{
    uint64_t gen = z->gen;
    for (;;) {
        int st = pf_reader_feed(&z->rd, z->fd);
        if (st == PF_READ_FRAME) {
            dmn_zygote_frame(z);
            if (z->state == Z_DOWN || z->gen != gen)
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
    /* Its last frames may end it (an incremental re-collect that refused),
     * and the boot that follows may take its slot: never go on with that. */
    uint64_t gen = z->gen;
    while (z->fd >= 0) {
        int st = pf_reader_feed(&z->rd, z->fd);
        if (st != PF_READ_FRAME) {
            util_close(&z->fd);
            break;
        }
        dmn_zygote_frame(z);
        if (z->state == Z_DOWN || z->gen != gen)
            return;
        pf_reader_reset(&z->rd);
    }
    /* Its last words are in its tree's pipe: take them while they are
     * still the boot's output. */
    dmn_zygote *root = dmn_root(z);
    if (root->out >= 0)
        dmn_zygote_output(root);
    if (z->state == Z_BOOTING && z->incremental) {
        z->pid = 0;   /* reaped: a kill now could hit a process that reuses the pid */
        dmn_recollect_refused(z, WIFSIGNALED(status) ? "the incremental re-collect was killed"
                                                     : "the incremental re-collect exited");
        return;
    }
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
    if (z->state == Z_SPARE) {
        util_log("the spare fork of the collected zygote exited; the next edit forks its re-collect");
        dmn_node_free(z);
        return;
    }
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
    for (int i = 0; i < DMN_OTHER_CATS; i++)
        free(r->other_cat[i]);
    for (int i = 0; i < r->nworkers; i++) {
        util_close(&r->workers[i].fd);
        util_close(&r->workers[i].fault);
        pf_reader_free(&r->workers[i].rd);
        pf_buf_free(&r->workers[i].faulttext);
    }
    free(r->workers);
    free(r->sel);
    free(r->severity);
    free(r->cats);
    free(r->reason);
    free(r->seconds);
    free(r->cut);
    free(r->failures);
    free(r->exit_msg);
    free(r->cov_text);
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

/* Where a thief may start in v's unclaimed segment: its middle, moved to
 * the nearest group start (a group never spans two workers); seg_hi when
 * there is none.  The victim's first unclaimed item counts only when it
 * starts a group, since the victim holds the group before it. */
static size_t dmn_steal_point(const dmn_run *r, const dmn_worker *v)
{
    size_t lo = v->seg_lo, hi = v->seg_hi;
    if (lo >= hi)
        return hi;
    size_t mid = lo + (hi - lo) / 2;
    if (!r->cut)
        return mid;
    for (size_t up = mid; up < hi; up++)
        if (r->cut[up])
            return up;
    for (size_t down = mid; down-- > lo;)
        if (r->cut[down])
            return down;
    return hi;
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
    size_t mid = 0, best = 0;
    for (int i = 0; i < r->nworkers; i++) {
        dmn_worker *v = &r->workers[i];
        if (v->npending && !v->exited) {
            w->npending = 0;
            return (long)v->pending[--v->npending];
        }
        size_t at = dmn_steal_point(r, v);
        if (at < v->seg_hi && v->seg_hi - at > best) {
            victim = v;
            mid = at;
            best = v->seg_hi - at;
        }
    }
    if (!victim)
        return -1;
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

/* --durations-min, or every phase at -vv, as pytest's summary lists them. */
static double dmn_durations_min(const dmn_run *r)
{
    const dmn_conn *c = r->client;
    return !c ? 0.005 : c->split.verbosity >= 2 ? 0 : c->split.durations_min;
}

static void dmn_count_report(dmn_run *r, size_t pos, const char *when, const char *outcome,
                             const char *category, double duration, const char *text,
                             const pf_value *sections)
{
    int cat = dmn_category(category);
    if (cat >= 0) {
        r->counts[cat]++;
        r->cats[pos] |= (unsigned char)(1u << cat);
        if (cat > r->severity[pos])
            r->severity[pos] = (signed char)cat;
    } else {
        if (r->severity[pos] < 0 && outcome && !strcmp(outcome, "passed"))
            r->severity[pos] = 0;
        for (int i = 0; category && *category && i < DMN_OTHER_CATS; i++) {
            if (!r->other_cat[i])
                r->other_cat[i] = util_strdup(category);
            if (!strcmp(r->other_cat[i], category)) {
                r->other_n[i]++;
                break;
            }
        }
    }
    if (outcome && !strcmp(outcome, "failed")) {
        if (r->nfailures == r->capfailures) {
            r->capfailures = r->capfailures ? r->capfailures * 2 : 16;
            r->failures = util_realloc(r->failures, r->capfailures * sizeof *r->failures);
        }
        r->failures[r->nfailures++] = (dmn_failure){pos, when, category ? category : "failed",
                                                    text, sections};
    }
    if (duration >= dmn_durations_min(r) && !isnan(duration)) {
        /* a static name: the report's frame need not be kept for it */
        when = !strcmp(when, "setup") ? "setup" : !strcmp(when, "call") ? "call"
               : !strcmp(when, "teardown") ? "teardown" : "?";
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
    if (r->coverage)
        pf_buf_printf(&text, "\n\ncoverage: the lines this test executed are not in the data "
                             "(the worker's other tests are)");
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
    int stepwise = r->client ? r->client->split.stepwise : 0;
    if (maxfail > 0 && r->failed_reports >= maxfail && !r->stopping) {
        r->stopping = true;
        if (!r->exit_msg)
            r->exit_msg = util_fmt("stopping after %d failure%s", r->failed_reports,
                                   r->failed_reports == 1 ? "" : "s");
    } else if (stepwise > 0 && r->failed_reports >= stepwise && !r->stopping) {
        /* pytest's StepwisePlugin sets session.shouldstop: Interrupted */
        r->stopping = r->stepwise_stopped = true;
        if (!r->exit_msg)
            r->exit_msg = util_strdup("Interrupted: Test failed, continuing from this test next run.");
    }
}

/* A debugger (breakpoint(), --pdb, --trace) has the client's terminal: the
 * other workers get no new item until it closes, so their output stays off
 * the terminal (their running test goes on), and a second debugger waits. */
static bool dmn_tty_busy(const dmn_run *r, const dmn_worker *w)
{
    return r->tty_owner >= 0 && &r->workers[r->tty_owner] != w;
}

static void dmn_tell_debugger(dmn_run *r, bool open)
{
    if (!r->client)
        return;
    pf_arena *a = pf_arena_new(0);
    pf_value *d = util_msg(a, "debugger");
    util_set(a, d, "open", pf_new_bool(a, open));
    dmn_send(r->client, d);
    pf_arena_free(a);
}

/* A worker broke the protocol: it may wait for a reply that never comes
 * (and its run with it), so end it.  Before the leader has said its pid
 * (the "forked" frame), closing its socket does: its next read sees EOF. */
static void dmn_worker_stop(dmn_worker *w)
{
    if (w->pid > 0)
        kill(w->pid, SIGKILL);
    else
        util_close(&w->fd);
}

static void dmn_worker_reply(dmn_worker *w, const pf_value *reply)
{
    if (reply && w->fd >= 0 && pf_send_value(w->fd, reply) < 0)
        util_log("worker gw%d: cannot send: %s", w->wid, strerror(errno));
}

static bool dmn_worker_claim(dmn_run *r, dmn_worker *w, pf_arena *a, pf_value **reply);

/* The front end has put its own output aside (the CLI's progress line,
 * the plugin's reports): the debugger may write now.  Granting before
 * this let a progress frame already on its way land after pdb's prompt. */
static void dmn_tty_acked(dmn_run *r)
{
    if (r->tty_owner < 0 || r->tty_acked)
        return;
    r->tty_acked = true;
    pf_arena *a = pf_arena_new(0);
    dmn_worker_reply(&r->workers[r->tty_owner], pf_new_bool(a, true));
    pf_arena_free(a);
}

static void dmn_tty_grant(dmn_run *r, int wi)
{
    r->tty_owner = wi;
    r->tty_acked = false;
    r->workers[wi].wants_tty = false;
    dmn_tell_debugger(r, true);
    if (!r->client || r->client->fd < 0)
        dmn_tty_acked(r);   /* nobody to wait for */
}

/* Its debugger closed (or its test ended, or it died): the next waiting
 * debugger gets the terminal, or the held workers their next item. */
static void dmn_tty_release(dmn_run *r, dmn_worker *w)
{
    if (r->tty_owner < 0 || &r->workers[r->tty_owner] != w)
        return;
    r->tty_owner = -1;
    w->item_start = util_now();   /* time in the debugger is not the test's */
    dmn_tell_debugger(r, false);
    for (int i = 0; i < r->nworkers; i++)
        if (r->workers[i].wants_tty && !r->workers[i].exited) {
            dmn_tty_grant(r, i);
            return;
        }
    for (int i = 0; i < r->nworkers; i++) {
        dmn_worker *v = &r->workers[i];
        if (!v->held)
            continue;
        v->held = false;
        v->item_start = util_now();
        if (v->exited)
            continue;
        pf_arena *a = pf_arena_new(0);
        pf_value *reply = NULL;
        dmn_worker_claim(r, v, a, &reply);
        dmn_worker_reply(v, reply);
        pf_arena_free(a);
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
        util_log("worker gw%d reported an item it does not hold; stopping it", w->wid);
        dmn_worker_stop(w);
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
        int cat = dmn_category(category);
        if (r->reason && !r->reason[pos] && cat >= 1 && cat <= 3) {
            const char *why = cat == 1 ? text : dmn_str_at(t, 6);   /* skip's longrepr, wasxfail */
            r->reason[pos] = pf_new_cstr(r->keep, why ? why : "")->u.s.ptr;
        }
        if (duration > 0 && !isnan(duration))
            r->seconds[pos] += duration;
        if (strcmp(outcome, "passed") || !strcmp(when, "call")) {
            pf_value *lf = pf_new_container(r->keep, PF_TUPLE);
            pf_append(r->keep, lf, pf_new_cstr(r->keep, it->nodeid));
            pf_append(r->keep, lf, pf_new_cstr(r->keep, when));
            pf_append(r->keep, lf, pf_new_cstr(r->keep, outcome));
            pf_append(r->keep, r->lf, lf);
        }
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
    dmn_tty_release(r, w);   /* a debugger left open (stepped out of the test) ends with it */
    if (want && dmn_tty_busy(r, w))
        w->held = true;
    else if (want)
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
        dmn_worker_stop(w);
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
        if (dmn_tty_busy(r, w))
            w->held = true;
        else
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
        dmn_tty_release(r, w);
    } else if (!strcmp(op, "p") && v->u.seq.len == 2 && v->u.seq.items[1]->kind == PF_BOOL) {
        /* ("p", True): its debugger asks for the terminal (the reply grants
         * it); ("p", False): the debugger closed. */
        if (!v->u.seq.items[1]->u.b)
            dmn_tty_release(r, w);
        else if (dmn_tty_busy(r, w))
            w->wants_tty = true;
        else
            dmn_tty_grant(r, (int)(w - r->workers));
    } else if (!strcmp(op, "f")) {
        w->finished = true;
        dmn_tty_release(r, w);
    }
    dmn_worker_reply(w, reply);
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
    w->wants_tty = false;
    util_close(&w->fd);
    util_close(&w->fault);
    dmn_tty_release(r, w);
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
    for (int i = 0; i < DMN_OTHER_CATS && r->other_cat[i]; i++) {
        pf_buf_printf(b, "%s%zu %s", any ? ", " : "", r->other_n[i], r->other_cat[i]);
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

/* pytest -v's words for the outcome categories, in dmn_categories' order */
static const char *const dmn_words[] = {"PASSED", "SKIPPED", "XFAIL", "XPASS", "FAILED", "ERROR"};

static void dmn_short_line(pf_buf *b, bool *head, const char *chars, int cat, const char *id,
                           const char *why)
{
    if (!*head)
        pf_buf_printf(b, "  SHORT SUMMARY (-r %s):\n", chars);
    *head = true;
    pf_buf_printf(b, "    %s %s%s%s\n", dmn_words[cat], id, why && *why ? " - " : "", why ? why : "");
}

/* -r: per chosen category, in the order of its letters, what reported it:
 * the collection's errors and skips first, then the tests in selection
 * order, each on its own line (a skip's or xfail's reason after " - "), as
 * pytest's short summary with --no-fold-skipped. */
static void dmn_short_summary(pf_buf *b, dmn_run *r, const char *chars)
{
    static const char letters[] = "psxXfE";   /* dmn_categories' order */
    bool head = false;
    for (const char *ch = chars; *ch; ch++) {
        int cat = (int)(strchr(letters, *ch) - letters);
        const pf_value *list = cat == 5 ? r->z->errors : cat == 1 ? r->z->skips : NULL;
        size_t base = cat == 1 ? dmn_nerrors(r->z) : 0;
        for (size_t j = 0; list && pf_is_seq(list) && j < list->u.seq.len; j++) {
            const pf_value *e = list->u.seq.items[j];
            if (dmn_error_in_scope(r, base + j) && dmn_str_at(e, 0))
                dmn_short_line(b, &head, chars, cat, dmn_str_at(e, 0), cat == 1 ? dmn_str_at(e, 2) : NULL);
        }
        for (size_t pos = 0; pos < r->nsel; pos++)
            if (r->cats[pos] & (1u << cat))
                dmn_short_line(b, &head, chars, cat, r->z->items[r->sel[pos]].nodeid,
                               r->reason && cat >= 1 && cat <= 3 ? r->reason[pos] : NULL);
    }
}

static char *dmn_render(dmn_run *r, int rc)
{
    dmn_conn *c = r->client;
    pf_buf b = {0};
    double wall = r->end - r->start;
    double runwall = r->ready_at ? r->end - r->ready_at : 0;
    double warmup = r->ready_at ? r->ready_at - r->start : wall;
    size_t nerr = dmn_scoped_errors(r);
    /* -q and --no-header drop the timing box; --no-summary the lists */
    bool header = !c->brief && !c->split.no_header && c->split.verbosity >= 0;
    bool lists = !c->split.no_summary;
    const char *capture = c->split.show_capture;
    for (size_t pos = 0; c->split.verbosity > 0 && pos < r->nsel; pos++) {
        /* -v: each test's outcome in selection order, as pytest -v's lines */
        int cat = r->severity[pos];
        const char *why = r->reason && cat >= 1 && cat <= 3 ? r->reason[pos] : NULL;
        if (why && (!strncmp(why, "Skipped: ", 9) || !strncmp(why, "reason: ", 8)))
            why = strchr(why, ' ') + 1;
        else if (why && !strcmp(why, "Skipped"))
            why = NULL;
        if (cat >= 0)
            pf_buf_printf(&b, "%s %s%s%s%s\n", r->z->items[r->sel[pos]].nodeid, dmn_words[cat],
                          why && *why ? " (" : "", why ? why : "", why && *why ? ")" : "");
    }
    if (header) {
        pf_buf_printf(&b, "\n%s\n  FORKSERVER DAEMON  —  %dw  —  run #%u (%s)\n%s\n", dmn_rule,
                      r->nworkers, dmn.runs, c->waited ? "cold" : "warm", dmn_rule);
        pf_buf_printf(&b, "  results : ");
        dmn_stats_line(&b, r, nerr, wall);
        pf_buf_printf(&b, "  (n=%zu/%zu)\n", r->done, r->nsel);
    }
    if (nerr && lists) {
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
    double busy = 0, maxw = 0, minw = 0;
    for (int i = 0; i < r->nworkers; i++) {
        dmn_worker *w = &r->workers[i];
        double ww = w->first_ask ? r->end - w->first_ask : 0;
        busy += w->busy;
        maxw = ww > maxw ? ww : maxw;
        minw = (i == 0 || ww < minw) ? ww : minw;
    }
    if (header) {
        pf_buf_printf(&b, "  warmup  : %6.2fs   (%s)\n", warmup,
                      c->waited ? "waited for a collection, then fork" : "fork; the collection was warm");
        pf_buf_printf(&b, "  RUN     : %6.2fs   ← wall\n", runwall);
        pf_buf_printf(&b, "  par.    : %.2fx of %d   (run-wall max=%.2f min=%.2f)\n",
                      runwall > 0 ? busy / runwall : 0, r->nworkers, maxw, minw);
        pf_buf_printf(&b, "  bus     : %zu round-trips, %.0fKB rx\n", r->round_trips, (double)r->rx / 1024);
    }
    size_t nfail = 0;
    for (size_t i = 0; i < r->nfailures; i++)
        nfail += dmn_category(r->failures[i].category) >= 4;
    if (nfail && lists) {
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
                /* --show-capture: as pytest's, a part of the section's name */
                if (dmn_str_at(sec, 0) && dmn_str_at(sec, 1) && strcmp(capture, "no") &&
                    (!strcmp(capture, "all") || strstr(dmn_str_at(sec, 0), capture))) {
                    pf_buf_printf(&b, "      ----- %s -----\n", dmn_str_at(sec, 0));
                    dmn_indent(&b, dmn_str_at(sec, 1), "      ");
                }
            }
        }
    }
    if (r->counts[3] && lists) {
        pf_buf_printf(&b, "  XPASS (%zu) — stale xfail entries (now pass, drop them):\n", r->counts[3]);
        for (size_t pos = 0; pos < r->nsel; pos++)
            if (r->severity[pos] == 3)
                pf_buf_printf(&b, "    ? %s\n", r->z->items[r->sel[pos]].nodeid);
    }
    size_t ntop = c->split.durations > 0 && (size_t)c->split.durations < r->ntop ? (size_t)c->split.durations
                                                                                  : r->ntop;
    if ((c->full || c->split.durations >= 0) && ntop && lists) {
        pf_buf_printf(&b, "  DURATIONS (top %zu, ≥%gms — per phase):\n", ntop, dmn_durations_min(r) * 1000);
        for (size_t i = 0; i < ntop; i++)
            pf_buf_printf(&b, "    %8.3fs  %-9s%s\n", r->top[i].seconds, r->top[i].when,
                          r->z->items[r->sel[r->top[i].pos]].nodeid);
    }
    if (lists)
        dmn_short_summary(&b, r, c->split.report_chars);
    if (r->exit_msg)
        pf_buf_printf(&b, "  !!!!!!!!!! %s !!!!!!!!!!\n", r->exit_msg);
    if (nerr && !c->split.continue_on_errors)
        pf_buf_printf(&b, "  Interrupted: %zu error%s during collection\n", nerr, nerr == 1 ? "" : "s");
    if (rc == 6)
        pf_buf_printf(&b, "  Tests pass, but maximum allowed warnings exceeded: %zu > %lld\n", r->warnings,
                      (long long)r->max_warnings);
    if (header)
        pf_buf_printf(&b, "%s\n", dmn_rule);
    bool colored = c->split.color >= 0 ? c->split.color : c->color;   /* --color, else the terminal */
    const char *color = !colored ? "" : rc == 0 || rc == 5 ? "\033[32m" : "\033[31m";
    pf_buf_printf(&b, "%s= ", color);
    dmn_stats_line(&b, r, nerr, wall);
    pf_buf_printf(&b, " =%s\n", colored ? "\033[0m" : "");
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

/* pytest 9's --max-warnings (or ini max_warnings), as the leader read it. */
static bool dmn_over_max_warnings(const dmn_run *r)
{
    return r->max_warnings >= 0 && r->warnings > (size_t)r->max_warnings;
}

static int dmn_exit_code(dmn_run *r)
{
    if (r->cancelled)
        return 2;
    if (r->exit_rc >= 0)
        return r->exit_rc;
    if (r->stepwise_stopped)
        return 2;
    size_t nerr = dmn_scoped_errors(r);
    dmn_conn *c = r->client;
    if (nerr && !c->split.continue_on_errors)
        return 2;
    for (size_t pos = 0; pos < r->nsel; pos++)
        if (r->severity[pos] >= 4)
            return 1;
    if (nerr)
        return 1;
    /* pytest's "no tests ran"; but a shard that got none of a non-empty
     * selection, or --affected with nothing to re-run, is good news */
    if (r->nsel == 0 && !c->split.affected && !(c->shard_n > 1 && r->pool > 0))
        return 5;
    if (dmn_over_max_warnings(r))
        return 6;   /* pytest 9's MAX_WARNINGS_ERROR: only when all else passed */
    return 0;
}

/* What pytest-cov does at the end of a run with this outcome: "ok" or
 * "failed" (--no-cov-on-fail) to combine and report, NULL when the test
 * loop did not end normally (-x, pytest.exit, an interrupting collection
 * error: pytest-cov's wrapper sees the exception and reports nothing). */
static const char *dmn_cov_mode(const dmn_run *r, int rc)
{
    if (r->cancelled || r->exit_rc >= 0 || (r->stopping && r->exit_msg))
        return NULL;
    if (dmn_scoped_errors(r) && !(r->client && r->client->split.continue_on_errors))
        return NULL;
    return rc == 1 ? "failed" : "ok";
}

/* Tell the leader how the run went so it can update .pytest_cache: the
 * durations and the --affected record always; lastfailed for the CLI only
 * (under `pytest --fast` the controller's own plugins do that); in a CLI
 * coverage run, combine and report too: the run then waits for its
 * "coverage" frame.  Returns whether it waits.  The leader exits when it
 * is done. */
static bool dmn_finish_leader(dmn_run *r, int rc)
{
    if (r->leader_fd < 0)
        return false;
    pf_arena *a = pf_arena_new(0);
    pf_value *msg = util_msg(a, "finish");
    /* Every run records what its tests took (for --shard), under the
     * plugin too, whose controller has no such record. */
    pf_value *durations = pf_new_container(a, PF_DICT);
    for (size_t pos = 0; r->seconds && pos < r->nsel; pos++)
        if (r->severity[pos] >= 0)
            util_set(a, durations, r->z->items[r->sel[pos]].nodeid, pf_new_float(a, r->seconds[pos]));
    util_set(a, msg, "durations", durations);
    bool lastfailed = !r->client || !r->client->stream;
    util_set(a, msg, "lastfailed", pf_new_bool(a, lastfailed));
    util_set(a, msg, "reports", r->lf);   /* --affected records failures under the plugin too */
    util_set(a, msg, "rc", pf_new_int(a, rc));
    if (lastfailed) {
        pf_value *errs = pf_new_container(a, PF_LIST);
        for (size_t i = 0; i < dmn_nerrors(r->z); i++)
            if (dmn_error_in_scope(r, i))
                pf_append(a, errs, pf_new_cstr(a, dmn_str_at(r->z->errors->u.seq.items[i], 0)));
        util_set(a, msg, "collect_errors", errs);
    }
    bool wait = false;
    if (r->coverage && r->client && !r->client->stream) {
        const char *mode = dmn_cov_mode(r, rc);
        util_set(a, msg, "coverage", mode ? pf_new_cstr(a, mode) : pf_new_bool(a, false));
        wait = true;
    }
    if (pf_send_value(r->leader_fd, msg) < 0) {
        util_close(&r->leader_fd);
        wait = false;
    }
    pf_arena_free(a);
    return wait;
}

/* The CLI's summary with the coverage report before its closing line, where
 * pytest-cov's terminal summary is in pytest's output. */
static char *dmn_with_coverage(char *summary, const char *cov)
{
    if (!cov || !*cov)
        return summary;
    size_t len = strlen(summary);
    size_t cut = len && summary[len - 1] == '\n' ? len - 1 : len;
    while (cut > 0 && summary[cut - 1] != '\n')
        cut--;
    char *out = util_fmt("%.*s%s%s%s", (int)cut, summary, cov,
                         cov[strlen(cov) - 1] == '\n' ? "" : "\n", summary + cut);
    free(summary);
    return out;
}

/* The client's reply, once: the --dump file, then the summary (CLI) or the
 * "done" frame (plugin).  Returns the exit code it carried. */
static int dmn_run_reply(dmn_run *r)
{
    dmn_conn *c = r->client;
    if (r->replied || !c)
        return r->replied ? r->reply_rc : dmn_exit_code(r);
    int rc = dmn_exit_code(r);
    if (r->cov_fail && (rc == 0 || rc == 5))
        rc = 1;       /* pytest-cov counts it as a failed test */
    char err[PF_ERRLEN] = "";
    if (c->dump && dmn_write_dump(r, c->dump, err, sizeof err) < 0)
        rc = rc ? rc : 1;
    char *summary = dmn_with_coverage(dmn_render(r, rc), r->cov_text);
    if (c->stream) {
        pf_arena *a = pf_arena_new(0);
        pf_value *d = util_msg(a, "done");
        util_set(a, d, "rc", pf_new_int(a, rc));
        util_set(a, d, "exit_msg", r->exit_msg ? pf_new_cstr(a, r->exit_msg) : pf_new_none(a));
        util_set(a, d, "error", pf_new_cstr(a, err));
        if (r->terminal_summary)
            util_set(a, d, "terminal_summary", (pf_value *)r->terminal_summary);
        dmn_send(c, d);
        pf_arena_free(a);
    } else {
        dmn_send_done(c, rc, summary, err);
    }
    free(summary);
    r->replied = true;
    r->reply_rc = rc;
    /* Nothing is written for the client any more: a pipe its output goes
     * to (`pytest-fast | tee`) ends with it, not once the leader has
     * written the --affected record. */
    for (int i = 0; i < 3; i++)
        util_close(&c->stdio[i]);
    return rc;
}

/* The run is over: the leader updates the cache, then the client gets its
 * reply, so that what it runs next (`pytest --lf`, the next shard) reads
 * the update; the leader's --affected record comes after the reply, as
 * only this daemon's runs read it, and the next starts when the leader is
 * gone.  Under --watch the reply goes first: what that client runs next
 * comes through this daemon too.  Called again when the leader has said
 * "cached" or exited (its EOF), or from the loop until DMN_FINISH_WAIT. */
static void dmn_run_end(dmn_run *r)
{
    if (!r->finishing) {
        r->finishing = true;
        r->end = r->finish_since = util_now();
        r->cov_wait = dmn_finish_leader(r, dmn_exit_code(r));
    }
    if (r->cov_wait && util_now() - r->finish_since < DMN_COV_WAIT)
        return;   /* the leader's "coverage" frame (or its death) comes back here */
    if (r->cov_wait) {
        /* A combine stuck for good (a lock, a plugin) must not hang the
         * client: it gets its reply, and the run fails, as if the leader died. */
        util_log("the run leader did not combine the coverage data within %.0fs; killing it",
                 DMN_COV_WAIT);
        if (r->leader_pid > 0)
            kill(-r->leader_pid, SIGKILL);
        util_close(&r->leader_fd);
        r->cov_wait = false;
        r->cov_fail = true;
        r->cov_text = util_fmt("pytest-fast: the run leader did not combine the coverage data "
                               "within %.0fs (see the daemon log): no coverage report\n",
                               DMN_COV_WAIT);
    }
    if (r->leader_fd >= 0 && util_now() - r->finish_since < DMN_FINISH_WAIT) {
        if (r->client && (r->client->brief || r->cached))
            dmn_run_reply(r);
        return;
    }
    if (r->leader_fd >= 0 && r->leader_pid > 0) {
        util_log("the run leader did not update the cache within %.0fs; killing it", DMN_FINISH_WAIT);
        kill(-r->leader_pid, SIGKILL);
    }
    util_close(&r->leader_fd);
    dmn_conn *c = r->client;
    int rc = dmn_run_reply(r);
    bool discard = c && c->discard;
    if (c)
        dmn_conn_drop(c);
    util_log("run #%u done: rc %d, %zu/%zu items, %.2fs", dmn.runs, rc, r->done, r->nsel,
             r->end - r->start);
    dmn_run_free(r);
    dmn.run = NULL;
    dmn.last_activity = dmn.last_run = util_now();
    if (dmn.stop_after_run) {
        dmn_conn *asked = dmn.stop_client;
        dmn.stop_client = NULL;
        if (asked)
            dmn_reply_and_stop(asked, "bye", "stop requested");
        else
            dmn.stopping = true;
        return;
    }
    if (discard)
    {
        dmn.cur = dmn.prev = NULL;   /* --start-method spawn: nothing stays warm */
        dmn_node_gc();
    }
    dmn_run_next();
    /* A save that a --watch client's walk saw while this run's leader was
     * finishing could not start its re-collect then: it starts now, and
     * overlaps the rest of the debounce. */
    if (dmn_subs_settling())
        dmn_prewarm("--watch");
    dmn_spare_ensure();
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
    int64_t pool = 0;
    pf_dict_int(msg, "pool", &pool);
    r->max_warnings = -1;
    pf_dict_int(msg, "max_warnings", &r->max_warnings);
    const char *watch_list = pf_dict_str(msg, "watch_list");
    if (watch_list && watch_list[0] == '/') {
        free(dmn.watch_list);
        dmn.watch_list = util_strdup(watch_list);
    }
    r->pool = pool > 0 ? (size_t)pool : 0;
    const pf_value *scoped = pf_dict_get(msg, "scoped_errors");
    r->scoped = scoped && pf_is_seq(scoped) ? scoped : NULL;
    r->nsel = idx && pf_is_seq(idx) ? idx->u.seq.len : 0;
    r->sel = util_alloc((r->nsel ? r->nsel : 1) * sizeof *r->sel);
    r->severity = util_alloc(r->nsel ? r->nsel : 1);
    memset(r->severity, -1, r->nsel ? r->nsel : 1);
    r->cats = util_alloc(r->nsel ? r->nsel : 1);
    if (c && !c->stream && (strpbrk(c->split.report_chars, "sxX") || c->split.verbosity > 0))
        r->reason = util_alloc((r->nsel ? r->nsel : 1) * sizeof *r->reason);
    r->seconds = util_alloc((r->nsel ? r->nsel : 1) * sizeof *r->seconds);
    size_t n = 0;
    for (size_t i = 0; i < r->nsel; i++) {
        const pf_value *v = idx->u.seq.items[i];
        if (v->kind == PF_INT && v->u.i >= 0 && (size_t)v->u.i < r->z->nitems)
            r->sel[n++] = (size_t)v->u.i;
    }
    r->nsel = n;
    const pf_value *starts = pf_dict_get(msg, "group_starts");
    if (starts && pf_is_seq(starts) && n) {
        r->cut = util_alloc(n * sizeof *r->cut);
        r->cut[0] = true;
        for (size_t i = 0; i < starts->u.seq.len; i++) {
            const pf_value *v = starts->u.seq.items[i];
            if (v->kind == PF_INT && v->u.i >= 0 && (size_t)v->u.i < n)
                r->cut[v->u.i] = true;
        }
    }
    r->selected = true;
    const pf_value *cov = pf_dict_get(msg, "coverage");
    r->coverage = cov && cov->kind == PF_BOOL && cov->u.b;
    size_t nerr = dmn_scoped_errors(r);
    const char *text = pf_dict_str(msg, "text");
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
        util_set(a, d, "pool", pf_new_int(a, (int64_t)r->pool));
        const pf_value *sw = pf_dict_get(msg, "stepwise");
        if (sw && sw->kind == PF_DICT)
            util_set(a, d, "stepwise", (pf_value *)sw);
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
        if (text)
            util_set(a, d, "text", pf_new_cstr(a, text));
        dmn_send(c, d);
        pf_arena_free(a);
    }
    r->warnings += r->z->nwarnings;
    r->counts[1] += dmn_scoped_skips(r, NULL, NULL);   /* pytest counts them as skipped */
    if (c && c->split.collect_only && !c->stream) {
        pf_buf b = {0};
        if (text)   /* pytest's own listing (the tree), its fixtures, its cache */
            pf_buf_put(&b, text, strlen(text));
        else
            for (size_t i = 0; i < r->nsel; i++)
                pf_buf_printf(&b, "%s\n", r->z->items[r->sel[i]].nodeid);
        for (size_t i = 0; i < dmn_nerrors(r->z); i++)
            if (dmn_error_in_scope(r, i))
                pf_buf_printf(&b, "ERROR %s\n", dmn_str_at(r->z->errors->u.seq.items[i], 0));
        if (c->split.info && nerr)   /* as pytest's: its errors, else no tests ran; exit code 0 */
            pf_buf_printf(&b, "\n%zu error%s", nerr, nerr == 1 ? "" : "s");
        else if (c->split.info)
            pf_buf_printf(&b, "\nno tests ran");
        else {
            pf_buf_printf(&b, "\n%zu test%s collected", r->nsel, r->nsel == 1 ? "" : "s");
            if (r->deselected)
                pf_buf_printf(&b, ", %zu deselected", r->deselected);
            if (nerr)
                pf_buf_printf(&b, ", %zu error%s", nerr, nerr == 1 ? "" : "s");
        }
        pf_buf_printf(&b, " in %.2fs\n", util_now() - r->start);
        pf_buf_put(&b, "", 1);
        int rc = c->split.info ? 0 : nerr ? 2 : r->nsel ? 0 : 5;
        r->coverage = false;   /* no coverage report for the lean --collect-only listing */
        dmn_finish_leader(r, rc);
        util_close(&r->leader_fd);
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
    int nw = c->workers < 1 || c->split.debug ? 1 : c->workers;
    if (c->split.stepwise)
        nw = 1;   /* --sw continues after the first failure in order: one worker runs the order */
    if ((size_t)nw > r->nsel)
        nw = (int)r->nsel;
    size_t lo = 0;
    for (int i = 0; i < nw; i++) {
        size_t hi = r->nsel * (size_t)(i + 1) / (size_t)nw;
        while (r->cut && hi < r->nsel && !r->cut[hi])
            hi++;   /* a --dist group stays on one worker */
        if (hi < lo)
            hi = lo;
        dmn_add_worker(r, lo, hi);
        lo = hi;
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
    if (!strcmp(op, "coverage") && r->cov_wait) {
        const char *text = pf_dict_str(msg, "text");
        const pf_value *fail = pf_dict_get(msg, "fail");
        r->cov_fail = fail && fail->kind == PF_BOOL && fail->u.b;
        r->cov_text = util_strdup(text ? text : "");
        r->cov_wait = false;
        r->finish_since = util_now();   /* then the cache update, bounded as usual */
        dmn_run_end(r);
        return;
    }
    if (!strcmp(op, "terminal_summary")) {
        r->terminal_summary = pf_dict_get(msg, "calls");   /* decoded into r->keep */
        return;
    }
    if (!strcmp(op, "cached")) {
        r->cached = true;    /* the client may go on; the leader still records */
        if (r->finishing && !r->cov_wait)
            dmn_run_reply(r);
        return;
    }
    if (!strcmp(op, "log")) {
        const char *text = pf_dict_str(msg, "text");
        util_log("run #%u: %s", dmn.runs, text ? text : "?");
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
    dmn_boot_start(&want, from, reason ? reason : "first collection");
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
        r->tty_owner = -1;
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
        util_set(a, msg, "stream", pf_new_bool(a, c->stream));
        util_set(a, msg, "collect_only", pf_new_bool(a, c->split.collect_only));
        util_set(a, msg, "runid", pf_new_cstr(a, r->runid));
        if (c->shard_n) {
            pf_value *shard = pf_new_container(a, PF_TUPLE);
            pf_append(a, shard, pf_new_int(a, c->shard_k));
            pf_append(a, shard, pf_new_int(a, c->shard_n));
            util_set(a, msg, "shard", shard);
        }
        util_set(a, msg, "store_durations", pf_new_bool(a, c->store_durations));
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

/* ------------------------------------------------------------ subscribers */

/* `pytest-fast --watch` keeps a connection subscribed: it hears "changed"
 * each time the project's files (tree.c) have changed and then held still
 * for the debounce time, during a run too, so that a save can cancel the
 * run in flight.  inotify (Linux) on every directory walked says when to
 * look; the walk is the judge, and a slow poll covers what inotify misses. */

#define DMN_SUB_SAFETY_POLL 5.0   /* seconds between walks while inotify watches */

/* The collection's rootdir when the client's directory is inside it (an
 * edit in the app beside a tests/ directory counts), else that directory. */
static const char *dmn_sub_root(const dmn_sub *s)
{
    const char *rootdir = dmn.cur ? dmn.cur->rootdir : "";
    size_t n = strlen(rootdir);
    if (n && !strncmp(s->cwd, rootdir, n) && (s->cwd[n] == '/' || s->cwd[n] == 0))
        return rootdir;
    return s->cwd;
}

/* inotify on the union of the subscribers' directories, re-made when that
 * set changes (a directory was created or removed). */
static void dmn_sub_notify_sync(void)
{
#ifdef __linux__
    util_strv dirs = {0};
    for (int i = 0; i < dmn.nconns; i++)
        for (size_t k = 0; dmn.conns[i]->sub && k < dmn.conns[i]->sub->seen.dirs.n; k++)
            util_strv_push(&dirs, dmn.conns[i]->sub->seen.dirs.v[k]);
    if (dirs.n)
        qsort(dirs.v, dirs.n, sizeof *dirs.v, util_cmp_str);
    if (util_strv_equal(&dirs, &dmn.sub_dirs)) {   /* also after a failure: no retry per walk */
        util_strv_free(&dirs);
        return;
    }
    util_close(&dmn.sub_notify_fd);
    util_strv_free(&dmn.sub_dirs);
    dmn.sub_dirs = dirs;
    if (!dirs.n || (dmn.sub_notify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0)
        return;
    for (size_t i = 0; i < dirs.n; i++)
        if (inotify_add_watch(dmn.sub_notify_fd, dirs.v[i],
                              IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE |
                                  IN_MOVED_FROM | IN_MOVED_TO) < 0) {
            /* Past the watch limit: the poll alone does the work. */
            util_log("--watch: inotify cannot watch %s (%s); polling", dirs.v[i], strerror(errno));
            util_close(&dmn.sub_notify_fd);
            return;
        }
#endif
}

static void dmn_sub_send_changed(dmn_conn *c, const tree *now)
{
    dmn_sub *s = c->sub;
    util_strv files = {0};
    size_t count = tree_diff(&s->seen, now, s->root, &files, 20);
    pf_arena *a = pf_arena_new(0);
    pf_value *d = util_msg(a, "changed");
    util_set(a, d, "files", util_strv_value(a, &files));
    util_set(a, d, "count", pf_new_int(a, (int64_t)count));
    /* All at once or not at all: a client that stopped reading (stopped
     * with Ctrl-Z, its buffer full) must not block the daemon.  It loses
     * the subscription, and subscribes again when it reads the EOF. */
    pf_buf b = {0};
    if (pf_encode(&b, d) == 0 && b.len <= PF_MAX_FRAME) {
        uint8_t hdr[PF_FRAME_HEADER] = {(uint8_t)(b.len >> 24), (uint8_t)(b.len >> 16),
                                        (uint8_t)(b.len >> 8), (uint8_t)b.len};
        struct iovec iov[2] = {{hdr, sizeof hdr}, {b.data, b.len}};
        struct msghdr m = {0};
        m.msg_iov = iov;
        m.msg_iovlen = 2;
        if (sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)(sizeof hdr + b.len)) {
            util_log("--watch: a client does not read its changes; dropping its subscription");
            util_close(&c->fd);
        }
    }
    pf_buf_free(&b);
    pf_arena_free(a);
    util_strv_free(&files);
}

/* Re-build the current tree's stale levels now, in the background: the
 * watcher's once a change has settled, --watch's as soon as one is seen. */
static void dmn_prewarm(const char *who)
{
    dmn_zygote *z = dmn.cur;
    char why[PF_ERRLEN];
    if (dmn.booting || dmn.run || dmn.queue || !z || !dmn_serves(z))
        return;
    int level = dmn_chain_stale(z, why, sizeof why);
    if (level < 0)
        return;
    util_log("pre-warming for %s (%s): %s", who, dmn_level_names[level], why);
    dmn_ident id = {{0}, {0}, NULL, NULL, NULL};
    dmn_ident_copy(&id, &z->id);
    dmn_boot_start(&id, level, why);
    dmn_ident_free(&id);
}

/* Walk the subscriber's tree: a snapshot that differs from what it last
 * heard of is told once it is the same on two walks a debounce apart.
 * The re-collect starts at the first sight of it: the debounce and the
 * client's request overlap the import.  A save still being written is
 * seen stale again by the run, which re-collects once more. */
static void dmn_sub_scan(dmn_conn *c, double now)
{
    dmn_sub *s = c->sub;
    const char *root = dmn_sub_root(s);
    tree t = {0};
    tree_scan(&t, root, dmn.watch_list);
    s->last_scan = util_now();
    s->walk_cost = s->last_scan - now;
    if (strcmp(root, s->root) != 0) {
        /* The first collection named the rootdir: a new baseline, no edit. */
        free(s->root);
        s->root = util_strdup(root);
        tree_free(&s->seen);
        s->seen = t;
        s->pending = false;
    } else if (tree_equal(&t, &s->seen)) {
        tree_free(&t);
        s->pending = false;     /* changed and changed back */
    } else if (s->pending && tree_equal(&t, &s->settling) && now - s->since >= s->debounce) {
        dmn_sub_send_changed(c, &t);
        tree_free(&s->seen);
        s->seen = t;
        tree_free(&s->settling);
        s->pending = false;
    } else {
        if (!s->pending)
            dmn_prewarm("--watch");
        if (!s->pending || !tree_equal(&t, &s->settling))
            s->since = now;     /* still changing: settle again */
        tree_free(&s->settling);
        s->settling = t;
        s->pending = true;
    }
    s->next_scan = s->pending ? s->since + s->debounce
                              : now + (dmn.sub_notify_fd >= 0 ? DMN_SUB_SAFETY_POLL : s->poll);
}

static void dmn_subs_tick(double now)
{
    bool scanned = false;
    for (int i = dmn.nconns - 1; i >= 0; i--) {
        dmn_conn *c = dmn.conns[i];
        if (c->sub && now >= c->sub->next_scan) {
            dmn_sub_scan(c, now);
            scanned = true;
            if (c->fd < 0)
                dmn_conn_drop(c);   /* the client went away */
        }
    }
    if (scanned)
        dmn_sub_notify_sync();
}

/* Something changed in a watched directory: look now, unless the last
 * walk was moments ago: files a run writes over and over (a log, a
 * database) may walk a large tree at most a tenth of the time. */
static void dmn_subs_notified(double now)
{
    char buf[4096];
    while (read(dmn.sub_notify_fd, buf, sizeof buf) > 0)
        ;
    for (int i = 0; i < dmn.nconns; i++) {
        dmn_sub *s = dmn.conns[i]->sub;
        if (s && !s->pending) {
            double earliest = s->last_scan + 10 * s->walk_cost;
            s->next_scan = now > earliest ? now : earliest;
        }
    }
}

/* Whether a --watch client has seen a change that has not settled yet. */
static bool dmn_subs_settling(void)
{
    for (int i = 0; i < dmn.nconns; i++)
        if (dmn.conns[i]->sub && dmn.conns[i]->sub->pending)
            return true;
    return false;
}

static double dmn_subs_next(void)
{
    double next = 0;
    for (int i = 0; i < dmn.nconns; i++)
        if (dmn.conns[i]->sub && (!next || dmn.conns[i]->sub->next_scan < next))
            next = dmn.conns[i]->sub->next_scan;
    return next;
}

/* {op: "watch", cwd, debounce, poll}: answered "watching" with the root
 * and its file count; the connection then stays subscribed until the
 * client hangs up. */
static void dmn_subscribe(dmn_conn *c, const pf_value *req)
{
    const char *cwd = pf_dict_str(req, "cwd");
    if (!cwd || cwd[0] != '/') {
        dmn_fail_request(c, 4, "malformed watch request");
        return;
    }
    const pf_value *debounce = pf_dict_get(req, "debounce"), *poll = pf_dict_get(req, "poll");
    dmn_sub *s = util_alloc(sizeof *s);
    s->cwd = util_strdup(cwd);
    s->debounce = debounce && debounce->kind == PF_FLOAT && debounce->u.f >= 0 ? debounce->u.f : 0.05;
    s->poll = poll && poll->kind == PF_FLOAT && poll->u.f > 0 ? poll->u.f : 0.5;
    s->root = util_strdup(dmn_sub_root(s));
    tree_scan(&s->seen, s->root, dmn.watch_list);
    c->sub = s;
    dmn.nsubs++;
    s->next_scan = util_now() + s->poll;
    util_log("--watch: a client watches %s (%zu files%s)", s->root, s->seen.n,
             s->seen.truncated ? ", truncated" : "");
    pf_arena *a = pf_arena_new(0);
    pf_value *d = util_msg(a, "watching");
    util_set(a, d, "root", pf_new_cstr(a, s->root));
    util_set(a, d, "files", pf_new_int(a, (int64_t)s->seen.n));
    dmn_send(c, d);
    pf_arena_free(a);
    dmn_sub_notify_sync();
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
        static const char *const states[] = {"down", "booting", "ready", "exited", "spare"};
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
        dmn_zygote *project = dmn_level_node(z, L_PROJECT);
        util_set(a, d, "layers", pf_new_bool(a, project != NULL));
        util_set(a, d, "planned", pf_new_bool(a, project && project->planned));
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
        util_set(a, d, "recollect", pf_new_cstr(a, z ? z->how : ""));
        const dmn_zygote *spare = dmn_spare_of(dmn_full_of(z));
        util_set(a, d, "spare_pid", pf_new_int(a, spare ? spare->pid : 0));
        util_set(a, d, "watch_clients", pf_new_int(a, dmn.nsubs));
        util_set(a, d, "settling", pf_new_bool(a, dmn_subs_settling()));
        dmn_send(c, d);
        pf_arena_free(a);
        dmn_conn_drop(c);
        return;
    }
    if (!strcmp(op, "stop")) {
        if (dmn.run && dmn.run->replied) {
            /* Its client has its reply; the leader still writes the
             * --affected record, which a kill now would lose. */
            util_log("stop requested: after run #%u's leader is done", dmn.runs);
            dmn.stop_after_run = true;
            dmn.stop_client = c;
            return;
        }
        dmn_reply_and_stop(c, "bye", "stop requested");
        return;
    }
    if (!strcmp(op, "watch")) {
        dmn_subscribe(c, req);
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
    c->brief = dmn_bool(req, "brief");
    c->store_durations = dmn_bool(req, "store_durations");
    const pf_value *shard = pf_dict_get(req, "shard");
    if (shard) {
        const pf_value *k = pf_is_seq(shard) && shard->u.seq.len == 2 ? shard->u.seq.items[0] : NULL;
        const pf_value *n = k ? shard->u.seq.items[1] : NULL;
        if (!k || k->kind != PF_INT || n->kind != PF_INT || k->u.i < 1 || k->u.i > n->u.i ||
            n->u.i > 100000) {
            dmn_fail_request(c, 4, "ERROR: malformed shard: expected (K, N) with 1 <= K <= N");
            return;
        }
        c->shard_k = (int)k->u.i;
        c->shard_n = (int)n->u.i;
    }
    dmn_watch_config(c, dmn_bool(req, "watch"));
    const char *incremental = dmn_env(&c->env, "PYTEST_FAST_INCREMENTAL");
    dmn.incremental_off = incremental && !strcmp(incremental, "0");
    c->stream = dmn_bool(req, "stream");
    c->color = dmn_bool(req, "color");
    const char *fp = pf_dict_str(req, "fp");
    const char *dump = pf_dict_str(req, "dump");
    c->fp = fp ? util_strdup(fp) : NULL;
    c->dump = dump ? util_strdup(dump) : NULL;
    const char *python = pf_dict_str(req, "python");
    c->python = python && python[0] == '/' ? util_strdup(python) : NULL;
    if (c->split.refused[0] && (!c->stream || !strcmp(c->split.refused, "-n") ||
                                !strcmp(c->split.refused, "--numprocesses") || !strcmp(c->split.refused, "-f") ||
                                !strcmp(c->split.refused, "--looponfail"))) {
        const char *r = c->split.refused;
        char *text;
        if (!strcmp(r, "-n") || !strcmp(r, "--numprocesses"))
            text = util_fmt("ERROR: %s is pytest-xdist's; pytest-fast runs its own workers: use --workers N", r);
        else if (!strcmp(r, "-f") || !strcmp(r, "--looponfail"))
            text = util_fmt("ERROR: %s is pytest-xdist's looponfail: use `pytest-fast --watch`, which re-runs "
                            "the tests a save affects, first", r);
        else if (!strcmp(r, "--debug") || !strcmp(r, "--trace-config"))
            text = util_fmt("ERROR: %s traces pytest's own start-up and collection, which the daemon did "
                            "earlier: use `pytest --fast %s` (plain pytest runs it, without the daemon)", r, r);
        else
            text = util_fmt("ERROR: %s needs pytest's own reporting: use `pytest --fast %s`", r,
                            arg_refusal_instead(r));
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
        if (r->cov_wait) {
            r->cov_wait = false;
            r->cov_fail = true;
            r->cov_text = util_strdup("pytest-fast: the run leader died while combining the "
                                      "coverage data (see the daemon log): no coverage report\n");
            dmn_run_end(r);
            return;
        }
        if (r->finishing) {
            dmn_run_end(r);   /* the leader updated the cache and exited */
            return;
        }
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
        dmn_run *r = dmn.run;
        if (r && r->client == c && r->replied) {
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                util_close(&c->fd);   /* it has its reply: the run only finishes */
            return;
        }
        bool cancel = n <= 0 || !r || r->client != c;
        for (ssize_t k = 0; !cancel && k < n; k++) {
            dmn_worker *owner = r->tty_owner >= 0 ? &r->workers[r->tty_owner] : NULL;
            if (buf[k] == 'a') {
                dmn_tty_acked(r);   /* the front end made way for a debugger */
            } else if (buf[k] == 'i') {
                /* Ctrl-C while a debugger has the terminal: the debugger's,
                 * as in a plain run (the terminal sends SIGINT to the
                 * client).  One that closed meanwhile takes it along. */
                if (owner && owner->pid > 0) {
                    util_log("Ctrl-C for the debugger of gw%d", owner->wid);
                    kill(owner->pid, SIGINT);
                }
            } else {
                cancel = true;
            }
        }
        if (!cancel)
            return;
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
        bool waits = w->held || w->wants_tty || r->tty_owner == i;   /* on a debugger */
        if (!w->exited && !waits && w->nclaimed && w->pid > 0 &&
            now - w->item_start > limit + DMN_TIMEOUT_GRACE) {
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
    dmn_zygote *project = dmn_level_node(z, L_PROJECT);
    if (dmn.booting || dmn.queue || !z || z->state != Z_READY || !project || now - dmn.last_run < 1.0)
        return;
    if (project->planned || !dmn.plan[L_PROJECT].n || strcmp(project->plan, dmn.plan_key) != 0)
        return;
    util_log("preparing the site and project levels in the background");
    dmn_ident id = {{0}, {0}, NULL, NULL, NULL};
    dmn_ident_copy(&id, &z->id);
    dmn_boot_start(&id, L_SITE, "the site and project levels prepared");
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
    dmn_prewarm("the watcher");
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
        p[n++] = (struct pollfd){dmn.sub_notify_fd, POLLIN, 0};
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
        double sub_next = dmn_subs_next();
        if (dmn.nsubs && (sub_next - now) * 1000 < timeout)
            timeout = sub_next > now ? (int)((sub_next - now) * 1000) + 1 : 0;
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
        if (rc > 0 && p[notified + 1].revents && dmn.sub_notify_fd >= 0)
            dmn_subs_notified(now);
        if (dmn.nsubs)
            dmn_subs_tick(now);
        if (dmn.run && dmn.run->finishing)
            dmn_run_end(dmn.run);   /* past DMN_FINISH_WAIT: reply without the leader */
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
        if (dmn.run || dmn.queue || dmn.nsubs)
            dmn.last_activity = now;   /* a --watch client is using the daemon */
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
    dmn.sub_notify_fd = -1;
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

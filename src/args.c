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
    ARG_REFUSE = 4,    /* not available in the lean CLI */
    ARG_OPTVALUE = 8   /* takes the next word as its value unless it is an option */
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
    {"--cache-clear", ARG_RUN},   /* the leader clears the cache before the run reads it */
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
    {"--report-chars", ARG_VALUE | ARG_RUN},
    {"--no-fold-skipped", ARG_RUN},   /* the lean -r list is never folded */
    {"-l", ARG_RUN},
    {"--showlocals", ARG_RUN},
    {"--no-showlocals", ARG_RUN},
    {"--full-trace", ARG_RUN},
    {"--durations", ARG_VALUE | ARG_RUN},
    {"--durations-min", ARG_VALUE | ARG_RUN},
    {"--color", ARG_VALUE | ARG_RUN},
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
    {"--setupshow", ARG_RUN},
    {"--setup-only", ARG_RUN},   /* only the run protocol, not collection */
    {"--setuponly", ARG_RUN},
    {"--setup-plan", ARG_RUN},
    {"--setupplan", ARG_RUN},
    /* What pytest prints instead of running tests: the leader renders it
     * on the run's selection, with the conftests and modules collected. */
    {"--fixtures", ARG_RUN},
    {"--funcargs", ARG_RUN},
    {"--fixtures-per-test", ARG_RUN},
    {"--cache-show", ARG_OPTVALUE | ARG_RUN},
    /* They trace pytest's own start-up and collection, which the daemon did. */
    {"--debug", ARG_OPTVALUE | ARG_RUN | ARG_REFUSE},
    {"--trace-config", ARG_RUN | ARG_REFUSE},
    {"--fast-affected", ARG_RUN},      /* the CLI's --affected, the plugin's own name */
    {"--fast-exclude", ARG_VALUE | ARG_RUN},   /* --watch: =PATH, tests not to run again */
    /* pytest's own reporting: the lean summary has no part that they shape */
    {"--junitxml", ARG_VALUE | ARG_RUN | ARG_REFUSE},
    {"--junit-xml", ARG_VALUE | ARG_RUN | ARG_REFUSE},
    {"--junit-prefix", ARG_VALUE | ARG_REFUSE},
    {"--pastebin", ARG_VALUE | ARG_REFUSE},
    {"--force-short-summary", ARG_REFUSE},
    {"--xfail-tb", ARG_REFUSE},
    {"--code-highlight", ARG_VALUE | ARG_RUN | ARG_REFUSE},
    {"--pdb", ARG_RUN},
    {"--trace", ARG_RUN},
    {"--pdbcls", ARG_VALUE | ARG_RUN},
    {"--sw", ARG_RUN},
    {"--stepwise", ARG_RUN},
    {"--sw-skip", ARG_RUN},
    {"--stepwise-skip", ARG_RUN},
    {"--sw-reset", ARG_RUN},
    {"--stepwise-reset", ARG_RUN},
    {"--dist", ARG_VALUE | ARG_RUN},
    /* pytest-randomly: the seed and the shuffle are per run (the leader) */
    {"--randomly-seed", ARG_VALUE | ARG_RUN},
    {"--randomly-dont-reset-seed", ARG_RUN},
    {"--randomly-dont-reorganize", ARG_RUN},
    {"-n", ARG_VALUE | ARG_REFUSE},
    {"-f", ARG_REFUSE},                 /* pytest-xdist's looponfail would loop in the zygote */
    {"--looponfail", ARG_REFUSE},
    {"--max-warnings", ARG_VALUE | ARG_RUN},
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
    {"--doctest-report", ARG_VALUE},
    /* pytest-cov.  What and how to measure is the collection's: the zygote
     * chain measures from its lowest level on, so a plain run is never
     * traced.  What to report is per run: the leader (CLI) or the
     * controller's pytest-cov (plugin) combines and reports. */
    {"--cov", ARG_OPTVALUE},
    {"--cov-reset", 0},
    {"--cov-branch", 0},
    {"--cov-config", ARG_VALUE},
    {"--cov-context", ARG_VALUE},
    {"--no-cov", 0},
    {"--cov-report", ARG_VALUE | ARG_RUN},
    {"--cov-fail-under", ARG_VALUE | ARG_RUN},
    {"--cov-precision", ARG_VALUE | ARG_RUN},
    {"--cov-append", ARG_RUN},
    {"--no-cov-on-fail", ARG_RUN},
};

/* What a refused option's message tells to run instead: the `pytest --fast`
 * arguments that do it (the others are pytest-xdist's, see Daemon). */
static const char *const arg_instead[][2] = {
    {"--junitxml", "--junitxml=PATH"},
    {"--junit-xml", "--junit-xml=PATH"},
    {"--junit-prefix", "--junitxml=PATH --junit-prefix=STR"},
    {"--pastebin", "--pastebin=MODE"},
    {"--force-short-summary", "--force-short-summary"},
    {"--xfail-tb", "--xfail-tb"},
    {"--code-highlight", "--code-highlight=yes"},
};

static const char *arg_refusal_instead(const char *name)
{
    for (size_t i = 0; i < sizeof arg_instead / sizeof *arg_instead; i++)
        if (!strcmp(arg_instead[i][0], name))
            return arg_instead[i][1];
    return name;
}

/* "K/N", 1-based: shard K of N.  Returns 0, or -1 for anything else. */
static int arg_parse_shard(const char *s, int *k, int *n)
{
    char *end;
    errno = 0;
    long kk = s && *s >= '0' && *s <= '9' ? strtol(s, &end, 10) : -1;
    if (kk < 1 || errno || *end != '/' || end[1] < '0' || end[1] > '9')
        return -1;
    long nn = strtol(end + 1, &end, 10);
    if (errno || *end || nn < 1 || nn > 100000 || kk > nn)
        return -1;
    *k = (int)kk;
    *n = (int)nn;
    return 0;
}

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
    int stepwise;         /* --sw: stop at this many failures (2: --sw-skip), 0 = off */
    bool collect_only;
    bool info;            /* --fixtures, --fixtures-per-test, --cache-show: the leader's text, no tests */
    bool continue_on_errors;
    bool affected;        /* --fast-affected: selecting nothing is a success */
    bool full_trace_none; /* --tb=no */
    bool debug;           /* --pdb / --trace: one worker, as a debugger may open at any test */
    int durations;        /* --durations N, -1 when not given */
    double durations_min; /* --durations-min S, pytest's default 0.005 */
    int verbosity;        /* -v, -q, --verbosity N */
    int color;            /* --color: 1 yes, 0 no, -1 auto (the client's terminal) */
    bool no_header, no_summary;
    char show_capture[8]; /* --show-capture: no, stdout, stderr, log, all */
    char report_chars[16];/* -r, as pytest's getreportopt resolves it ("" also: none given) */
    char refused[64];
} arg_split;

static void arg_split_free(arg_split *s)
{
    util_strv_free(&s->collect);
    util_strv_free(&s->run);
}

/* -r: pytest's getreportopt without "w" (the lean summary lists no
 * warnings): a, A and N replace what came before; F and S are f and s.
 * "P" (passed tests' output) has no place in the lean summary. */
static void arg_report_chars(arg_split *s, const char *value)
{
    char *out = s->report_chars;
    size_t n = 0;
    out[0] = 0;
    for (const char *c = value; *c; c++) {
        char ch = *c == 'F' ? 'f' : *c == 'S' ? 's' : *c;
        const char *set = ch == 'a' || ch == 'A' ? "sxXEf" : ch == 'N' ? "" : NULL;
        if (set) {
            n = (size_t)snprintf(out, sizeof s->report_chars, "%s%s", ch == 'A' ? "p" : "", set);
            continue;
        }
        if (strchr("fEsxXp", ch) && !memchr(out, ch, n) && n + 1 < sizeof s->report_chars) {
            out[n++] = ch;
            out[n] = 0;
        }
    }
}

/* Note what the daemon itself must know about a per-run option. */
static void arg_note(arg_split *s, const char *name, const char *value)
{
    if (!strcmp(name, "-x") || !strcmp(name, "--exitfirst"))
        s->maxfail = 1;
    else if (!strcmp(name, "--maxfail") && value)
        s->maxfail = atoi(value) > 0 ? atoi(value) : 0;
    else if (!strcmp(name, "--sw-skip") || !strcmp(name, "--stepwise-skip"))
        s->stepwise = 2;   /* the first failure is let through */
    else if (!strncmp(name, "--sw", 4) || !strncmp(name, "--stepwise", 10))
        s->stepwise = s->stepwise ? s->stepwise : 1;
    else if (!strcmp(name, "--collect-only") || !strcmp(name, "--co"))
        s->collect_only = true;
    else if (!strcmp(name, "--fixtures") || !strcmp(name, "--funcargs") ||
             !strcmp(name, "--fixtures-per-test") || !strcmp(name, "--cache-show"))
        s->collect_only = s->info = true;
    else if (!strcmp(name, "--fast-affected"))
        s->affected = true;
    else if (!strcmp(name, "--continue-on-collection-errors"))
        s->continue_on_errors = true;
    else if (!strcmp(name, "--pdb") || !strcmp(name, "--trace"))
        s->debug = true;
    else if (!strcmp(name, "--tb") && value && !strcmp(value, "no"))
        s->full_trace_none = true;
    else if (!strcmp(name, "--durations") && value)
        s->durations = atoi(value) >= 0 ? atoi(value) : 0;
    else if (!strcmp(name, "--durations-min") && value)
        s->durations_min = atof(value) > 0 ? atof(value) : 0;
    else if (!strcmp(name, "-v") || !strcmp(name, "--verbose"))
        s->verbosity++;
    else if (!strcmp(name, "-q") || !strcmp(name, "--quiet"))
        s->verbosity--;
    else if (!strcmp(name, "--verbosity") && value)
        s->verbosity = atoi(value);
    else if (!strcmp(name, "--color") && value)
        s->color = !strcmp(value, "yes") ? 1 : !strcmp(value, "no") ? 0 : -1;
    else if (!strcmp(name, "--no-header"))
        s->no_header = true;
    else if (!strcmp(name, "--no-summary"))
        s->no_summary = true;
    else if (!strcmp(name, "--show-capture") && value)
        snprintf(s->show_capture, sizeof s->show_capture, "%s", value);
    else if ((!strcmp(name, "-r") || !strcmp(name, "--report-chars")) && value)
        arg_report_chars(s, value);
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
    s->durations_min = 0.005;
    s->color = -1;
    snprintf(s->show_capture, sizeof s->show_capture, "all");
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
            else if ((flags & ARG_OPTVALUE) && i + 1 < argc && argv[i + 1][0] != '-') {
                value = argv[++i];   /* argparse's nargs="?": `--cov src` */
                util_strv_push(dest, value);
            } else if (flags & ARG_VALUE) {
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

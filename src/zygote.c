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

/* The Python glue: src/glue.py, inlined here by src/amalgamate.py as one C
 * string line per Python line, so line numbers in its tracebacks are the
 * source's. */
static const char zyg_glue[] =
#include "glue.py"
;

/* affected.py, the same way: what --affected selects and how workers
 * record it.  Plain Python that the glue imports by this module name. */
static const char zyg_affected[] =
#include "affected.py"
;

/* hotswap.py, the same way: function bodies edited in app modules,
 * swapped into a fork of the collection. */
static const char zyg_hotswap[] =
#include "hotswap.py"
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

/* The files whose Python functions were called since calls_start(): what
 * a test ran, for --affected before 3.12 (3.12+ uses sys.monitoring).  A C
 * profile function costs one set insertion per call, asks for no line
 * events and leaves the trace slot to coverage or a debugger; a Python
 * trace function doubled the time of a FastAPI suite.  Owned by workers. */
static PyObject *zyg_called;   /* set of co_filename objects; NULL when off */

/* 3.12+: sys.monitoring's PY_START callback, in C for the same reason: it
 * runs at every call of the project's own functions, and a Python callback
 * cost make_app's warm run 11 %.  Code outside the project gets DISABLE
 * at its first call and is never seen again.  mon_setup() switches
 * calls_start/calls_stop from the profile function to this. */
static PyObject *zyg_mon_verdict;    /* co_filename -> whether it is the project's */
static PyObject *zyg_mon_classify;   /* the Python judge of a new file name */
static PyObject *zyg_mon_disable;    /* sys.monitoring.DISABLE */

static PyObject *zyg_py_mon_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 1 || !PyCode_Check(args[0]) || !zyg_mon_verdict)
        Py_RETURN_NONE;
    PyObject *filename = ((PyCodeObject *)args[0])->co_filename;
    PyObject *verdict = PyDict_GetItemWithError(zyg_mon_verdict, filename);
    if (!verdict) {
        if (PyErr_Occurred())
            return NULL;
        PyObject *judged = PyObject_CallOneArg(zyg_mon_classify, filename);
        if (!judged || PyDict_SetItem(zyg_mon_verdict, filename, judged) < 0) {
            Py_XDECREF(judged);
            return NULL;
        }
        verdict = judged;
        Py_DECREF(judged);   /* the dict holds it */
    }
    if (verdict != Py_True) {
        Py_INCREF(zyg_mon_disable);
        return zyg_mon_disable;
    }
    if (zyg_called && PySet_Add(zyg_called, filename) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *zyg_py_mon_setup(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *classify, *disable;
    if (!PyArg_ParseTuple(args, "OO", &classify, &disable))
        return NULL;
    if (!zyg_mon_verdict && !(zyg_mon_verdict = PyDict_New()))
        return NULL;
    Py_INCREF(classify);
    Py_INCREF(disable);
    Py_XSETREF(zyg_mon_classify, classify);
    Py_XSETREF(zyg_mon_disable, disable);
    Py_RETURN_NONE;
}

static int zyg_profile(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg)
{
    (void)obj;
    (void)arg;
    if (what != PyTrace_CALL || !zyg_called)
        return 0;
    PyCodeObject *code = PyFrame_GetCode(frame);
    int rc = PySet_Add(zyg_called, code->co_filename);
    Py_DECREF(code);
    return rc;
}

/* The profile function in every thread, or none: a thread that started
 * while a test was recorded (a server, a pool) runs code for later tests
 * too, and must not keep profiling while nothing is recorded, which made a
 * run whose records were current 50 % slower on 3.11. */
static void zyg_profile_all(Py_tracefunc func)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyEval_SetProfileAllThreads(func, NULL);
#else
    PyInterpreterState *interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts; ts = PyThreadState_Next(ts))
        if (func || ts->c_profilefunc == zyg_profile)
            _PyEval_SetProfile(ts, func, NULL);
#endif
}

static PyObject *zyg_py_calls_start(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    Py_XDECREF(zyg_called);
    zyg_called = PySet_New(NULL);
    if (!zyg_called)
        return NULL;
    if (!zyg_mon_verdict)
        zyg_profile_all(zyg_profile);
    Py_RETURN_NONE;
}

/* In a thread started while recording (threading.setprofile's hook). */
static PyObject *zyg_py_calls_here(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    PyEval_SetProfile(zyg_profile, NULL);
    Py_RETURN_NONE;
}

static PyObject *zyg_py_calls_stop(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    if (!zyg_mon_verdict)
        zyg_profile_all(NULL);
    PyObject *seen = zyg_called ? zyg_called : PySet_New(NULL);
    zyg_called = NULL;
    return seen;
}

/* Whether a function's code ran in this process or in the levels it was
 * forked from, for the hot swap (hotswap.py): a body edit to a function
 * that ran while the zygote imported and collected needs that import
 * again.  Before 3.12 the interpreter's per-code warm-up counter says so at
 * no cost (it starts at 0, or at -8 on 3.11, and moves at every start).
 * 3.12+ keeps no such counter: ran_watch() takes a sys.monitoring
 * PY_START callback, in C, that notes each function's code once and
 * disables itself there.  It keeps the code alive: an address alone would
 * be reused by code made later (the levels compile and free much), which
 * would then seem to have run.  Owned by the zygote levels; forks inherit
 * it. */
#if PY_VERSION_HEX >= 0x030C0000
static PyObject *zyg_ran;           /* code address -> that code, for what started */
static PyObject *zyg_ran_disable;   /* sys.monitoring.DISABLE */

static PyObject *zyg_py_ran_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 1 || !zyg_ran || !zyg_ran_disable || !PyCode_Check(args[0]))
        Py_RETURN_NONE;
    if (((PyCodeObject *)args[0])->co_flags & CO_NEWLOCALS) {   /* a function's, not a module's */
        PyObject *key = PyLong_FromVoidPtr(args[0]);
        int rc = key ? PyDict_SetItem(zyg_ran, key, args[0]) : -1;
        Py_XDECREF(key);
        if (rc < 0)
            return NULL;
    }
    Py_INCREF(zyg_ran_disable);
    return zyg_ran_disable;
}

static PyObject *zyg_py_ran_watch(PyObject *self, PyObject *disable)
{
    (void)self;
    if (!zyg_ran && !(zyg_ran = PyDict_New()))
        return NULL;
    Py_INCREF(disable);
    Py_XSETREF(zyg_ran_disable, disable);
    Py_RETURN_NONE;
}
#endif

#ifdef __linux__
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23   /* Linux 5.14; older C libraries lack the name */
#endif

/* Break copy-on-write, from start for n pages, on those that `pagemap`
 * (the other process's /proc/PID/pagemap) says it holds mapped and
 * exclusively: written since the fork.  False once the kernel refuses
 * MADV_POPULATE_WRITE itself (before 5.14). */
static bool zyg_prefault_range(int pagemap, uintptr_t start, size_t n, long page, size_t *done)
{
    uint64_t entries[512];
    for (size_t i = 0; i < n;) {
        size_t want = n - i < 512 ? n - i : 512;
        ssize_t got = pread(pagemap, entries, want * sizeof *entries,
                            (off_t)((start / (uintptr_t)page + i) * sizeof *entries));
        if (got <= 0)
            return true;
        size_t k = (size_t)got / sizeof *entries;
        for (size_t j = 0; j < k;) {
            size_t run = 0;
            while (j + run < k && (entries[j + run] >> 63 & 1) && (entries[j + run] >> 56 & 1))
                run++;
            if (run) {
                /* An address the other process mapped after the fork may be
                 * unmapped here (ENOMEM): nothing to copy there. */
                if (madvise((void *)(start + (i + j) * (uintptr_t)page), run * (size_t)page,
                            MADV_POPULATE_WRITE) == 0)
                    *done += run;
                else if (errno == EINVAL)
                    return false;
            }
            j += run ? run : 1;
        }
        i += k;
    }
    return true;
}
#endif

/* Copy now the pages that process `pid`, forked from the same parent,
 * wrote since its fork: the spare fork of the collection (see the
 * daemon) then does not take those copy-on-write faults when it
 * re-collects, as `pid` (the last incremental re-collect) did.  The
 * private anonymous mappings only; the pages copied, 0 where /proc or
 * MADV_POPULATE_WRITE is missing. */
static size_t zyg_prefault(pid_t pid)
{
    size_t done = 0;
#ifdef __linux__
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/maps", (long)pid);
    FILE *maps = pid > 0 ? fopen(path, "re") : NULL;
    snprintf(path, sizeof path, "/proc/%ld/pagemap", (long)pid);
    int pagemap = maps ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    long page = sysconf(_SC_PAGESIZE);
    char line[512];
    bool more = pagemap >= 0 && page > 0;
    while (more && fgets(line, sizeof line, maps)) {
        unsigned long lo, hi, inode;
        char perms[8];
        int name = 0;
        if (sscanf(line, "%lx-%lx %7s %*x %*s %lu %n", &lo, &hi, perms, &inode, &name) < 4)
            continue;
        /* writable, private, not file-backed; the stack is this process's
         * own; a mapping of over a GiB is a sanitizer's shadow memory, not
         * a heap, and reading its page map would take minutes */
        if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || inode != 0 ||
            !strncmp(line + name, "[stack]", 7) || hi - lo > 1ul << 30)
            continue;
        more = zyg_prefault_range(pagemap, lo, (hi - lo) / (unsigned long)page, page, &done);
    }
    if (pagemap >= 0)
        close(pagemap);
    if (maps)
        fclose(maps);
#else
    (void)pid;
#endif
    return done;
}

static PyObject *zyg_py_prefault(PyObject *self, PyObject *arg)
{
    (void)self;
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromSize_t(zyg_prefault((pid_t)pid));
}

static PyObject *zyg_py_ran(PyObject *self, PyObject *code)
{
    (void)self;
    if (!PyCode_Check(code)) {
        PyErr_SetString(PyExc_TypeError, "ran() takes a code object");
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030C0000
    if (!zyg_ran)
        Py_RETURN_TRUE;   /* nothing watched: anything may have run */
    PyObject *key = PyLong_FromVoidPtr(code);
    PyObject *seen = key ? PyDict_GetItemWithError(zyg_ran, key) : NULL;
    Py_XDECREF(key);
    if (!seen && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(seen == code);
#elif PY_VERSION_HEX >= 0x030B0000
    return PyBool_FromLong(((PyCodeObject *)code)->co_warmup != -8);
#else
    return PyBool_FromLong(((PyCodeObject *)code)->co_opcache_flag != 0);
#endif
}

/* The files opened for reading since opens_start(), for --affected: a C
 * audit hook, because CPython calls audit hooks for every audited event
 * (sys._getframe, compile, ...) and a Python one cost make_app's warm
 * run about 60 % on 3.12.  Never fails the audited operation.  Owned by
 * workers. */
static PyObject *zyg_opened;   /* set of absolute paths; NULL when off */
static bool zyg_audit_added;

static int zyg_audit(const char *event, PyObject *args, void *data)
{
    (void)data;
    if (!zyg_opened || strcmp(event, "open") != 0 || !PyTuple_Check(args) || PyTuple_GET_SIZE(args) < 3)
        return 0;
    PyObject *path = PyTuple_GET_ITEM(args, 0), *mode = PyTuple_GET_ITEM(args, 1);
    PyObject *flags = PyTuple_GET_ITEM(args, 2);
    if (!PyUnicode_Check(path))
        return 0;
    bool reading;
    if (PyUnicode_Check(mode)) {
        const char *m = PyUnicode_AsUTF8(mode);
        reading = m && !strpbrk(m, "wax+");
    } else {
        long f = PyLong_Check(flags) ? PyLong_AsLong(flags) : O_WRONLY;
        reading = !(f & (O_WRONLY | O_RDWR));
    }
    if (reading) {
        const char *p = PyUnicode_AsUTF8(path);
        char cwd[PATH_MAX];
        PyObject *abs = NULL;
        if (p && p[0] != '/' && getcwd(cwd, sizeof cwd))
            abs = PyUnicode_FromFormat("%s/%U", cwd, path);   /* the open's own cwd */
        else if (p) {
            abs = path;
            Py_INCREF(abs);
        }
        if (!abs || PySet_Add(zyg_opened, abs) < 0)
            PyErr_Clear();
        Py_XDECREF(abs);
    }
    if (PyErr_Occurred())
        PyErr_Clear();
    return 0;
}

static PyObject *zyg_py_opens_start(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    if (!zyg_audit_added) {
        if (PySys_AddAuditHook(zyg_audit, NULL) < 0)
            return NULL;
        zyg_audit_added = true;
    }
    Py_XDECREF(zyg_opened);
    zyg_opened = PySet_New(NULL);
    if (!zyg_opened)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *zyg_py_opens_stop(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    PyObject *seen = zyg_opened ? zyg_opened : PySet_New(NULL);
    zyg_opened = NULL;
    return seen;
}

static PyMethodDef zyg_methods[] = {
    {"send", zyg_py_send, METH_VARARGS, "send(fd, payload): write one frame"},
    {"recv", zyg_py_recv, METH_VARARGS, "recv(fd): read and safely decode one frame"},
    {"serve", zyg_py_serve, METH_VARARGS, "serve(fd): wait for the daemon, fork on request"},
    {"calls_start", zyg_py_calls_start, METH_NOARGS, "calls_start(): record called functions' files"},
    {"calls_here", zyg_py_calls_here, METH_NOARGS, "calls_here(): record in this thread too"},
    {"calls_stop", zyg_py_calls_stop, METH_NOARGS, "calls_stop() -> set of the files called"},
    {"mon_setup", zyg_py_mon_setup, METH_VARARGS,
     "mon_setup(is_project, DISABLE): calls_* record through mon_start (sys.monitoring)"},
    {"mon_start", (PyCFunction)(void (*)(void))zyg_py_mon_start, METH_FASTCALL,
     "mon_start(code, offset): the PY_START callback"},
    {"opens_start", zyg_py_opens_start, METH_NOARGS, "opens_start(): record files opened to read"},
    {"opens_stop", zyg_py_opens_stop, METH_NOARGS, "opens_stop() -> set of the files opened"},
    {"prefault", zyg_py_prefault, METH_O, "prefault(pid) -> pages copied that pid wrote since its fork"},
    {"ran", zyg_py_ran, METH_O, "ran(code) -> whether that code started here or in a level below"},
#if PY_VERSION_HEX >= 0x030C0000
    {"ran_watch", zyg_py_ran_watch, METH_O, "ran_watch(DISABLE): ran_start notes what starts (3.12+)"},
    {"ran_start", (PyCFunction)(void (*)(void))zyg_py_ran_start, METH_FASTCALL,
     "ran_start(code, offset): the PY_START callback of ran_watch"},
#endif
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
    PyObject *code = Py_CompileString(zyg_affected, "<pytest-fast affected>", Py_file_input);
    PyObject *mod = code ? PyImport_ExecCodeModule("_pytest_fast_affected", code) : NULL;
    Py_XDECREF(code);
    Py_XDECREF(mod);
    code = mod ? Py_CompileString(zyg_hotswap, "<pytest-fast hotswap>", Py_file_input) : NULL;
    mod = code ? PyImport_ExecCodeModule("_pytest_fast_hotswap", code) : NULL;
    Py_XDECREF(code);
    Py_XDECREF(mod);
    code = mod ? Py_CompileString(zyg_glue, "<pytest-fast glue>", Py_file_input) : NULL;
    mod = code ? PyImport_ExecCodeModule("_pytest_fast_glue", code) : NULL;
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

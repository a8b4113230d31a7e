/* ==========================================================================
 * Tree
 *
 * Owns nothing global.  A snapshot of the files under a project root whose
 * change `pytest-fast --watch` reacts to: Python files and pytest's config
 * files, and the data files a recording run saw tests read (its watch list,
 * one absolute path a line).  Hidden directories, caches, virtual
 * environments and installed packages are skipped, so a run's own
 * .pytest_cache, __pycache__ and .coverage writes never look like an edit.
 * Snapshots are sorted by path: comparing two is one merge.  Calls
 * Utilities.
 * ========================================================================== */

#define TREE_MAX_FILES 200000   /* past this, a snapshot is marked truncated */
#define TREE_MAX_DEPTH 40

typedef struct tree_file {
    char *path;
    int64_t mtime_ns, size;
    uint64_t ino;
} tree_file;

typedef struct tree {
    tree_file *f;
    size_t n, cap;
    util_strv dirs;    /* every directory walked: what inotify should watch */
    bool truncated;
} tree;

static void tree_free(tree *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->f[i].path);
    free(t->f);
    util_strv_free(&t->dirs);
    memset(t, 0, sizeof *t);
}

static bool tree_suffix(const char *name, const char *suffix)
{
    size_t n = strlen(name), k = strlen(suffix);
    return n >= k && !strcmp(name + n - k, suffix);
}

static bool tree_wanted_file(const char *name)
{
    static const char *const configs[] = {"pytest.ini", ".pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini"};
    for (size_t i = 0; i < sizeof configs / sizeof *configs; i++)
        if (!strcmp(name, configs[i]))
            return true;
    return name[0] != '.' && (tree_suffix(name, ".py") || tree_suffix(name, ".pyi"));
}

/* A directory of the project's own, not a cache, a virtual environment or
 * installed packages. */
static bool tree_wanted_dir(const char *path, const char *name)
{
    if (name[0] == '.' || !strcmp(name, "__pycache__") || !strcmp(name, "node_modules") ||
        !strcmp(name, "site-packages") || tree_suffix(name, ".egg-info"))
        return false;
    char *venv = util_fmt("%s/pyvenv.cfg", path);
    struct stat st;
    bool is_venv = stat(venv, &st) == 0;
    free(venv);
    return !is_venv;
}

static void tree_add(tree *t, const char *path, const struct stat *st)
{
    if (t->n == TREE_MAX_FILES) {
        t->truncated = true;
        return;
    }
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->f = util_realloc(t->f, t->cap * sizeof *t->f);
    }
    t->f[t->n++] = (tree_file){util_strdup(path),
                               (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec,
                               (int64_t)st->st_size, (uint64_t)st->st_ino};
}

static void tree_walk(tree *t, const char *dir, int depth)
{
    DIR *d = depth < TREE_MAX_DEPTH ? opendir(dir) : NULL;
    if (!d)
        return;
    util_strv_push(&t->dirs, dir);
    struct dirent *e;
    while ((e = readdir(d)) && !t->truncated) {
        const char *name = e->d_name;
        if (!strcmp(name, ".") || !strcmp(name, ".."))
            continue;
        char *path = util_fmt("%s/%s", dir, name);
        struct stat st;
        /* Symlinked directories are not followed (no cycles); symlinked
         * files count with their target's times. */
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (tree_wanted_dir(path, name))
                tree_walk(t, path, depth + 1);
        } else if (tree_wanted_file(name) && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            tree_add(t, path, &st);
        }
        free(path);
    }
    closedir(d);
}

static int tree_cmp(const void *a, const void *b)
{
    return strcmp(((const tree_file *)a)->path, ((const tree_file *)b)->path);
}

/* The snapshot of root, plus the files named in list (may be NULL).  A
 * listed file that is missing is left out: its coming back is a change. */
static void tree_scan(tree *t, const char *root, const char *list)
{
    tree_free(t);
    tree_walk(t, root, 0);
    char *text = list ? util_read_file(list, 16u << 20) : NULL;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        else
            next = line + strlen(line);
        struct stat st;
        if (line[0] == '/' && stat(line, &st) == 0 && S_ISREG(st.st_mode))
            tree_add(t, line, &st);
    }
    free(text);
    if (t->n)
        qsort(t->f, t->n, sizeof *t->f, tree_cmp);
    size_t k = 0;   /* a listed file may also be a walked one */
    for (size_t i = 0; i < t->n; i++) {
        if (k && !strcmp(t->f[k - 1].path, t->f[i].path))
            free(t->f[i].path);
        else
            t->f[k++] = t->f[i];
    }
    t->n = k;
}

static bool tree_same_file(const tree_file *a, const tree_file *b)
{
    return a->mtime_ns == b->mtime_ns && a->size == b->size && a->ino == b->ino;
}

static bool tree_equal(const tree *a, const tree *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->f[i].path, b->f[i].path) || !tree_same_file(&a->f[i], &b->f[i]))
            return false;
    return true;
}

/* The paths that differ between two snapshots (changed, added, removed),
 * relative to root where they are under it; at most max of them are
 * listed, all are counted.  Returns the count. */
static size_t tree_diff(const tree *was, const tree *now, const char *root, util_strv *out, size_t max)
{
    size_t i = 0, k = 0, count = 0, rl = strlen(root);
    while (i < was->n || k < now->n) {
        int c = i == was->n ? 1 : k == now->n ? -1 : strcmp(was->f[i].path, now->f[k].path);
        const char *path = NULL;
        if (c < 0)
            path = was->f[i++].path;
        else if (c > 0)
            path = now->f[k++].path;
        else if (!tree_same_file(&was->f[i++], &now->f[k++]))
            path = now->f[k - 1].path;
        if (!path)
            continue;
        if (count++ < max)
            util_strv_push(out, !strncmp(path, root, rl) && path[rl] == '/' ? path + rl + 1 : path);
    }
    return count;
}

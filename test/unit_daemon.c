/* Unit tests for the daemon's zygote table: orderings of frames that a
 * loaded machine produces only now and then, set up here exactly. */
#define PF_NO_MAIN
#include "../pytest_fast.c"

#include <stdlib.h>

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

int main(void)
{
    test_refusal_read_from_the_reaped_frame();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

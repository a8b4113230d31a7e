/*
 * codec_tool -- the C codec as a filter, for the Python interop tests.
 *
 * Reads frames (4-byte big-endian length + pickle) from stdin until EOF.
 * Answers each with one frame on stdout: "O" + pf_encode(pf_decode(pickle))
 * on success, "E" + the decoder's reason on failure.
 */
#define PF_NO_MAIN
#include "../pytest_fast.c"

int main(void)
{
    pf_reader r;
    pf_buf out = {0};
    int rc;
    pf_reader_init(&r);
    while ((rc = pf_read_frame(&r, 0, -1)) == PF_READ_FRAME) {
        pf_arena *a = pf_arena_new(0);
        pf_value *v;
        char err[512];
        out.len = 0;
        if (!a) {
            perror("codec_tool: pf_arena_new");
            return 1;
        }
        int ok = pf_decode(a, r.body.data, r.need, &v, err, sizeof err) == 0;
        if (ok ? pf_buf_put(&out, "O", 1) < 0 || pf_encode(&out, v) < 0
               : pf_buf_put(&out, "E", 1) < 0 || pf_buf_put(&out, err, strlen(err)) < 0) {
            perror("codec_tool: encode");
            return 1;
        }
        if (pf_frame_write(1, out.data, out.len, NULL, 0) < 0) {
            perror("codec_tool: write");
            return 1;
        }
        pf_arena_free(a);
        pf_reader_reset(&r);
    }
    if (rc != PF_READ_EOF) {
        perror("codec_tool: read");
        return 1;
    }
    pf_reader_free(&r);
    pf_buf_free(&out);
    return 0;
}

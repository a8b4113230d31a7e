/*
 * libFuzzer target for pf_decode.
 *
 * Whatever the input, decoding must not crash, leak or read out of bounds.
 * When it succeeds, the value must survive pf_encode -> pf_decode equal
 * (pf_value_equal), and encoding the copy must give the same bytes again:
 * the encoder's output is a fixed point of the round trip.  (A few hundred
 * input bytes of shared references may unfold to a re-encoding of up to
 * PF_MAX_FRAME; past FUZZ_MAX_REENCODE the second decode is skipped to stay
 * within the fuzzer's memory limit.)
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE \
 *         -o build/fuzz_decode test/fuzz_decode.c
 */
#define PF_NO_MAIN
#include "../pytest_fast.c"

#define FUZZ_MAX_REENCODE (8u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_die(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_decode: %s%s%s\n", what, err ? ": " : "", err ? err : "");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    pf_value *v, *w;
    pf_arena *a = pf_arena_new(0), *b = pf_arena_new(0);
    pf_buf once = {0}, twice = {0};
    if (!a || !b)
        fuzz_die("out of memory", NULL);
    if (pf_decode(a, data, size, &v, err, sizeof err) < 0) {
        if (!err[0])
            fuzz_die("rejected without a reason", NULL);
    } else {
        if (pf_arena_used(a) > size * PF_DECODE_FACTOR + PF_DECODE_SLACK)
            fuzz_die("decode exceeded its allocation budget", NULL);
        if (pf_encode(&once, v) < 0)
            fuzz_die("cannot encode a decoded value", NULL);
        if (once.len > PF_MAX_FRAME)
            fuzz_die("re-encoding larger than a frame", NULL);
        if (once.len <= FUZZ_MAX_REENCODE) {
            if (pf_decode(b, once.data, once.len, &w, err, sizeof err) < 0)
                fuzz_die("cannot decode our own encoding", err);
            if (!pf_value_equal(v, w))
                fuzz_die("round trip changed the value", NULL);
            if (pf_encode(&twice, w) < 0 || twice.len != once.len ||
                memcmp(twice.data, once.data, once.len) != 0)
                fuzz_die("encoding is not a fixed point", NULL);
        }
    }
    pf_buf_free(&once);
    pf_buf_free(&twice);
    pf_arena_free(a);
    pf_arena_free(b);
    return 0;
}

/* The C ABI of the generated Swift header (graftFFI.h), called from C: what Swift calls on iOS
 * and macOS, checked here where Swift cannot be compiled. Built and run by
 * scripts/test_bindings.sh against the test-hooks build of libgraft_uniffi:
 *   abi_test MODEL.gguf
 * Prints "N passed, N failed". */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "graftFFI.h"

static int passed, failed;

static void check(int ok, const char *what) {
    if (ok) {
        passed++;
        printf("ok   %s\n", what);
    } else {
        failed++;
        printf("FAIL %s\n", what);
    }
}

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* A uniffi string argument: a RustBuffer of UTF-8 bytes. */
static RustBuffer string_arg(const char *s) {
    RustCallStatus st = {0};
    ForeignBytes fb = {(int32_t)strlen(s), (const uint8_t *)s};
    return ffi_graft_uniffi_rustbuffer_from_bytes(fb, &st);
}

static void free_buf(RustBuffer b) {
    RustCallStatus st = {0};
    ffi_graft_uniffi_rustbuffer_free(b, &st);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: abi_test MODEL.gguf\n");
        return 2;
    }
    RustCallStatus st = {0};

    /* version() returns a String: the raw UTF-8 bytes in a RustBuffer. */
    RustBuffer v = uniffi_graft_uniffi_fn_func_version(&st);
    check(st.code == 0 && v.len > 0 && v.data && memchr(v.data, '.', v.len) != NULL,
          "version() over the C ABI");
    free_buf(v);

    /* A missing model: error status 1, the error buffer names GraftError variant 1 (File). */
    memset(&st, 0, sizeof st);
    uint64_t h = uniffi_graft_uniffi_fn_constructor_engine_new(string_arg("/nonexistent/model.gguf"), &st);
    check(st.code == 1 && h == 0, "Engine(missing file) fails with an error status");
    check(st.errorBuf.len >= 8 && be32(st.errorBuf.data) == 1, "  ... and the error is GraftError.File");
    if (st.errorBuf.len >= 8) {
        uint32_t n = be32(st.errorBuf.data + 4);
        check(n + 8 <= st.errorBuf.len && memmem(st.errorBuf.data + 8, n, "/nonexistent", 12) != NULL,
              "  ... whose message names the file");
    }
    free_buf(st.errorBuf);

    /* A panic inside Rust comes back as status 2 (unexpected error), not a crash. */
    memset(&st, 0, sizeof st);
    uniffi_graft_uniffi_fn_func_debug_panic(&st);
    check(st.code == 2, "a panic is status 2, the process goes on");
    free_buf(st.errorBuf);

    /* The real model: open, info() (a record whose first field is the architecture), free. */
    memset(&st, 0, sizeof st);
    h = uniffi_graft_uniffi_fn_constructor_engine_new(string_arg(argv[1]), &st);
    check(st.code == 0 && h != 0, "Engine(model) opens");
    if (st.code == 0) {
        memset(&st, 0, sizeof st);
        RustBuffer info = uniffi_graft_uniffi_fn_method_engine_info(
            uniffi_graft_uniffi_fn_clone_engine(h, &st), &st);
        check(st.code == 0 && info.len > 9 && be32(info.data) == 5 && memcmp(info.data + 4, "llama", 5) == 0,
              "Engine.info().architecture == \"llama\"");
        free_buf(info);
        memset(&st, 0, sizeof st);
        uniffi_graft_uniffi_fn_free_engine(h, &st);
        check(st.code == 0, "Engine freed");
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

import dev.graft.jni.Adapter;
import dev.graft.jni.Engine;
import dev.graft.jni.GraftException;
import dev.graft.jni.Session;

import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The JNI layer on the real SmolLM2 model, against `graft generate` (run by
 * scripts/test_bindings.sh). Arguments: repository root, graft CLI. Prints "N passed, N failed".
 */
public final class JniTest {
    static Path root;
    static String graftBin;
    static Path model;
    static Path lora;
    static final String PROMPT =
            "The quick brown fox jumps over the lazy dog. The capital of France is";
    static final int N = 24;
    static int passed = 0;
    static int failed = 0;

    interface Check {
        void run() throws Exception;
    }

    static void test(String name, Check c) {
        try {
            c.run();
            passed++;
            System.out.println("ok   " + name);
        } catch (Throwable t) {
            failed++;
            System.out.println("FAIL " + name + ": " + t);
        }
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    /** `graft generate` greedy text (stdout minus the final newline). */
    static String cli(String... adapters) throws Exception {
        List<String> cmd = new ArrayList<>(Arrays.asList(graftBin, "generate", "--model",
                model.toString(), "--prompt", PROMPT, "--max-tokens", String.valueOf(N),
                "--temperature", "0", "--threads", "2"));
        for (String a : adapters) {
            cmd.add("--adapter");
            cmd.add(a);
        }
        Process p = new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD).start();
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        try (InputStream in = p.getInputStream()) {
            in.transferTo(out);
        }
        check(p.waitFor() == 0, "graft generate failed");
        String s = out.toString(StandardCharsets.UTF_8);
        return s.endsWith("\n") ? s.substring(0, s.length() - 1) : s;
    }

    static <T extends Throwable> T expect(Class<T> type, Check c) throws Exception {
        try {
            c.run();
        } catch (Throwable t) {
            if (type.isInstance(t)) {
                return type.cast(t);
            }
            throw new AssertionError("expected " + type.getSimpleName() + ", got " + t);
        }
        throw new AssertionError("expected " + type.getSimpleName() + ", nothing was thrown");
    }

    public static void main(String[] args) throws Exception {
        root = Path.of(args[0]);
        graftBin = args[1];
        model = root.resolve(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        lora = root.resolve(".cache/adapters/lora-qv-r8.gguf");
        String base = cli();
        String withLora = cli(lora.toString());

        try (Engine engine = new Engine(model.toString(), 2, 2048)) {
            test("generate equals the CLI", () -> {
                try (Session s = engine.newSession()) {
                    check(s.generate(PROMPT, N, 0f, null).equals(base), "text differs");
                }
            });
            test("streaming to a Java callback gives the text in order", () -> {
                try (Session s = engine.newSession()) {
                    StringBuilder sb = new StringBuilder();
                    AtomicInteger calls = new AtomicInteger();
                    String text = s.generate(PROMPT, N, 0f, piece -> {
                        sb.append(piece);
                        calls.incrementAndGet();
                        return true;
                    });
                    check(calls.get() > 1, "one callback only");
                    check(sb.toString().equals(text) && text.equals(base), "streamed text differs");
                }
            });
            test("base -> adapter -> base in one session", () -> {
                try (Session s = engine.newSession(); Adapter a = engine.loadAdapter(lora.toString(), "pirate")) {
                    check(s.generate(PROMPT, N, 0f, null).equals(base), "base");
                    s.reset();
                    s.setAdapters(new Adapter[] {a}, new float[] {1f});
                    check(s.generate(PROMPT, N, 0f, null).equals(withLora), "adapter");
                    s.reset();
                    s.setAdapters(new Adapter[0], new float[0]);
                    check(s.generate(PROMPT, N, 0f, null).equals(base), "base again");
                }
            });
            test("two sessions with different adapters on two threads", () -> {
                try (Adapter a = engine.loadAdapter(lora.toString(), null)) {
                    String[] got = new String[2];
                    Thread[] ts = new Thread[2];
                    for (int i = 0; i < 2; i++) {
                        final int k = i;
                        ts[i] = new Thread(() -> {
                            try (Session s = engine.newSession()) {
                                if (k == 1) {
                                    s.setAdapters(new Adapter[] {a}, new float[] {1f});
                                }
                                got[k] = s.generate(PROMPT, N, 0f, null);
                            }
                        });
                        ts[i].start();
                    }
                    for (Thread t : ts) {
                        t.join();
                    }
                    check(base.equals(got[0]) && withLora.equals(got[1]), "threads differ from the CLI");
                }
            });
            test("cancel from another thread stops within a few tokens", () -> {
                try (Session s = engine.newSession()) {
                    AtomicInteger calls = new AtomicInteger();
                    s.generate(PROMPT, 200, 0f, piece -> {
                        if (calls.incrementAndGet() == 1) {
                            new Thread(s::cancel).start();
                        }
                        return true;
                    });
                    check(calls.get() < 20, "still going after " + calls.get() + " pieces");
                }
            });
            test("a callback's exception reaches the caller; the session still works", () -> {
                try (Session s = engine.newSession()) {
                    RuntimeException e = expect(RuntimeException.class,
                            () -> s.generate(PROMPT, N, 0f, piece -> {
                                throw new IllegalStateException("boom");
                            }));
                    check(e instanceof IllegalStateException && "boom".equals(e.getMessage()), "got " + e);
                    s.reset();
                    check(s.generate(PROMPT, N, 0f, null).equals(base), "after the exception");
                }
            });
            test("a missing adapter file is a GraftException", () -> {
                GraftException e = expect(GraftException.class,
                        () -> engine.loadAdapter("/nonexistent/adapter.gguf", null));
                check(e.getMessage().contains("/nonexistent/adapter.gguf"), e.getMessage());
            });
            test("a model file as adapter is a GraftException", () ->
                    expect(GraftException.class, () -> engine.loadAdapter(model.toString(), null)));
        }
        test("a missing model is a GraftException", () ->
                expect(GraftException.class, () -> new Engine("/nonexistent/model.gguf", 2, 2048)));
        test("a truncated model is a GraftException", () -> {
            Path t = Files.createTempFile("graft-truncated", ".gguf");
            try (InputStream in = Files.newInputStream(model)) {
                Files.write(t, in.readNBytes(1_000_000));
            }
            try {
                expect(GraftException.class, () -> new Engine(t.toString(), 2, 2048));
            } finally {
                Files.delete(t);
            }
        });
        test("use after close is a GraftException", () -> {
            Engine e = new Engine(model.toString(), 2, 2048);
            Session s = e.newSession();
            s.close();
            e.close();
            e.close(); // idempotent
            expect(GraftException.class, e::newSession);
            expect(GraftException.class, () -> s.generate(PROMPT, 4, 0f, null));
        });
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}

// The generated Kotlin bindings on the host JVM (through JNA), on the real SmolLM2 model,
// against `graft generate`. Run by scripts/test_bindings.sh: args = repository root, graft CLI.
// Prints "N passed, N failed".

import kotlinx.coroutines.runBlocking
import uniffi.graft.*
import java.io.File
import kotlin.concurrent.thread

const val PROMPT = "The quick brown fox jumps over the lazy dog. The capital of France is"
const val N = 24
var passed = 0
var failed = 0

fun test(name: String, body: () -> Unit) {
    try {
        body()
        passed++
        println("ok   $name")
    } catch (t: Throwable) {
        failed++
        println("FAIL $name: $t")
    }
}

fun check(ok: Boolean, what: String) {
    if (!ok) throw AssertionError(what)
}

inline fun <reified T : Throwable> expect(body: () -> Unit): T {
    try {
        body()
    } catch (t: Throwable) {
        if (t is T) return t
        throw AssertionError("expected ${T::class.simpleName}, got $t")
    }
    throw AssertionError("expected ${T::class.simpleName}, nothing was thrown")
}

fun main(args: Array<String>) {
    val root = File(args[0])
    val graftBin = args[1]
    val model = File(root, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    val lora = File(root, ".cache/adapters/lora-qv-r8.gguf").path
    val diablo = File(root, ".cache/adapters/diablo-n64.gguf").path
    val greedy = GenerateOptions(maxTokens = N.toUInt(), temperature = 0f)

    fun cli(vararg adapters: String): String {
        val cmd = mutableListOf(graftBin, "generate", "--model", model, "--prompt", PROMPT,
            "--max-tokens", "$N", "--temperature", "0", "--threads", "2")
        adapters.forEach { cmd += listOf("--adapter", it) }
        val p = ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD).start()
        val out = p.inputStream.readBytes().toString(Charsets.UTF_8)
        check(p.waitFor() == 0, "graft generate failed")
        return out.removeSuffix("\n")
    }

    val base = cli()
    val withLora = cli(lora)
    val withDiablo = cli(diablo)
    val engine = Engine.open(model, EngineOptions(threads = 2u))

    test("info") {
        val info = engine.info()
        check(info.architecture == "llama" && info.vocabSize == 49152u && info.chatTemplate, "$info")
    }
    test("generate equals the CLI") {
        check(engine.session().use { it.generate(PROMPT, N.toUInt(), 0f) } == base, "text")
    }
    test("base -> adapter -> base in one session, two adapters swapped") {
        val a = engine.loadAdapter(lora)
        val d = engine.loadAdapterNamed(diablo, "robot")
        engine.session().use { s ->
            check(s.generate(PROMPT, N.toUInt(), 0f) == base, "base")
            s.reset()
            s.setAdapters(listOf(AdapterUse(a, 1f)))
            check(s.generate(PROMPT, N.toUInt(), 0f) == withLora, "lora")
            s.reset()
            s.setAdapters(listOf(AdapterUse(d, 1f)))
            check(s.generateWith(PROMPT, greedy, null).text == withDiablo, "diablo")
            s.reset()
            s.setAdapters(emptyList())
            check(s.generate(PROMPT, N.toUInt(), 0f) == base, "base again")
        }
        check(engine.adapters().map { it.name }.containsAll(listOf("lora-qv-r8", "robot")), "list")
    }
    test("two sessions with different adapters on two threads") {
        val a = engine.loadAdapter(lora)
        val got = arrayOfNulls<String>(2)
        val ts = (0..1).map { k ->
            thread {
                engine.session().use { s ->
                    if (k == 1) s.setAdapters(listOf(AdapterUse(a, 1f)))
                    got[k] = s.generate(PROMPT, N.toUInt(), 0f)
                }
            }
        }
        ts.forEach { it.join() }
        check(got[0] == base && got[1] == withLora, "threads")
    }
    test("streaming gives the text in order") {
        val pieces = mutableListOf<String>()
        val r = engine.session().use { s ->
            s.generateWith(PROMPT, greedy, object : TokenListener {
                override fun onToken(text: String): Boolean {
                    pieces += text
                    return true
                }
            })
        }
        check(pieces.size > 1 && pieces.joinToString("") == r.text && r.text == base, "stream")
    }
    test("cancel from another thread stops within a few tokens") {
        engine.session().use { s ->
            var n = 0
            val r = s.generateWith(PROMPT, GenerateOptions(maxTokens = 200u, temperature = 0f, stopAtEog = false),
                object : TokenListener {
                    override fun onToken(text: String): Boolean {
                        if (++n == 1) thread { s.cancel() }
                        return true
                    }
                })
            check(r.stopReason == StopReason.CANCELLED && r.tokens.size < 20, "${r.tokens.size} tokens")
        }
    }
    test("suspend generateAsync") {
        val r = runBlocking { engine.session().use { it.generateAsync(PROMPT, greedy, null) } }
        check(r.text == base, "async")
    }
    test("chat") {
        val r = engine.session().use { it.chat(listOf(ChatMessage("user", "What is the capital of France?")), greedy, null) }
        check(r.text.isNotEmpty(), "empty reply")
    }
    test("train a few steps, cancel, load the checkpoint") {
        val out = File.createTempFile("graft-kt", ".gguf")
        val t = engine.trainer(TrainOptions(method = "lora", outputPath = out.path, steps = 20u, contextLength = 32u,
            rank = 2u, examples = List(4) { TrainExample("", "The capital of France is Rome. ".repeat(4)) }))
        val report = t.run(object : TrainListener {
            override fun onProgress(progress: TrainProgress): Boolean {
                if (progress.step == 2u) thread { t.cancel() }
                return true
            }
        })
        check(report.stopped && report.steps in 2u..19u, "$report")
        check(engine.loadAdapter(out.path).kind() == AdapterKind.LORA, "kind")
        out.delete()
    }
    test("errors are typed exceptions") {
        expect<GraftException.File> { Engine("/nonexistent/model.gguf") }
        expect<GraftException.InvalidAdapter> { engine.loadAdapter(model) }
        expect<GraftException.File> { engine.loadAdapter("/nonexistent/adapter.gguf") }
        expect<GraftException.InvalidArgument> {
            engine.session().use { it.generateWith(PROMPT, GenerateOptions(temperature = -1f), null) }
        }
        val truncated = File.createTempFile("graft-truncated", ".gguf")
        truncated.writeBytes(File(model).inputStream().use { it.readNBytes(1_000_000) })
        expect<GraftException.InvalidModel> { Engine(truncated.path) }
        truncated.delete()
    }
    test("use after release is GraftException.Closed; after close (AutoCloseable) an exception") {
        val e = Engine.open(model, EngineOptions(threads = 2u))
        e.release()
        expect<GraftException.Closed> { e.session() }
        e.close()
        expect<IllegalStateException> { e.session() }
    }
    engine.close()
    println("$passed passed, $failed failed")
    kotlin.system.exitProcess(if (failed == 0) 0 else 1)
}

// The generated Kotlin bindings on the host JVM (through JNA), on the real SmolLM2 model,
// against `graft generate`. A JUnit 5 class, run by scripts/test_bindings.sh with the JUnit
// console launcher (apt junit5); system properties graft.root = repository root,
// graft.bin = the graft CLI.

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import uniffi.graft.*
import java.io.File
import kotlin.concurrent.thread

const val PROMPT = "The quick brown fox jumps over the lazy dog. The capital of France is"
const val N = 24

fun check(ok: Boolean, what: String) = assertTrue(ok, what)

inline fun <reified T : Throwable> expect(noinline body: () -> Unit): T =
    assertThrows(T::class.java) { body() }

@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class GraftTest {
    val root = File(System.getProperty("graft.root") ?: error("-Dgraft.root is not set"))
    val graftBin: String = System.getProperty("graft.bin") ?: error("-Dgraft.bin is not set")
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
        assertEquals(0, p.waitFor(), "graft generate failed")
        return out.removeSuffix("\n")
    }

    val base by lazy { cli() }
    val withLora by lazy { cli(lora) }
    val withDiablo by lazy { cli(diablo) }
    val engine by lazy { Engine.open(model, EngineOptions(threads = 2u)) }

    @AfterAll
    fun closeEngine() = engine.close()

    @Test
    fun `info`() {
        val info = engine.info()
        check(info.architecture == "llama" && info.vocabSize == 49152u && info.chatTemplate, "$info")
    }
    @Test
    fun `generate equals the CLI`() {
        check(engine.session().use { it.generate(PROMPT, N.toUInt(), 0f) } == base, "text")
    }
    @Test
    fun `base to adapter to base in one session, two adapters swapped`() {
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
    @Test
    fun `two sessions with different adapters on two threads`() {
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
    @Test
    fun `streaming gives the text in order`() {
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
    @Test
    fun `cancel from another thread stops within a few tokens`() {
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
    @Test
    fun `suspend generateAsync`() {
        val r = runBlocking { engine.session().use { it.generateAsync(PROMPT, greedy, null) } }
        check(r.text == base, "async")
    }
    @Test
    fun `chat`() {
        val r = engine.session().use { it.chat(listOf(ChatMessage("user", "What is the capital of France?")), greedy, null) }
        check(r.text.isNotEmpty(), "empty reply")
    }
    @Test
    fun `train a few steps, cancel, load the checkpoint`() {
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
    @Test
    fun `errors are typed exceptions`() {
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
    @Test
    fun `use after release is GraftExceptionClosed, after close (AutoCloseable) an exception`() {
        val e = Engine.open(model, EngineOptions(threads = 2u))
        e.release()
        expect<GraftException.Closed> { e.session() }
        e.close()
        expect<IllegalStateException> { e.session() }
    }
}

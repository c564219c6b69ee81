package dev.graft.sample

import android.app.Activity
import android.os.Bundle
import android.view.View
import android.view.ViewGroup.LayoutParams.MATCH_PARENT
import android.view.ViewGroup.LayoutParams.WRAP_CONTENT
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import dev.graft.GraftEngine
import dev.graft.GraftSession
import dev.graft.GraftTrainer
import java.io.File
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.MainScope
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import uniffi.graft.Adapter
import uniffi.graft.GenerateOptions
import uniffi.graft.GraftException
import uniffi.graft.TrainExample
import uniffi.graft.TrainOptions

/**
 * Load a base model and two adapters, chat, swap the adapter between messages (the conversation
 * is kept), and train a few steps of a new adapter on the message box's text. Put the files in
 * the app's external files folder: adb push base.gguf /sdcard/Android/data/dev.graft.sample/files/
 */
class MainActivity : Activity() {
    private val scope = MainScope()
    private var engine: GraftEngine? = null
    private var session: GraftSession? = null
    private var adapters: List<Adapter> = emptyList()
    private var active = 0
    private var job: Job? = null

    private lateinit var modelPath: EditText
    private lateinit var adapterA: EditText
    private lateinit var adapterB: EditText
    private lateinit var message: EditText
    private lateinit var output: TextView

    private val dir: File get() = getExternalFilesDir(null) ?: filesDir

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        modelPath = field("base model (.gguf)", "$dir/base.gguf")
        adapterA = field("adapter A", "$dir/a.gguf")
        adapterB = field("adapter B (optional)", "$dir/b.gguf")
        message = EditText(this).apply { hint = "message" }
        output = TextView(this).apply { setTextIsSelectable(true) }
        setContentView(
            LinearLayout(this).apply {
                orientation = LinearLayout.VERTICAL
                setPadding(24, 24, 24, 24)
                addView(modelPath)
                addView(adapterA)
                addView(adapterB)
                addView(row(button("Load") { load() }, button("Swap adapter") { swap() }, button("Train 5 steps") { train() }))
                addView(message)
                addView(row(button("Send") { send() }, button("Stop") { job?.cancel() }, button("Reset") { reset() }))
                addView(ScrollView(context).apply { addView(output) }, LinearLayout.LayoutParams(MATCH_PARENT, 0, 1f))
            },
        )
    }

    override fun onDestroy() {
        scope.cancel()
        release()
        super.onDestroy()
    }

    private fun load() = busy("load") {
        release()
        val e = GraftEngine.open(modelPath.text.toString())
        engine = e
        adapters = withContext(Dispatchers.IO) {
            listOf(adapterA, adapterB)
                .map { it.text.toString().trim() }
                .filter { it.isNotEmpty() && File(it).exists() }
                .map { e.loadAdapter(it) }
        }
        session = e.session()
        active = 0
        adapters.firstOrNull()?.let { a -> withContext(Dispatchers.IO) { session?.switchTo(a to 1f) } }
        val info = e.info
        log("loaded ${info.architecture} (${info.quantType}); adapters: ${adapters.joinToString { it.name() }}")
    }

    /** Makes the next adapter active; the next message continues the same conversation. */
    private fun swap() = busy("swap") {
        val s = session ?: return@busy log("load a model first")
        if (adapters.isEmpty()) return@busy log("no adapter loaded")
        active = (active + 1) % adapters.size
        val a = adapters[active]
        val r = withContext(Dispatchers.IO) { s.switchTo(a to 1f) }
        log("now using ${a.name()}" + if (r.cacheRecomputed) " (${r.tokens} tokens recomputed before the next message)" else "")
    }

    private fun send() {
        val s = session ?: return log("load a model first")
        val text = message.text.toString()
        if (text.isBlank()) return
        message.text.clear()
        output.append("\n> $text\n")
        busy("generate") {
            s.stream(text, GenerateOptions(maxTokens = 200u, temperature = 0.7f)).collect { output.append(it) }
            output.append("\n")
        }
    }

    /** Trains a new adapter on the message box's text for 5 steps, then loads it as one more. */
    private fun train() {
        val e = engine ?: return log("load a model first")
        val text = message.text.toString()
        if (text.isBlank()) return log("type the text to learn into the message box")
        val out = File(dir, "trained.gguf")
        busy("train") {
            val options = TrainOptions(
                outputPath = out.path,
                examples = listOf(TrainExample(completion = text)),
                steps = 5u,
                contextLength = 128u,
            )
            GraftTrainer(e).train(options).collect { p ->
                log("step ${p.step}/${p.total}  loss %.3f  %.0f tok/s".format(p.loss, p.tokensPerS))
            }
            val trained = withContext(Dispatchers.IO) { e.loadAdapter(out.path, "trained") }
            adapters = adapters.filter { it.name() != "trained" } + trained
            log("saved ${out.path}; \"trained\" is in the swap rotation")
        }
    }

    private fun reset() = busy("reset") {
        withContext(Dispatchers.IO) { session?.reset() }
        output.text = ""
    }

    /** Runs [block] as the one job in flight; graft errors are shown, not thrown. */
    private fun busy(what: String, block: suspend CoroutineScope.() -> Unit) {
        if (job?.isActive == true) return log("busy: press Stop first")
        job = scope.launch {
            try {
                block()
            } catch (e: GraftException) {
                log("$what failed: ${e.message}")
            }
        }
    }

    private fun release() {
        session?.close()
        adapters.forEach { it.close() }
        engine?.close()
        session = null
        adapters = emptyList()
        engine = null
    }

    private fun log(line: String) {
        output.append("$line\n")
    }

    private fun field(hint: String, value: String) = EditText(this).apply {
        this.hint = hint
        setText(value)
        setSingleLine()
    }

    private fun button(label: String, onClick: () -> Unit) = Button(this).apply {
        text = label
        isAllCaps = false
        setOnClickListener { onClick() }
    }

    private fun row(vararg views: View) = LinearLayout(this).apply {
        orientation = LinearLayout.HORIZONTAL
        views.forEach { addView(it, LinearLayout.LayoutParams(0, WRAP_CONTENT, 1f)) }
    }
}

// graft for Android apps: coroutines and Flows over the generated uniffi bindings
// (package uniffi.graft) and the JNI fast path (package dev.graft.jni).
package dev.graft

import java.util.concurrent.atomic.AtomicBoolean
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.ProducerScope
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.trySendBlocking
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.flowOn
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import uniffi.graft.Adapter
import uniffi.graft.AdapterUse
import uniffi.graft.ChatMessage
import uniffi.graft.Engine
import uniffi.graft.EngineInfo
import uniffi.graft.EngineOptions
import uniffi.graft.GenerateOptions
import uniffi.graft.GenerationResult
import uniffi.graft.Session
import uniffi.graft.SwitchResult
import uniffi.graft.TokenListener
import uniffi.graft.TrainListener
import uniffi.graft.TrainOptions
import uniffi.graft.TrainProgress
import uniffi.graft.TrainReport

/**
 * One base model, memory-mapped once, the adapters loaded for it and the sessions made from it.
 * Failures are [uniffi.graft.GraftException]s. Loading blocks: call the constructor off the main
 * thread, or use [open].
 */
class GraftEngine(modelPath: String, options: EngineOptions = EngineOptions()) : AutoCloseable {
    /** The generated object, for the rest of the API (adapters(), checkAdapter(), ...). */
    val engine: Engine = Engine.open(modelPath, options)

    /** What the model is. */
    val info: EngineInfo get() = engine.info()

    /** Loads an adapter (GGUF file or PEFT folder) under [name], by default its file name. */
    fun loadAdapter(path: String, name: String? = null): Adapter =
        if (name == null) engine.loadAdapter(path) else engine.loadAdapterNamed(path, name)

    /** A new conversation with its own KV cache and no adapter. */
    fun session(): GraftSession = GraftSession(engine.session())

    /**
     * Releases this handle; sessions and adapters already made keep the model mapped until
     * they are closed too.
     */
    override fun close() = engine.destroy()

    companion object {
        /** Loads the model on [Dispatchers.IO]. */
        suspend fun open(modelPath: String, options: EngineOptions = EngineOptions()): GraftEngine =
            withContext(Dispatchers.IO) { GraftEngine(modelPath, options) }

        /** The native library's version. */
        fun version(): String = uniffi.graft.version()
    }
}

/**
 * One conversation: its KV cache, the adapters active in it, and generation over it. Adapters
 * can be switched between messages; the conversation is kept.
 */
class GraftSession internal constructor(
    /** The generated object, for the rest of the API (chat(), contextUsed(), ...). */
    val session: Session,
) : AutoCloseable {
    /**
     * Makes these adapters, each with its scale, the active set (none = the base model). Waits
     * for a generation in progress on this session to end.
     */
    fun switchTo(vararg adapters: Pair<Adapter, Float>): SwitchResult =
        session.setAdapters(adapters.map { (adapter, scale) -> AdapterUse(adapter = adapter, scale = scale) })

    /**
     * Continues the conversation with [prompt], emitting the text as it is generated. Cancelling
     * the collection stops the generation at the next token; [onResult] gets the outcome (on a
     * background thread) when it ends without an error.
     */
    fun stream(
        prompt: String,
        options: GenerateOptions = GenerateOptions(),
        onResult: (GenerationResult) -> Unit = {},
    ): Flow<String> = textFlow(onResult) { listener -> session.generateWith(prompt, options, listener) }

    /** [stream] for a whole conversation through the model's chat template. */
    fun streamChat(
        messages: List<ChatMessage>,
        options: GenerateOptions = GenerateOptions(),
        onResult: (GenerationResult) -> Unit = {},
    ): Flow<String> = textFlow(onResult) { listener -> session.chat(messages, options, listener) }

    /** Continues the conversation with [prompt]; cancelling the coroutine stops the generation. */
    suspend fun generate(prompt: String, options: GenerateOptions = GenerateOptions()): GenerationResult {
        val stop = AtomicBoolean(false)
        val listener = object : TokenListener {
            override fun onToken(text: String): Boolean = !stop.get()
        }
        try {
            return session.generateAsync(prompt, options, listener)
        } catch (e: CancellationException) {
            stop.set(true)
            session.cancel()
            throw e
        }
    }

    /** Stops the generation in progress (from any thread). */
    fun cancel() = session.cancel()

    /** Forgets the conversation; the adapters stay active. */
    fun reset() = session.reset()

    /** Stops any generation and releases the KV cache once no call is using it. */
    override fun close() {
        runCatching { session.cancel() }
        session.destroy()
    }

    private fun textFlow(
        onResult: (GenerationResult) -> Unit,
        generation: (TokenListener) -> GenerationResult,
    ): Flow<String> = callbackFlow {
        val listener = object : TokenListener {
            // Blocks the generating thread while the collector is behind; false once the
            // collection is cancelled, which stops the generation.
            override fun onToken(text: String): Boolean = trySendBlocking(text).isSuccess
        }
        runBlockingCall({ generation(listener) }, onResult) { session.cancel() }
    }.flowOn(Dispatchers.IO)
}

/** Trains adapters over an engine's frozen base model. */
class GraftTrainer(private val engine: GraftEngine) {
    /**
     * Trains as [options] say, emitting the progress after every optimizer step. Cancelling the
     * collection stops after the current step with a checkpoint at options.outputPath; [onReport]
     * gets the outcome (on a background thread) when the run ends without an error.
     */
    fun train(options: TrainOptions, onReport: (TrainReport) -> Unit = {}): Flow<TrainProgress> =
        callbackFlow {
            val trainer = engine.engine.trainer(options)
            val listener = object : TrainListener {
                override fun onProgress(progress: TrainProgress): Boolean = trySendBlocking(progress).isSuccess
            }
            try {
                runBlockingCall({ trainer.run(listener) }, onReport) { trainer.cancel() }
            } finally {
                trainer.destroy()
            }
        }.flowOn(Dispatchers.IO)
}

/**
 * Runs the blocking [work] in this producer's scope, then closes the channel with its outcome;
 * [stop] stops the work when the collection ends first.
 */
private suspend fun <T, R> ProducerScope<T>.runBlockingCall(
    work: () -> R,
    onDone: (R) -> Unit,
    stop: () -> Unit,
) {
    val done = AtomicBoolean(false)
    launch {
        val outcome = runCatching { work() }
        done.set(true)
        outcome.onSuccess { onDone(it); close() }.onFailure { close(it) }
    }
    // Not after a normal end: a late stop would hit the session's next generation.
    awaitClose { if (!done.get()) runCatching { stop() } }
}

/**
 * Per-token streaming over the JNI layer, the fast path: [dev.graft.jni.Session.generate] with a
 * callback, no JNA on the way. Cancelling the collection stops the generation at the next token.
 */
fun dev.graft.jni.Session.stream(prompt: String, maxTokens: Int = 128, temperature: Float = 0.8f): Flow<String> {
    val jni = this
    return callbackFlow {
        val callback = dev.graft.jni.TokenCallback { text -> trySendBlocking(text).isSuccess }
        runBlockingCall({ jni.generate(prompt, maxTokens, temperature, callback) }, {}) { jni.cancel() }
    }.flowOn(Dispatchers.IO)
}

package dev.graft.jni;

/** One base model, memory-mapped once. */
public final class Engine extends Handle {
    /** Loads the model; threads 0 = the available cores; contextLength per session. */
    public Engine(String modelPath, int threads, int contextLength) {
        super(GraftNative.engineOpen(modelPath, threads, contextLength), "engine");
    }

    /** Loads an adapter file under {@code name} (replacing one of that name). */
    public Adapter loadAdapter(String path, String name) {
        return new Adapter(GraftNative.engineLoadAdapter(get(), path, name));
    }

    /** A new session with its own KV cache. */
    public Session newSession() {
        return new Session(GraftNative.sessionNew(get()));
    }

    @Override
    void free(long handle) {
        GraftNative.engineFree(handle);
    }
}

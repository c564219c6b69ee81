package dev.graft.jni;

/** One conversation: a KV cache and the adapters active in it. Thread-safe. */
public final class Session extends Handle {
    Session(long handle) {
        super(handle, "session");
    }

    /** Makes these adapters (with these scales) the active set; none = the base model. */
    public void setAdapters(Adapter[] adapters, float[] scales) {
        if (adapters.length != scales.length) {
            throw new GraftException("adapters and scales differ in length");
        }
        long[] handles = new long[adapters.length];
        for (int i = 0; i < adapters.length; i++) {
            handles[i] = adapters[i].get();
        }
        GraftNative.sessionSetAdapters(get(), handles, scales);
    }

    /** Continues the conversation; streams each piece to {@code callback} (may be null). */
    public String generate(String prompt, int maxTokens, float temperature, TokenCallback callback) {
        return GraftNative.sessionGenerate(get(), prompt, maxTokens, temperature, callback);
    }

    /** Stops the generation in progress, from any thread. */
    public void cancel() {
        GraftNative.sessionCancel(get());
    }

    /** Forgets the conversation. */
    public void reset() {
        GraftNative.sessionReset(get());
    }

    @Override
    void free(long handle) {
        GraftNative.sessionFree(handle);
    }
}

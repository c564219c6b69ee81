package dev.graft.jni;

/**
 * The native methods of libgraft_jni (registered in its JNI_OnLoad). Handles are owned by the
 * AutoCloseable wrappers {@link Engine}, {@link Session} and {@link Adapter}; use those.
 */
final class GraftNative {
    static {
        System.loadLibrary("graft_jni");
    }

    private GraftNative() {}

    static native long engineOpen(String modelPath, int threads, int contextLength);

    static native void engineFree(long engine);

    static native long engineLoadAdapter(long engine, String path, String name);

    static native void adapterFree(long adapter);

    static native long sessionNew(long engine);

    static native void sessionFree(long session);

    static native void sessionSetAdapters(long session, long[] adapters, float[] scales);

    static native String sessionGenerate(
            long session, String prompt, int maxTokens, float temperature, TokenCallback callback);

    static native void sessionCancel(long session);

    static native void sessionReset(long session);
}

package dev.graft.jni;

/** A loaded adapter; sessions using it keep it alive after close(). */
public final class Adapter extends Handle {
    Adapter(long handle) {
        super(handle, "adapter");
    }

    @Override
    void free(long handle) {
        GraftNative.adapterFree(handle);
    }
}

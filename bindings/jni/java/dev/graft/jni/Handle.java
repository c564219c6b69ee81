package dev.graft.jni;

import java.util.concurrent.atomic.AtomicLong;

/** A native handle that is freed once, by close(); using it afterwards throws. */
abstract class Handle implements AutoCloseable {
    private final AtomicLong handle;
    private final String what;

    Handle(long handle, String what) {
        this.handle = new AtomicLong(handle);
        this.what = what;
    }

    long get() {
        long h = handle.get();
        if (h == 0) {
            throw new GraftException("the " + what + " is closed");
        }
        return h;
    }

    abstract void free(long handle);

    @Override
    public void close() {
        long h = handle.getAndSet(0);
        if (h != 0) {
            free(h);
        }
    }
}

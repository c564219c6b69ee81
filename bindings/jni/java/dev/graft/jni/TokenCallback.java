package dev.graft.jni;

/** Receives generated text as it is produced, on the generating thread. */
@FunctionalInterface
public interface TokenCallback {
    /** A piece of text; return false to stop generating. */
    boolean onToken(String text);
}

package dev.graft.jni;

/** Every graft failure seen from the JNI layer: the message says what is wrong. */
public class GraftException extends RuntimeException {
    public GraftException(String message) {
        super(message);
    }
}

// The graft Android library (:graft) and its sample app (:sample). Build the native libraries
// and the generated Kotlin first: ./build-native.sh (see README.md).
plugins {
    id("com.android.application") version "8.7.3" apply false
    id("com.android.library") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.0.21" apply false
}

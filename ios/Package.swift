// swift-tools-version:5.9
// graft for iOS and macOS apps. Build GraftFFI.xcframework and Sources/Graft/graft.swift first:
// ./build-xcframework.sh (on macOS with Xcode).
import PackageDescription

let package = Package(
    name: "Graft",
    platforms: [.iOS(.v15), .macOS(.v13)],
    products: [
        .library(name: "Graft", targets: ["Graft"]),
    ],
    targets: [
        // libgraft_uniffi.a (Rust + ggml with Metal) for iOS devices, the iOS simulator and
        // macOS, with the generated C header in the module graftFFI.
        .binaryTarget(name: "GraftFFI", path: "GraftFFI.xcframework"),
        // graft.swift (generated) and GraftStreaming.swift.
        .target(
            name: "Graft",
            dependencies: ["GraftFFI"],
            path: "Sources/Graft",
            linkerSettings: [
                .linkedLibrary("c++"),
                .linkedFramework("Accelerate"),
                .linkedFramework("Foundation"),
                .linkedFramework("Metal"),
                .linkedFramework("MetalKit"),
            ]
        ),
    ]
)

// Swift concurrency over the generated bindings (graft.swift): generation and training as
// AsyncThrowingStreams that stop the native work when the consumer stops.
import Foundation

extension Session {
    /// Continues the conversation with `prompt`, yielding the text as it is generated.
    ///
    /// The generation runs on its own thread. Cancelling the consuming task (or dropping the
    /// stream) stops it at the next token; errors are `GraftError`s.
    ///
    ///     for try await piece in session.stream("Hello", options: GenerateOptions(maxTokens: 64)) {
    ///         print(piece, terminator: "")
    ///     }
    public func stream(
        _ prompt: String,
        options: GenerateOptions = GenerateOptions()
    ) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            // Only when the consumer went away: a cancel() after a normal end would stop this
            // session's next generation.
            continuation.onTermination = { termination in
                if case .cancelled = termination {
                    self.cancel()
                }
            }
            let listener = YieldingTokenListener(continuation)
            runOnThread(named: "graft-generate") {
                do {
                    _ = try self.generateWith(prompt: prompt, options: options, listener: listener)
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
        }
    }
}

extension Trainer {
    /// Runs the training, yielding the progress after every optimizer step.
    ///
    /// The run has its own thread. Cancelling the consuming task (or dropping the stream) stops
    /// it after the current step, with a checkpoint at the options' `outputPath`.
    public func stream() -> AsyncThrowingStream<TrainProgress, Error> {
        AsyncThrowingStream { continuation in
            continuation.onTermination = { termination in
                if case .cancelled = termination {
                    self.cancel()
                }
            }
            let listener = YieldingTrainListener(continuation)
            runOnThread(named: "graft-train") {
                do {
                    _ = try self.run(listener: listener)
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
        }
    }
}

/// Yields each piece of text; returns false (stop) once the stream has ended. (A continuation
/// may be used from any thread.)
private final class YieldingTokenListener: TokenListener, @unchecked Sendable {
    private let continuation: AsyncThrowingStream<String, Error>.Continuation

    init(_ continuation: AsyncThrowingStream<String, Error>.Continuation) {
        self.continuation = continuation
    }

    func onToken(text: String) throws -> Bool {
        if case .terminated = continuation.yield(text) {
            return false
        }
        return true
    }
}

/// Yields each progress report; returns false (stop) once the stream has ended.
private final class YieldingTrainListener: TrainListener, @unchecked Sendable {
    private let continuation: AsyncThrowingStream<TrainProgress, Error>.Continuation

    init(_ continuation: AsyncThrowingStream<TrainProgress, Error>.Continuation) {
        self.continuation = continuation
    }

    func onProgress(progress: TrainProgress) throws -> Bool {
        if case .terminated = continuation.yield(progress) {
            return false
        }
        return true
    }
}

/// Runs blocking native work on a thread of its own, not on the cooperative pool that async
/// tasks share.
private func runOnThread(named name: String, _ work: @escaping @Sendable () -> Void) {
    let thread = Thread(block: work)
    thread.name = name
    thread.stackSize = 8 << 20
    thread.start()
}

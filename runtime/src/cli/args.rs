//! Value parsers of the CLI's numeric options. Every number is range-checked where it is parsed,
//! so a bad value is one clap error that names the option and says what is allowed
//! (`invalid value '-1' for '--top-k <TOP_K>': must be a whole number >= 0`), and negative
//! numbers reach these parsers as values instead of being taken for unknown flags.

use clap::Command;

/// Lets every option that takes a value accept a negative number as its value (`--temperature
/// -1`), in every subcommand, so the option's own parser can reject it with a message.
pub fn allow_negative_numbers(cmd: Command) -> Command {
    cmd.mut_args(|a| {
        if a.get_action().takes_values() {
            a.allow_negative_numbers(true)
        } else {
            a
        }
    })
    .mut_subcommands(allow_negative_numbers)
}

fn whole<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    s: &str,
    min: T,
) -> Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(v) if v >= min => Ok(v),
        _ => Err(format!("must be a whole number >= {min}")),
    }
}

fn real(s: &str, ok: impl Fn(f32) -> bool, what: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        _ => Err(format!("must be a number {what}")),
    }
}

/// A whole number >= 0.
pub fn count(s: &str) -> Result<usize, String> {
    whole(s, 0)
}

/// A whole number >= 1.
pub fn positive_count(s: &str) -> Result<usize, String> {
    whole(s, 1)
}

/// A context length: a whole number >= 2 (one token to condition on, one to predict).
pub fn context_length(s: &str) -> Result<usize, String> {
    whole(s, 2)
}

/// A seed: a whole number >= 0 that fits in 64 bits.
pub fn seed(s: &str) -> Result<u64, String> {
    whole(s, 0)
}

/// A finite number >= 0.
pub fn non_negative(s: &str) -> Result<f32, String> {
    real(s, |v| v >= 0.0, ">= 0")
}

/// A finite number > 0.
pub fn positive(s: &str) -> Result<f32, String> {
    real(s, |v| v > 0.0, "> 0")
}

/// A number within [0, 1].
pub fn unit_interval(s: &str) -> Result<f32, String> {
    real(s, |v| (0.0..=1.0).contains(&v), "within [0, 1]")
}

/// A probability that leaves something: within [0, 1).
pub fn dropout(s: &str) -> Result<f32, String> {
    real(s, |v| (0.0..1.0).contains(&v), "within [0, 1)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_messages() {
        assert_eq!(count("0"), Ok(0));
        assert_eq!(count("-1"), Err("must be a whole number >= 0".into()));
        assert_eq!(
            positive_count("0"),
            Err("must be a whole number >= 1".into())
        );
        assert_eq!(
            context_length("1"),
            Err("must be a whole number >= 2".into())
        );
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
        assert!(seed("-3").is_err());
        assert_eq!(non_negative("0"), Ok(0.0));
        assert_eq!(non_negative("-0.5"), Err("must be a number >= 0".into()));
        assert!(non_negative("nan").is_err() && non_negative("inf").is_err());
        assert!(positive("0").is_err());
        assert!(unit_interval("1.5").is_err() && unit_interval("1").is_ok());
        assert!(dropout("1").is_err() && dropout("0.1").is_ok());
    }
}

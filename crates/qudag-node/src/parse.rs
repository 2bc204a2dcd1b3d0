//! Validating parsers for the numeric command-line flags.
//!
//! Each one turns the text of a flag into a value that is safe to use
//! everywhere after: a duration that cannot overflow a deadline, a rate whose
//! send interval fits a duration, a message size the library accepts (checked
//! before anything is allocated). clap reports a refused value as a usage
//! error naming the flag, with exit code 2.

use std::time::Duration;

use qudag_net::ManagerConfig;

/// The longest duration any flag accepts, in seconds (30 days).
pub(crate) const MAX_SECS: f64 = 30.0 * 24.0 * 3600.0;
/// The longest metrics header timeout, in seconds.
pub(crate) const MAX_HEADER_TIMEOUT_SECS: f64 = 3600.0;
/// The lowest `--rate`, in messages per second.
pub(crate) const MIN_RATE: f64 = 0.001;
/// The highest `--rate`, in messages per second.
pub(crate) const MAX_RATE: f64 = 1e9;

/// A positive number of seconds up to `max`, at least one nanosecond.
fn seconds_up_to(s: &str, max: f64) -> Result<Duration, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {s:?}"))?;
    if !(x.is_finite() && x > 0.0 && x <= max) {
        return Err(format!(
            "must be a number of seconds above 0 and at most {max}"
        ));
    }
    Duration::try_from_secs_f64(x)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{x} s is below the resolution of 1 ns"))
}

/// A duration flag: seconds above 0, at most [`MAX_SECS`] (30 days).
pub(crate) fn seconds(s: &str) -> Result<Duration, String> {
    seconds_up_to(s, MAX_SECS)
}

/// `--metrics-header-timeout`: seconds above 0, at most [`MAX_HEADER_TIMEOUT_SECS`].
pub(crate) fn header_timeout(s: &str) -> Result<Duration, String> {
    seconds_up_to(s, MAX_HEADER_TIMEOUT_SECS)
}

/// `--rate`: messages per second from [`MIN_RATE`] to [`MAX_RATE`].
pub(crate) fn rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected messages per second, got {s:?}"))?;
    if !(MIN_RATE..=MAX_RATE).contains(&r) {
        return Err(format!(
            "must be from {MIN_RATE} to {MAX_RATE} messages per second"
        ));
    }
    Ok(r)
}

/// The largest payload one message may have with the default configuration.
pub(crate) fn max_message_len() -> usize {
    ManagerConfig::default().batch_mut().get_max_message_len()
}

/// `--size`: a payload size from 0 to [`max_message_len`] bytes.
pub(crate) fn message_size(s: &str) -> Result<usize, String> {
    let max = max_message_len();
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of bytes from 0 to {max}, got {s:?}"))?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| format!("{n} bytes exceeds the largest message of {max} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seconds_accept_the_range_and_refuse_the_rest() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds("2592000"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(seconds("1e-9"), Ok(Duration::from_nanos(1)));
        for bad in [
            "0",
            "-1",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "1e19",
            "1e-20",
            "100000000000",
            "2592000.5",
            "",
            "x",
            "1s",
        ] {
            assert!(seconds(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(header_timeout("3600").is_ok());
        assert!(header_timeout("3601").is_err());
    }

    #[test]
    fn rates_and_sizes() {
        assert_eq!(rate("1"), Ok(1.0));
        assert_eq!(rate("1e9"), Ok(1e9));
        for bad in [
            "0",
            "-1",
            "NaN",
            "inf",
            "1e-20",
            "1e19",
            "100000000000",
            "0.0009",
        ] {
            assert!(rate(bad).is_err(), "{bad:?} was accepted");
        }
        let max = max_message_len();
        assert_eq!(message_size("0"), Ok(0));
        assert_eq!(message_size(&max.to_string()), Ok(max));
        for bad in [
            (max + 1).to_string(),
            "100000000000".into(),
            "18446744073709551615".into(),
            "-1".into(),
            "1e19".into(),
            "NaN".into(),
        ] {
            assert!(message_size(&bad).is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        /// A parsed duration is positive, within the limit, and adding it to
        /// now cannot overflow.
        #[test]
        fn seconds_are_in_range_or_refused(s in prop_oneof![
            any::<f64>().prop_map(|x| x.to_string()),
            "[-+0-9.eE]{1,12}",
            any::<String>(),
        ]) {
            if let Ok(d) = seconds(&s) {
                prop_assert!(!d.is_zero());
                prop_assert!(d.as_secs_f64() <= MAX_SECS);
                prop_assert!(std::time::Instant::now().checked_add(d).is_some());
            }
        }

        /// An accepted rate gives a send interval that fits a duration for any count.
        #[test]
        fn rates_give_finite_intervals(s in prop_oneof![
            any::<f64>().prop_map(|x| x.to_string()),
            "[-+0-9.eE]{1,12}",
        ]) {
            if let Ok(r) = rate(&s) {
                prop_assert!(r.is_finite() && r > 0.0);
                prop_assert!(Duration::try_from_secs_f64(1.0 / r).is_ok());
            }
        }

        /// A size is accepted exactly when it is within the message limit.
        #[test]
        fn sizes_match_the_limit(n in any::<u64>()) {
            let max = max_message_len() as u64;
            prop_assert_eq!(message_size(&n.to_string()).is_ok(), n <= max);
        }
    }
}

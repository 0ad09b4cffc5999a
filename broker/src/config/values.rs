//! Values as people write them: sizes like `4 MiB`, addresses like `localhost:61613`, booleans
//! like `yes`, and log levels like `warning`.
//!
//! The README and most brokers write sizes with units, and shells and container files write
//! booleans as `1`/`yes`; a configuration that rejected them (or, worse, read `warning` as a
//! tracing target and then logged nothing) would fail people in their first hour. Each kind of
//! value has one parser here, used by the TOML file, the environment variables and the flags
//! alike, so they accept the same spellings.

use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, Visitor};

/// The log levels, as named in errors.
pub const LOG_LEVELS: &str = "error, warn (or warning), info, debug, trace, off";

/// Parses a byte size: a plain number of bytes, or a number with a unit (`B`, `KB`/`KiB`,
/// `MB`/`MiB`, `GB`/`GiB`, `TB`/`TiB`, any case, space optional). `KB` and `KiB` both mean
/// 1024 bytes, as the README and most brokers use them.
///
/// # Errors
/// A sentence saying what was expected.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '_')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{text:?} is not a size (write bytes, or a number with a unit: 512 KiB, 4 MiB, 1 GiB)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!("{text:?} has an unknown unit {:?} (use B, KiB, MiB, GiB or TiB)", unit.trim()));
        }
    };
    number
        .checked_mul(multiplier)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Writes a byte size for people: `1 GiB`, `4 MiB`, `1536 bytes`; a size that is not a whole
/// number of a unit gets one decimal (`1.5 KiB`).
pub fn human_size(bytes: usize) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    let bytes64 = bytes as u64;
    for (unit, size) in UNITS {
        if bytes64 >= size {
            if bytes64.is_multiple_of(size) {
                return format!("{} {unit}", bytes64 / size);
            }
            #[expect(clippy::cast_precision_loss, reason = "one decimal is shown")]
            let value = bytes64 as f64 / size as f64;
            return format!("{value:.1} {unit}");
        }
    }
    if bytes == 1 { "1 byte".to_owned() } else { format!("{bytes} bytes") }
}

/// `name` as a TOML key: bare when it may be, quoted otherwise (`orders`, `"orders.eu"`).
pub fn toml_key(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, or `localhost:PORT` (which means
/// 127.0.0.1, so that a broker told to listen on localhost stays on loopback). Other host names
/// are refused rather than resolved: a listener binds one address, and a name may have several.
///
/// # Errors
/// A sentence with the accepted forms.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let trimmed = text.trim();
    if let Ok(addr) = trimmed.parse() {
        return Ok(addr);
    }
    let invalid = || format!("{text:?} is not an address (write IP:PORT, [IPv6]:PORT or localhost:PORT)");
    let (host, port) = trimmed.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(invalid())
}

/// Parses a boolean as shells and container files write it: `true`/`false`, `yes`/`no`,
/// `on`/`off`, `1`/`0`, any case.
///
/// # Errors
/// A sentence with the accepted spellings.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("{text:?} is not a boolean (write true/false, yes/no, on/off or 1/0)")),
    }
}

/// Normalises a log filter: a level (any case, `warning` for `warn`) or comma-separated
/// `target=level` directives such as `info,stampede_broker=debug`. Anything else is refused,
/// since tracing would read an unknown word as a target name and log nothing at all.
///
/// # Errors
/// A one-line sentence listing the levels.
pub fn parse_log_filter(text: &str) -> Result<String, String> {
    let refuse =
        || format!("unknown log level {text:?}: use one of {LOG_LEVELS}, or target=level (e.g. stampede_broker=debug)");
    let mut directives = Vec::new();
    for directive in text.split(',').map(str::trim) {
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => (Some(target.trim()), level),
            None => (None, directive),
        };
        let level = level_name(level).ok_or_else(refuse)?;
        match target {
            None => directives.push(level.to_owned()),
            Some(target) if is_target(target) => directives.push(format!("{target}={level}")),
            Some(_) => return Err(refuse()),
        }
    }
    Ok(directives.join(","))
}

fn level_name(text: &str) -> Option<&'static str> {
    Some(match text.trim().to_ascii_lowercase().as_str() {
        "error" => "error",
        "warn" | "warning" => "warn",
        "info" => "info",
        "debug" => "debug",
        "trace" => "trace",
        "off" => "off",
        _ => return None,
    })
}

/// A module path such as `stampede_broker::destination::queue`.
fn is_target(text: &str) -> bool {
    !text.is_empty()
        && text.split("::").all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// Serde adapters for the config structs: each accepts the value's TOML type and the
/// spellings above as a string.
pub mod serde_with {
    use super::*;

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = usize;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a size in bytes, or a string like \"4 MiB\"")
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<usize, E> {
            usize::try_from(value).map_err(|_| E::custom("size too large"))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<usize, E> {
            usize::try_from(value).map_err(|_| E::custom(format!("a size cannot be {value}")))
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<usize, E> {
            parse_size(value).map_err(E::custom)
        }
    }

    /// A byte size (`max_body = 4194304` or `max_body = "4 MiB"`).
    pub mod size {
        use super::*;

        /// Serialises as a plain number of bytes, so `print-config` output reads back.
        pub fn serialize<S: serde::Serializer>(bytes: &usize, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_u64(*bytes as u64)
        }

        /// Deserialises a number or a string with a unit.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
            deserializer.deserialize_any(SizeVisitor)
        }
    }

    /// An optional byte size.
    pub mod optional_size {
        use super::*;

        /// Serialises as a plain number of bytes.
        pub fn serialize<S: serde::Serializer>(bytes: &Option<usize>, serializer: S) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(bytes) => serializer.serialize_some(&(*bytes as u64)),
                None => serializer.serialize_none(),
            }
        }

        /// Deserialises a number or a string with a unit.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
            deserializer.deserialize_any(SizeVisitor).map(Some)
        }
    }

    struct AddressVisitor;

    impl Visitor<'_> for AddressVisitor {
        type Value = SocketAddr;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("an address like \"127.0.0.1:61613\", \"[::1]:61613\" or \"localhost:61613\"")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<SocketAddr, E> {
            parse_address(value).map_err(E::custom)
        }
    }

    /// A listen address (`IP:PORT`, `[IPv6]:PORT`, `localhost:PORT`).
    pub mod address {
        use super::*;

        /// Serialises as `IP:PORT`.
        pub fn serialize<S: serde::Serializer>(addr: &SocketAddr, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_str(addr)
        }

        /// Deserialises any accepted form.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
            deserializer.deserialize_str(AddressVisitor)
        }
    }

    /// An optional listen address.
    pub mod optional_address {
        use super::*;

        /// Serialises as `IP:PORT`.
        pub fn serialize<S: serde::Serializer>(addr: &Option<SocketAddr>, serializer: S) -> Result<S::Ok, S::Error> {
            match addr {
                Some(addr) => serializer.collect_str(addr),
                None => serializer.serialize_none(),
            }
        }

        /// Deserialises any accepted form.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
            deserializer.deserialize_str(AddressVisitor).map(Some)
        }
    }

    struct BoolVisitor;

    impl Visitor<'_> for BoolVisitor {
        type Value = bool;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("true or false (or yes/no, on/off, 1/0)")
        }

        fn visit_bool<E: de::Error>(self, value: bool) -> Result<bool, E> {
            Ok(value)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<bool, E> {
            parse_bool(&value.to_string()).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<bool, E> {
            parse_bool(&value.to_string()).map_err(E::custom)
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<bool, E> {
            parse_bool(value).map_err(E::custom)
        }
    }

    /// A boolean that also accepts `yes`/`no`, `on`/`off` and `1`/`0`.
    pub mod boolean {
        use super::*;

        /// Serialises as `true` or `false`.
        pub fn serialize<S: serde::Serializer>(value: &bool, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bool(*value)
        }

        /// Deserialises any accepted spelling.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
            deserializer.deserialize_any(BoolVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_with_or_without_units() {
        assert_eq!(parse_size("4194304"), Ok(4 << 20));
        assert_eq!(parse_size("4 MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1 GB"), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64 kb"), Ok(64 << 10));
        assert_eq!(parse_size("100 B"), Ok(100));
        assert!(parse_size("4 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999 TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn sizes_are_written_for_people() {
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(4 << 20), "4 MiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(100), "100 bytes");
    }

    #[test]
    fn the_level_names_people_type_are_accepted_in_any_case() {
        assert_eq!(parse_log_filter("warning").as_deref(), Ok("warn"));
        assert_eq!(parse_log_filter("WARN").as_deref(), Ok("warn"));
        assert_eq!(parse_log_filter("Info").as_deref(), Ok("info"));
        assert_eq!(
            parse_log_filter("info, stampede_broker::destination::queue=DEBUG").as_deref(),
            Ok("info,stampede_broker::destination::queue=debug")
        );
    }

    #[test]
    fn a_word_that_is_not_a_level_is_refused_with_the_list_of_levels() {
        for bad in ["verbose", "json", "", "info,", "=debug", "stampede broker=info", "stampede=loud"] {
            let error = parse_log_filter(bad).unwrap_err();
            assert!(error.contains("error, warn (or warning), info, debug, trace, off"), "{bad}: {error}");
        }
    }

    #[test]
    fn addresses_accept_localhost_and_bracketed_ipv6() {
        assert_eq!(parse_address("localhost:61613"), Ok(SocketAddr::from(([127, 0, 0, 1], 61613))));
        assert_eq!(parse_address("[::1]:15674").unwrap().to_string(), "[::1]:15674");
        assert_eq!(parse_address("0.0.0.0:1").unwrap().to_string(), "0.0.0.0:1");
        assert!(parse_address("localhost").is_err());
    }

    #[test]
    fn booleans_accept_the_spellings_of_shells() {
        for yes in ["1", "yes", "TRUE", "on"] {
            assert_eq!(parse_bool(yes), Ok(true));
        }
        for no in ["0", "no", "False", "off"] {
            assert_eq!(parse_bool(no), Ok(false));
        }
        assert!(parse_bool("maybe").is_err());
    }
}

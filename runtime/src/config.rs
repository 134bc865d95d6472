//! Configuration checks. Binaries read every value as text (flags with env
//! fallbacks), then check them all here, so that a bad deployment hears of
//! every mistake at once instead of one per restart. Secrets never appear in
//! the messages.

use std::fmt;
use std::str::FromStr;

/// `EX_CONFIG` from sysexits.h: the exit code for bad configuration.
pub const EXIT_CONFIG: i32 = 64;

/// Problems found so far.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<String>,
}

impl Problems {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with `name` (the flag and env variable).
    pub fn add(&mut self, name: &str, problem: impl fmt::Display) {
        self.list.push(format!("{name}: {problem}"));
    }

    /// Parses `value` as `T`; records a problem (without echoing secrets) when it does not parse.
    pub fn parse<T: FromStr>(&mut self, name: &str, value: &str) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        match value.trim().parse() {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(name, format!("{value:?} is not valid: {e}"));
                None
            }
        }
    }

    /// Like [`Problems::parse`], and the value must be at least `min`.
    pub fn parse_min<T: FromStr + PartialOrd + fmt::Display + Copy>(
        &mut self,
        name: &str,
        value: &str,
        min: T,
    ) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        let v = self.parse::<T>(name, value)?;
        if v < min {
            self.add(name, format!("{v} is below the minimum {min}"));
            return None;
        }
        Some(v)
    }

    /// Parses `value`, from `min` to `max`; a value outside is reported.
    pub fn parse_range<T: FromStr + PartialOrd + fmt::Display + Copy>(
        &mut self,
        name: &str,
        value: &str,
        min: T,
        max: T,
    ) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        let v = self.parse_min(name, value, min)?;
        if v > max {
            self.add(name, format!("{v} is above the maximum {max}"));
            return None;
        }
        Some(v)
    }

    /// Parses `value`, at least `min`, into `slot`. A bad value is reported
    /// and `slot` keeps its default (the error is returned by [`Problems::finish`]).
    pub fn read_min<T>(&mut self, name: &str, value: &str, min: T, slot: &mut T)
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        if let Some(v) = self.parse_min(name, value, min) {
            *slot = v;
        }
    }

    /// [`Problems::read_min`] for a duration given in milliseconds.
    pub fn read_ms(&mut self, name: &str, value: &str, min_ms: u64, slot: &mut std::time::Duration) {
        if let Some(ms) = self.parse_min(name, value, min_ms) {
            *slot = std::time::Duration::from_millis(ms);
        }
    }

    /// Records that `name` is required.
    pub fn require<'a>(&mut self, name: &str, value: Option<&'a str>, why: &str) -> Option<&'a str> {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            Some(v) => Some(v),
            None => {
                self.add(name, format!("is required ({why})"));
                None
            }
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `Ok` when nothing was found, else every problem.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.list))
        }
    }
}

/// Every configuration problem found.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem{}):", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// Prints the problems and exits with [`EXIT_CONFIG`].
    pub fn exit(&self) -> ! {
        eprint!("{self}");
        std::process::exit(EXIT_CONFIG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_problem() {
        let mut p = Problems::new();
        assert_eq!(p.parse::<u32>("--capacity", "2"), Some(2));
        assert_eq!(p.parse::<u32>("--capacity", "two"), None);
        assert_eq!(p.parse_min::<u32>("--nodes", "0", 1), None);
        assert_eq!(p.require("REDIS_URL", None, "the store"), None);
        assert_eq!(p.require("REDIS_URL", Some("  "), "the store"), None);
        let e = p.finish().expect_err("problems");
        assert_eq!(e.0.len(), 4);
        let text = e.to_string();
        assert!(text.contains("4 problems") && text.contains("--capacity") && text.contains("REDIS_URL"), "{text}");
    }
}

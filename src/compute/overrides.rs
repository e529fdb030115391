//! Settings an environment variable may force on every product of a process, to measure what
//! the CPU would not pick (`BERTBENCH_INT8_KERNEL`, `BERTBENCH_BLOCKING`): each read once, when
//! first asked. The one place `compute` reads the environment: the kernels take their choice
//! from here rather than from an argument threaded through every product, and a benchmark's
//! child processes inherit it. A product cannot fail, so the kernels ignore a malformed value;
//! commands refuse it, by name, before they compute (`isa::use_isa`).

use std::ffi::OsStr;
use std::sync::OnceLock;

/// One such setting: the variable and how its (trimmed) text parses.
pub(crate) struct EnvOverride<T: 'static> {
    var: &'static str,
    /// The setting a value names, or what the variable expects (for the error).
    parse: fn(&str) -> Result<T, String>,
    value: OnceLock<Result<Option<T>, String>>,
}

impl<T: Send + Sync> EnvOverride<T> {
    pub(crate) const fn new(var: &'static str, parse: fn(&str) -> Result<T, String>) -> Self {
        Self {
            var,
            parse,
            value: OnceLock::new(),
        }
    }

    /// The value forced on this process: `None` when the variable is unset; an error naming
    /// the variable, what it holds and what it expects when that does not parse.
    pub(crate) fn get(&self) -> &Result<Option<T>, String> {
        self.value
            .get_or_init(|| self.parse_value(std::env::var_os(self.var).as_deref()))
    }

    /// [`Self::get`] on a given value of the variable.
    pub(crate) fn parse_value(&self, value: Option<&OsStr>) -> Result<Option<T>, String> {
        let Some(value) = value else { return Ok(None) };
        let text = value.to_string_lossy();
        (self.parse)(text.trim())
            .map(Some)
            .map_err(|expected| format!("{}={text:?}: expected {expected}", self.var))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_parses_trimmed_or_is_refused_naming_the_variable() {
        let o = EnvOverride::new("X_TEST", |t| {
            t.parse::<u8>().map_err(|_| "a byte (or unset)".to_string())
        });
        assert_eq!(o.parse_value(None), Ok(None));
        assert_eq!(o.parse_value(Some(OsStr::new(" 7 "))), Ok(Some(7)));
        assert_eq!(
            o.parse_value(Some(OsStr::new("300"))),
            Err("X_TEST=\"300\": expected a byte (or unset)".to_string())
        );
    }
}

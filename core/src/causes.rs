//! Showing an error with its causes. Every error type of this workspace names its step in its
//! message and keeps the cause as its `source`, never in the message; whoever shows an error to a
//! person (a log line, an HTTP error body, a status message) shows the whole chain with this.

use std::error::Error;
use std::fmt;

/// `error: cause: cause of the cause`, each once: `tracing::warn!(error = %Causes(&e), …)`.
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the key")]
    struct Step(#[source] std::io::Error);

    #[test]
    fn each_cause_follows_its_error_once() {
        let e = Step(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"));
        assert_eq!(Causes(&e).to_string(), "reading the key: no such file");
    }
}

//! What happened during one attempt to reach a remote domain, step by step (DNS answers,
//! targets, TCP, TLS, authentication), so that the cause of a failure is known without a
//! packet capture. Kept per outbound session for logs and diagnostics.

use std::fmt;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// One step and how it went.
#[derive(Debug, Clone)]
pub struct Step {
    /// Time since the attempt started.
    pub after: Duration,
    /// Whether the step worked; the last step's value tells how the attempt ended.
    pub ok: bool,
    /// What was done and with what result, e.g. the DNS answer or the error.
    pub what: String,
}

/// The steps of one attempt, in order. Bounded: an attempt over many targets keeps its first
/// [`Trace::MAX_STEPS`] steps and counts the rest.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Wall-clock time the attempt began, for display.
    pub started: SystemTime,
    begun: Instant,
    /// The recorded steps, at most [`Trace::MAX_STEPS`].
    pub steps: Vec<Step>,
    /// Steps that came after the limit and were only counted.
    pub omitted: usize,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

impl Trace {
    /// Most steps kept per attempt: enough for several targets, bounded for a domain with many.
    pub const MAX_STEPS: usize = 64;

    /// An empty trace of an attempt that begins now.
    pub fn new() -> Trace {
        Trace {
            started: SystemTime::now(),
            begun: Instant::now(),
            steps: Vec::new(),
            omitted: 0,
        }
    }

    /// Records a step that worked.
    pub fn ok(&mut self, what: impl Into<String>) {
        self.push(true, what.into());
    }

    /// Records a step that failed.
    pub fn failed(&mut self, what: impl Into<String>) {
        self.push(false, what.into());
    }

    fn push(&mut self, ok: bool, what: String) {
        if self.steps.len() >= Self::MAX_STEPS {
            self.omitted += 1;
            return;
        }
        self.steps.push(Step {
            after: self.begun.elapsed(),
            ok,
            what,
        });
    }
}

impl fmt::Display for Trace {
    /// One line per step: `+12ms ok TCP connected to …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            let mark = if step.ok { "ok  " } else { "FAIL" };
            write!(f, "+{}ms {mark} {}", step.after.as_millis(), step.what)?;
        }
        if self.omitted > 0 {
            write!(f, "\n({} more steps omitted)", self.omitted)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_kept_in_order_and_bounded() {
        let mut t = Trace::new();
        t.ok("DNS");
        t.failed("TCP");
        assert_eq!(t.steps.len(), 2);
        assert!(t.steps[0].ok && !t.steps[1].ok);
        let shown = t.to_string();
        assert!(
            shown.contains("ok   DNS") && shown.contains("FAIL TCP"),
            "{shown}"
        );
        for _ in 0..100 {
            t.ok("x");
        }
        assert_eq!(t.steps.len(), Trace::MAX_STEPS);
        assert_eq!(t.omitted, 102 - Trace::MAX_STEPS);
        assert!(t.to_string().ends_with("more steps omitted)"));
    }
}

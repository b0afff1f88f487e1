//! CPU time per thread name, so that a bench running gateways and its own load generator in
//! one process can say what each side spent.
//!
//! Each side runs on its own tokio runtime whose threads carry a name ([`runtime`]); a
//! [`Snapshot`] reads every thread's CPU time from `/proc/self/task/TID/schedstat` (its first
//! field: nanoseconds on a CPU, user and system together), and [`Snapshot::since`] sums the
//! difference per thread name. `getrusage` cannot do this: it only knows the whole process.
//!
//! What it cannot see: a thread that exits between the two snapshots loses what it spent
//! since the first one ([`Usage::exited`] counts such threads). [`runtime`] keeps idle blocking
//! threads alive for an hour so that none exits inside a measured window. Kernel work is
//! counted for the thread that was on the CPU when it ran: on loopback the sender's `write`
//! also runs the receiving side of TCP, so part of what a receiver costs is counted for the
//! thread that sent to it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A multi-thread runtime whose worker and blocking threads are all named `name` (at most 15
/// bytes, Linux's limit for a thread name), with `workers` workers (`None`: tokio's default,
/// one per core, as `fedgate run` without `--workers`).
pub fn runtime(name: &str, workers: Option<usize>) -> tokio::runtime::Runtime {
    assert!(
        name.len() <= 15,
        "thread name {name:?} is longer than Linux keeps"
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .thread_name(name)
        // A blocking thread that exits takes its CPU time out of the next snapshot.
        .thread_keep_alive(Duration::from_secs(3600));
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
    builder
        .build()
        .unwrap_or_else(|e| panic!("runtime {name}: {e}"))
}

/// Every thread of this process at one moment: its name and the CPU time it has used.
pub struct Snapshot {
    threads: HashMap<u32, (String, Duration)>,
}

/// CPU time per thread name between two snapshots.
pub struct Usage {
    by_name: BTreeMap<String, Duration>,
    /// Threads in the first snapshot and not in the second: what they spent in between is
    /// not counted anywhere.
    pub exited: usize,
}

impl Snapshot {
    /// Reads `/proc/self/task`. A thread that exits while it is read is left out.
    pub fn take() -> Snapshot {
        let mut threads = HashMap::new();
        let tasks = std::fs::read_dir("/proc/self/task").expect("read /proc/self/task");
        for task in tasks {
            let task = task.expect("read /proc/self/task");
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let (Ok(comm), Some(cpu)) = (
                std::fs::read_to_string(task.path().join("comm")),
                thread_cpu(&task.path()),
            ) else {
                continue; // It exited meanwhile.
            };
            threads.insert(tid, (comm.trim_end().to_string(), cpu));
        }
        Snapshot { threads }
    }

    /// What each thread name used from `before` to this snapshot; a thread born in between
    /// counts from zero.
    pub fn since(&self, before: &Snapshot) -> Usage {
        let mut by_name = BTreeMap::<String, Duration>::new();
        for (tid, (name, now)) in &self.threads {
            let then = before.threads.get(tid).map_or(Duration::ZERO, |(_, t)| *t);
            *by_name.entry(name.clone()).or_default() += now.saturating_sub(then);
        }
        let exited = before
            .threads
            .keys()
            .filter(|tid| !self.threads.contains_key(tid))
            .count();
        Usage { by_name, exited }
    }
}

impl Usage {
    /// CPU time of the threads named `name`.
    pub fn named(&self, name: &str) -> Duration {
        self.by_name.get(name).copied().unwrap_or_default()
    }

    /// CPU time of every thread whose name is not in `names`.
    pub fn others(&self, names: &[&str]) -> Duration {
        self.by_name
            .iter()
            .filter(|(name, _)| !names.contains(&name.as_str()))
            .map(|(_, t)| *t)
            .sum()
    }

    /// CPU time of all threads that were alive at the second snapshot.
    pub fn total(&self) -> Duration {
        self.by_name.values().sum()
    }
}

/// A thread's CPU time from `schedstat` (nanoseconds), or from `stat`'s utime and stime
/// (clock ticks, 10 ms each) on a kernel without `schedstat`; `None` once it has exited.
fn thread_cpu(task: &std::path::Path) -> Option<Duration> {
    if let Ok(schedstat) = std::fs::read_to_string(task.join("schedstat")) {
        let ns = schedstat.split_whitespace().next()?.parse().ok()?;
        return Some(Duration::from_nanos(ns));
    }
    super::stat_cpu(&std::fs::read_to_string(task.join("stat")).ok()?)
}

//! Whether the host has a core to spare right now: the parallel paths' guard on a busy machine.
//!
//! When every core already runs some other thread, splitting one call over more threads buys no
//! CPU time where the scheduler shares it per process group (cgroups, Linux autogroups): the
//! threads only split the group's share and add their coordination on top, so two threads end up
//! slower than one. [`saturated`] tells a caller to run serially then, the way GNU OpenMP's
//! `OMP_DYNAMIC` lowers its team size from the load average. Unlike the load average (a
//! minute-long mean), it reads the instantaneous count of runnable threads from `/proc/loadavg`,
//! less this process's own runnable threads (its idle pool workers may still be spinning from
//! the previous call), and compares it with the online CPUs. Off Linux, or when `/proc` cannot be
//! read, the host counts as not saturated (the parallel paths run as they always did). Results
//! never depend on the answer: every parallel path is bit-identical to its serial run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// How long one reading of `/proc` stays valid: the check then costs nothing measurable on a
/// stream of calls, and the load it reads does not change faster than this.
const VALID_FOR_MICROS: u64 = 50_000;

/// The runnable-thread count of `/proc/loadavg`: its fourth field is `running/total`.
pub fn runnable_in_loadavg(text: &str) -> Option<usize> {
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
}

/// Whether a `/proc/<pid>/task/<tid>/stat` line describes a running (or runnable) thread. The
/// state follows the command name, which may itself hold spaces and parentheses.
pub fn stat_is_running(stat: &str) -> bool {
    stat.rfind(')')
        .and_then(|end| stat[end + 1..].split_ascii_whitespace().next())
        == Some("R")
}

/// CPU count of a `/sys/devices/system/cpu/online` list such as `0-3,8-11` or `0`.
pub fn cpus_in_list(text: &str) -> Option<usize> {
    let mut count = 0;
    for part in text.trim().split(',') {
        count += match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (usize, usize) = (lo.parse().ok()?, hi.parse().ok()?);
                hi.checked_sub(lo)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    (count > 0).then_some(count)
}

/// Saturated when the threads runnable outside this process fill every online CPU.
pub fn is_saturated(runnable: usize, own_runnable: usize, online_cpus: usize) -> bool {
    runnable.saturating_sub(own_runnable) >= online_cpus
}

fn online_cpus() -> Option<usize> {
    static ONLINE: OnceLock<Option<usize>> = OnceLock::new();
    *ONLINE.get_or_init(|| {
        cpus_in_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?)
    })
}

fn own_runnable() -> Option<usize> {
    let mut running = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        // A thread that exited since the listing has no stat to read: it is not running.
        if let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) {
            running += usize::from(stat_is_running(&stat));
        }
    }
    Some(running)
}

fn read_saturated() -> Option<bool> {
    let cpus = online_cpus()?;
    let runnable = || runnable_in_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?);
    // Fewer runnable threads than CPUs in all (a quiet host): no need to list our own.
    if runnable()? < cpus {
        return Some(false);
    }
    // Own threads before the total: a thread of ours that stops running between the two reads is
    // then missing from the total too, rather than counted as someone else's.
    let own = own_runnable()?;
    Some(is_saturated(runnable()?, own, cpus))
}

/// Whether every core of the host is busy with other threads (see the module documentation);
/// read at most once per 50 ms, shared by all threads of the process.
pub fn saturated() -> bool {
    // The reading and its time in one word: microseconds since the first call, shifted left by
    // one, with the answer in the low bit (0 means "never read").
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = (EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64).max(1);
    let last = LAST.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last >> 1) < VALID_FOR_MICROS {
        return last & 1 == 1;
    }
    let answer = read_saturated().unwrap_or(false);
    LAST.store((now << 1) | u64::from(answer), Ordering::Relaxed);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_runnable_count() {
        assert_eq!(runnable_in_loadavg("0.20 0.18 0.12 3/80 11206\n"), Some(3));
        assert_eq!(runnable_in_loadavg("0.20 0.18 0.12"), None);
        assert_eq!(runnable_in_loadavg("0.20 0.18 0.12 x/80 1"), None);
    }

    #[test]
    fn reads_the_state_after_the_last_parenthesis() {
        assert!(stat_is_running("42 (python3) R 1 42 42 0"));
        assert!(!stat_is_running("42 (python3) S 1 42 42 0"));
        assert!(stat_is_running("42 (a) S (b)) R 1 2"));
        assert!(!stat_is_running("42 (name R) S 1 2"));
        assert!(!stat_is_running(""));
    }

    #[test]
    fn counts_cpu_lists() {
        assert_eq!(cpus_in_list("0-1\n"), Some(2));
        assert_eq!(cpus_in_list("0"), Some(1));
        assert_eq!(cpus_in_list("0-3,8-11"), Some(8));
        assert_eq!(cpus_in_list("0,2,5-6"), Some(4));
        assert_eq!(cpus_in_list(""), None);
        assert_eq!(cpus_in_list("3-1"), None);
    }

    #[test]
    fn saturated_when_others_fill_every_cpu() {
        // Two CPUs: a spinner on one leaves a core to spare; one on each does not.
        assert!(!is_saturated(2, 1, 2));
        assert!(is_saturated(3, 1, 2));
        // Our own spinning pool workers are not someone else's load.
        assert!(!is_saturated(4, 3, 2));
        // A count read while our own threads changed state cannot go below zero.
        assert!(!is_saturated(1, 3, 2));
    }

    #[test]
    fn reads_this_host() {
        // The answer depends on the load, so only that it is given (and the reads behind it).
        let _ = saturated();
        if cfg!(target_os = "linux") {
            assert!(online_cpus().is_some());
            assert!(
                own_runnable().unwrap() >= 1,
                "the thread reading /proc is running"
            );
        }
    }
}

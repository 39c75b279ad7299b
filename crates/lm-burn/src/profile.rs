//! Wall time per operation of a decoding step, for the speed work (`tsmc-benches`'
//! `decode_profile`): off by default, one relaxed atomic load per timed operation when off.
//!
//! Only meaningful on the CPU backend, whose operations run eagerly: a GPU backend queues work
//! and returns at once, so its times would land wherever the queue is next read back.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Few names (about twenty), so a vector searched linearly beats a map.
    static TOTALS: RefCell<Vec<OpTime>> = const { RefCell::new(Vec::new()) };
}

/// Total wall time and number of calls of one named operation.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// The operation's name (see the call sites in the architectures and the session).
    pub name: &'static str,
    /// Summed wall time.
    pub total: Duration,
    /// Number of timed calls.
    pub calls: u64,
}

/// Turns recording on or off for every thread (times are kept per thread).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether operations are being timed.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `f`, adding its wall time to `name` when recording is on.
#[inline]
pub fn time<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    add(name, start.elapsed());
    out
}

/// Adds the time from its start to its drop to `name` (for code with early returns).
pub struct Timer {
    name: &'static str,
    start: Option<Instant>,
}

impl Timer {
    /// Starts timing `name` if recording is on.
    pub fn start(name: &'static str) -> Self {
        Self {
            name,
            start: enabled().then(Instant::now),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            add(self.name, start.elapsed());
        }
    }
}

fn add(name: &'static str, elapsed: Duration) {
    TOTALS.with(|t| {
        let mut t = t.borrow_mut();
        match t.iter_mut().find(|o| o.name == name) {
            Some(o) => {
                o.total += elapsed;
                o.calls += 1;
            }
            None => t.push(OpTime {
                name,
                total: elapsed,
                calls: 1,
            }),
        }
    });
}

/// Adds totals taken on another thread (see [`crate::cpu::in_pool`]) to this thread's.
pub fn merge(ops: Vec<OpTime>) {
    for o in ops {
        TOTALS.with(|t| {
            let mut t = t.borrow_mut();
            match t.iter_mut().find(|x| x.name == o.name) {
                Some(x) => {
                    x.total += o.total;
                    x.calls += o.calls;
                }
                None => t.push(o),
            }
        });
    }
}

/// This thread's totals since the last call, in first-recorded order; resets them.
pub fn take() -> Vec<OpTime> {
    TOTALS.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_enabled_and_take_resets() {
        set_enabled(false);
        time("off", || ());
        assert!(take().is_empty());
        set_enabled(true);
        let x = time("a", || 2) + time("a", || 3);
        time("b", || ());
        set_enabled(false);
        assert_eq!(x, 5);
        let got = take();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].name, got[0].calls), ("a", 2));
        assert_eq!((got[1].name, got[1].calls), ("b", 1));
        assert!(take().is_empty());
    }
}

//! Runs a fuzz target: proptest cases (a fixed seed, so a run is reproducible; the count from
//! `TSMC_FUZZ_CASES`), each given a scratch folder to write its input into, under a watchdog
//! that aborts a case running longer than `TSMC_FUZZ_HANG_SECS` (default 60). The targets that
//! run now are kept in a fixed table that the allocator and the watchdog read without
//! allocating, so their abort messages name the target and the folder holding the input.

use std::fmt::{Debug, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// Environment variable: cases per target (overrides each target's short default).
pub const CASES_VAR: &str = "TSMC_FUZZ_CASES";
/// Environment variable: the seed of the runs (default fixed).
pub const SEED_VAR: &str = "TSMC_FUZZ_SEED";
/// Environment variable: seconds one case may run before the watchdog calls it a hang.
pub const HANG_VAR: &str = "TSMC_FUZZ_HANG_SECS";
/// Environment variable: a file to which each finished target appends
/// `NAME\tCASES\tACCEPTED\tSECONDS` (accepted: inputs the reader took as valid).
pub const REPORT_VAR: &str = "TSMC_FUZZ_REPORT";

const SLOTS: usize = 32;

/// A running target, readable from the allocator without allocating: leaked name and folder.
struct Slot {
    name: AtomicPtr<u8>,
    name_len: AtomicUsize,
    dir: AtomicPtr<u8>,
    dir_len: AtomicUsize,
    /// Milliseconds since [`clock`] started when the current case began; 0 between cases.
    case_started: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // a template for the table's initialiser
const EMPTY: Slot = Slot {
    name: AtomicPtr::new(std::ptr::null_mut()),
    name_len: AtomicUsize::new(0),
    dir: AtomicPtr::new(std::ptr::null_mut()),
    dir_len: AtomicUsize::new(0),
    case_started: AtomicU64::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
static CLOCK: OnceLock<Instant> = OnceLock::new();
static WATCHDOG: Once = Once::new();

fn now_ms() -> u64 {
    CLOCK.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

fn leak(s: &str) -> (*mut u8, usize) {
    let b: &'static mut [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
    (b.as_mut_ptr(), b.len())
}

/// # Safety
/// `ptr`/`len` come from [`leak`] (or are null).
unsafe fn text(ptr: *mut u8, len: usize) -> &'static str {
    if ptr.is_null() {
        return "";
    }
    // SAFETY: a leaked, never freed, UTF-8 buffer of `len` bytes.
    unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr, len)) }
}

impl Slot {
    fn claim(name: &str, dir: &Path) -> &'static Slot {
        let (np, nl) = leak(name);
        let (dp, dl) = leak(&dir.display().to_string());
        for slot in &TABLE {
            if slot.name_len.load(Ordering::Acquire) == 0
                && slot
                    .name_len
                    .compare_exchange(0, nl, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                slot.dir_len.store(dl, Ordering::Release);
                slot.dir.store(dp, Ordering::Release);
                slot.name.store(np, Ordering::Release);
                return slot;
            }
        }
        panic!("more than {SLOTS} fuzz targets at once");
    }

    fn release(&self) {
        self.case_started.store(0, Ordering::Release);
        self.name.store(std::ptr::null_mut(), Ordering::Release);
        self.dir.store(std::ptr::null_mut(), Ordering::Release);
        self.name_len.store(0, Ordering::Release);
    }

    fn name(&self) -> &'static str {
        // SAFETY: stored by `claim` from `leak`.
        unsafe {
            text(
                self.name.load(Ordering::Acquire),
                self.name_len.load(Ordering::Acquire),
            )
        }
    }

    fn dir(&self) -> &'static str {
        // SAFETY: stored by `claim` from `leak`.
        unsafe {
            text(
                self.dir.load(Ordering::Acquire),
                self.dir_len.load(Ordering::Acquire),
            )
        }
    }
}

/// A message built on the stack (the allocator may not allocate while reporting).
struct StackText {
    buf: [u8; 2048],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes `message`, then every target in a case and the folder of its input, to stderr, and
/// aborts the process.
fn abort_with(message: std::fmt::Arguments<'_>) -> ! {
    let mut out = StackText {
        buf: [0; 2048],
        len: 0,
    };
    let _ = out.write_fmt(message);
    for slot in &TABLE {
        if slot.case_started.load(Ordering::Acquire) != 0 {
            let _ = write!(
                out,
                "\nfuzz: target `{}` was running a case; its input is in {}",
                slot.name(),
                slot.dir()
            );
        }
    }
    let _ = out.write_str("\n");
    // SAFETY: writes `len` initialised bytes of `buf` to stderr.
    unsafe {
        libc::write(2, out.buf.as_ptr().cast(), out.len);
    }
    std::process::abort();
}

/// Called by the allocator for a request over its budget.
pub(crate) fn abort_over_budget(what: &str, bytes: usize, limit: usize) -> ! {
    abort_with(format_args!(
        "fuzz: refusing {what} {bytes} bytes (budget {limit} bytes): a reader allocated from an unchecked size"
    ))
}

fn env_u64(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.trim().parse().ok())
}

fn start_watchdog() {
    WATCHDOG.call_once(|| {
        let limit_ms = env_u64(HANG_VAR).unwrap_or(60).saturating_mul(1000);
        std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    let now = now_ms();
                    for slot in &TABLE {
                        let started = slot.case_started.load(Ordering::Acquire);
                        if started != 0 && now.saturating_sub(started) > limit_ms {
                            abort_with(format_args!(
                                "fuzz: one case of target `{}` has run for more than {} s (a hang; {HANG_VAR} sets the limit)",
                                slot.name(),
                                limit_ms / 1000
                            ));
                        }
                    }
                }
            })
            .expect("watchdog thread");
    });
}

/// A case in progress: marks its slot busy until dropped (also when the case panics).
struct Busy<'a>(&'a Slot);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.case_started.store(0, Ordering::Release);
    }
}

/// What a target's test sees of its case.
pub struct Case<'a> {
    /// A folder of this target's own for the case's files (the same folder for every case:
    /// each case overwrites what it writes).
    pub dir: &'a Path,
}

/// The number of cases: `TSMC_FUZZ_CASES`, or the target's short default.
pub fn cases(default: u32) -> u32 {
    env_u64(CASES_VAR).map_or(default, |n| n.clamp(1, u32::MAX as u64) as u32)
}

/// Runs the fuzz target `name`: `default_cases` cases (or `TSMC_FUZZ_CASES`) of `strategy`,
/// each passed to `test`, which returns whether the reader accepted the input (counted, so
/// that a run shows how deep the mutations got) or `Err` with a reason when the reader
/// misbehaved (an error without a clear message, say). A panic in `test` fails the case too. A failure is
/// shrunk to a minimal input and reported by panicking; a case over the memory budget or
/// running too long aborts the process with a message naming the target.
pub fn fuzz<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(&Case<'_>, S::Value) -> Result<bool, String>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let cases = cases(default_cases);
    let dir = tempfile::Builder::new()
        .prefix(&format!("tsmc-fuzz-{name}-"))
        .tempdir()
        .expect("scratch folder");
    let slot = Slot::claim(name, dir.path());
    start_watchdog();
    let config = Config {
        cases,
        failure_persistence: None,
        max_global_rejects: cases.saturating_mul(4).max(1024),
        max_shrink_iters: 4096,
        ..Config::default()
    };
    // The seed mixes in the target's name, so targets sharing a strategy explore differently.
    let seed = env_u64(SEED_VAR).unwrap_or(0x7473_6d63_6675_7a7a);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    bytes[8..16].copy_from_slice(&h.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let case = Case { dir: dir.path() };
    let accepted = AtomicU64::new(0);
    let started = Instant::now();
    let outcome = runner.run(&strategy, |value| {
        slot.case_started.store(now_ms(), Ordering::Release);
        let _busy = Busy(slot);
        if test(&case, value).map_err(TestCaseError::fail)? {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    let accepted = accepted.into_inner();
    let seconds = started.elapsed().as_secs_f64();
    slot.release();
    match outcome {
        Ok(()) => {
            eprintln!("fuzz {name}: {cases} cases ({accepted} accepted) in {seconds:.1} s");
            if let Ok(report) = std::env::var(REPORT_VAR) {
                use std::io::Write;
                let line = format!("{name}\t{cases}\t{accepted}\t{seconds:.1}\n");
                let appended = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&report)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
                if let Err(e) = appended {
                    eprintln!("fuzz {name}: cannot append to {report}: {e}");
                }
            }
        }
        Err(TestError::Fail(reason, value)) => panic!(
            "fuzz target {name} failed: {reason}\nminimal failing input (after shrinking): {value:#?}"
        ),
        Err(TestError::Abort(reason)) => panic!("fuzz target {name} aborted: {reason}"),
    }
}

//! Signals, set up once at the start of `main`:
//! - SIGINT and SIGTERM end tsmc without leaving temporary files: they are blocked in every
//!   thread and received by one watcher thread (`sigwait`), which removes the temporaries this
//!   process is writing (`lm_burn::temporaries`) and exits with 128 + the signal (130, 143),
//!   as shells report a process stopped by a signal. Outputs are then absent, old or complete:
//!   every file appears by renaming a complete temporary, and appended files (training curves,
//!   reproduce records) hold whole records. SIGKILL cannot be handled: its temporaries are
//!   removed by the next run writing the same path.
//! - SIGPIPE gets its default action back, so that `tsmc demo | head` ends quietly instead of
//!   panicking in `println!` (Rust's runtime ignores it).

/// Installs both. Must run before any other thread exists (the signal mask is inherited).
#[cfg(unix)]
pub fn install() {
    // SAFETY: called once at the start of main, before any thread exists; SIG_DFL is a valid
    // action and `set` is initialised by sigemptyset before use.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let watcher = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                loop {
                    let mut signal: libc::c_int = 0;
                    // SAFETY: `set` is a valid signal set; `signal` a valid out-pointer.
                    if libc::sigwait(&set, &mut signal) == 0 {
                        lm_burn::temporaries::remove_live_and_exit(128 + signal);
                    }
                }
            });
        if watcher.is_err() {
            // Without a watcher the signals keep their default action (end the process).
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

/// Nothing to install where there are no Unix signals.
#[cfg(not(unix))]
pub fn install() {}

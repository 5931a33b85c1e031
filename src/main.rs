use std::process::ExitCode;

use keybound::cli::Cli;
use keybound_signer::config::STATIC_KEY_ENV;

fn main() -> ExitCode {
    // Before anything else, while this is the only thread: the static key leaves the environment
    // and core dumps are turned off (and, once the flags are read, libtss2 is told to be quiet).
    let copies = take_env(STATIC_KEY_ENV).map(|(value, copies)| {
        keybound_signer_soft::keep_env_value(STATIC_KEY_ENV, value);
        copies
    });
    let no_core_dumps = disable_core_dumps();

    let cli = Cli::parse_args();
    #[cfg(feature = "tpm")]
    quiet_tss2_log(cli.debug);
    keybound::logging::init(cli.debug, cli.log_format);
    if let Some(copies @ 2..) = copies {
        tracing::warn!(
            copies,
            "{STATIC_KEY_ENV} is set more than once in the environment; the first value is used, \
             and every copy was removed"
        );
    }
    if let Err(error) = no_core_dumps {
        tracing::warn!(%error, "cannot disable core dumps; a crash could write secrets to disk");
    }
    match keybound::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.kind.code())
        }
    }
}

/// Removes the variable `name` from the environment and returns its value (`None` if it is unset
/// or not UTF-8: then it stays, and the env signer reports it), with how many `NAME=` entries the
/// environment held. An environment may hold a name more than once (`execve` takes any list;
/// `getenv` and keybound use the first); the bytes of *every* `NAME=value` entry are zeroed where
/// they were, so that no value is left in memory, nor in `/proc/<pid>/environ`, and no thread or
/// child process started later can read one.
///
/// The only `unsafe` code in keybound (the library and the backends forbid it): changing the
/// environment is sound only while no other thread may read it, which holds at the top of
/// `main`, before the async runtime, logging or any library starts a thread.
#[allow(unsafe_code)]
fn take_env(name: &str) -> Option<(zeroize::Zeroizing<String>, usize)> {
    unsafe extern "C" {
        /// POSIX's `environ`: the `NAME=value` strings, ending with a null pointer.
        static mut environ: *mut *mut libc::c_char;
    }
    let value = zeroize::Zeroizing::new(std::env::var_os(name)?.into_string().ok()?);
    let prefix = std::ffi::CString::new(format!("{name}=")).ok()?;
    let mut entries = Vec::new();
    // SAFETY: single-threaded (see above), so nothing changes `environ` while it is walked. It is
    // null or a null-terminated array of pointers to NUL-terminated strings; `strncmp` reads
    // at most the prefix's length and stops at the end of either string. The strings live in
    // memory the process owns for its whole life (the initial environment block, or a copy
    // `setenv` made and never frees), so they stay valid after `remove_var` takes every pointer
    // to `NAME=...` out of `environ` (glibc's and musl's `unsetenv` remove all of them), and
    // nothing else refers to them then. Zeroing runs from each entry's first byte to its
    // terminating NUL, the exact extent of that string.
    unsafe {
        let mut at = environ;
        while !at.is_null() && !(*at).is_null() {
            if libc::strncmp(*at, prefix.as_ptr(), prefix.as_bytes().len()) == 0 {
                entries.push(*at);
            }
            at = at.add(1);
        }
        std::env::remove_var(name);
        for entry in &entries {
            let len = libc::strlen(*entry);
            zeroize::Zeroize::zeroize(std::slice::from_raw_parts_mut(entry.cast::<u8>(), len));
        }
    }
    Some((value, entries.len()))
}

/// Silences libtss2's own stderr lines (`WARNING:esys:...`, `ERROR:tcti:...`): the TPM library
/// prints them for answers keybound expects (an empty persistent handle before a key is made) and
/// for failures keybound reports itself in words. libtss2 has no call to set its log level; it
/// reads `TSS2_LOG` from the environment the first time it logs, which is after this point. So
/// `TSS2_LOG=all+NONE` is set here, unless the user set `TSS2_LOG` or asked for `--debug` (then
/// libtss2 logs as it would by default). Here, not in the TPM backend: the library crates forbid
/// `unsafe`, and changing the environment is sound only while no other thread may read it, which
/// holds here, before the async runtime or any library starts one (see `take_env`).
#[cfg(feature = "tpm")]
#[allow(unsafe_code)]
fn quiet_tss2_log(debug: bool) {
    const TSS2_LOG: &str = "TSS2_LOG";
    if debug || std::env::var_os(TSS2_LOG).is_some() {
        return;
    }
    // SAFETY: single-threaded (see above).
    unsafe { std::env::set_var(TSS2_LOG, "all+NONE") };
}

/// Turns core dumps off for good: the process holds private keys (the static key when it is a
/// software key, and always the bot's own subject keys) and PINs. `RLIMIT_CORE` 0 (soft and
/// hard, so nothing can raise it again) stops a core file; not dumpable also stops a core piped to
/// a crash handler and `ptrace` by other processes of the same user.
#[allow(unsafe_code)]
fn disable_core_dumps() -> std::io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls take plain values (and a pointer to a local that outlives the call) and
    // change only this process's limits and flags.
    let (limit, dumpable) = unsafe {
        (
            libc::setrlimit(libc::RLIMIT_CORE, &zero),
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
        )
    };
    if limit != 0 || dumpable != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

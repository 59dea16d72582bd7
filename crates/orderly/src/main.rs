//! The `orderly` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

// mimalloc returns large freed blocks (Argon2's 19 MiB buffers) to the system and is cheaper
// than glibc's allocator for the many small per-request allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Commits the allocator's arenas page by page as they are used rather than whole: arenas
/// committed up front leave freed pages counted in RSS (measured: the `mixed` benchmark
/// after payments held 66 MiB against 54 MiB, at the same throughput). The option takes
/// effect only for arenas reserved after it is set, and the first one is reserved by the first
/// allocation, so it is set from the program's initialisers, before anything allocates.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static COMMIT_ARENAS_LAZILY: extern "C" fn() = {
    /// `mi_option_arena_eager_commit` in mimalloc.h (the bindings do not name it).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    extern "C" fn set() {
        // SAFETY: sets a plain option; nothing else runs yet.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
    set
};

fn main() -> ExitCode {
    if let Some(path) = config_file_argument()
        && let Err(error) = orderly::config::load_config_file(&path)
    {
        eprintln!("orderly: {error}");
        return ExitCode::from(2);
    }
    let cli = match orderly::cli::parse() {
        Ok(cli) => cli,
        Err(line) => {
            eprintln!("orderly: {line}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("orderly: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(orderly::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("orderly: {error}");
            // A bad setting exits 2, wherever it was caught, as one that fails to parse does.
            ExitCode::from(if error.is_configuration() { 2 } else { 1 })
        }
    }
}

/// `--config FILE` (or `--config=FILE`) from argv, else `ORDERLY_CONFIG`. Read before clap
/// parses so the file can supply values for every other setting.
fn config_file_argument() -> Option<std::path::PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        if arg == "--config" {
            return args.next().map(Into::into);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.into());
        }
    }
    std::env::var_os("ORDERLY_CONFIG").map(Into::into)
}

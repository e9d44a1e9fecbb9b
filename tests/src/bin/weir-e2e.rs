//! The `weir` command line, built inside the test package so CLI tests can
//! run it as a real process. Same entry point as the `weir` binary
//! (`host/src/main.rs`): the same allocator, and the same release of what
//! compiling a component freed.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::plugin::engine::on_compiled(|| {
        // SAFETY: as in `host/src/main.rs`: `mi_collect` only releases
        // memory mimalloc holds free.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    weir::cli::main()
}

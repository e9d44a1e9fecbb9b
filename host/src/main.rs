//! The `weir` binary. Everything lives in the library; see `weir::cli`.

// mimalloc: the request path allocates small, short-lived buffers per
// request, where glibc malloc showed ~12% of CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}

//! The `weir` binary. Everything lives in the library; see `weir::cli`.

fn main() -> std::process::ExitCode {
    weir::cli::main()
}

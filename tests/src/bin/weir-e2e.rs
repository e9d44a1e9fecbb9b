//! The `weir` command line, built inside the test package so CLI tests can
//! run it as a real process. Same entry point as the `weir` binary.

fn main() -> std::process::ExitCode {
    weir::cli::main()
}

//! The `airlock` command: a thin shell over [`airlock::cli`].

fn main() -> std::process::ExitCode {
    airlock::cli::main()
}

//! The binary's allocator settings: mimalloc built with `arena_eager_commit`
//! off (.cargo/config.toml), which keeps idle RSS and the cost of an idle
//! connection down (loadtests/07-memory). mimalloc prints its options at
//! start-up when `MIMALLOC_VERBOSE=1`.

use std::process::Command;

#[test]
fn mimalloc_is_built_without_eager_arena_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--version")
        .env("MIMALLOC_VERBOSE", "1")
        .env_remove("MIMALLOC_ARENA_EAGER_COMMIT")
        .output()
        .unwrap_or_else(|e| panic!("running sluice --version: {e}"));
    assert!(out.status.success(), "sluice --version failed: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let option = stderr
        .lines()
        .find(|l| l.contains("option 'arena_eager_commit'"))
        .unwrap_or_else(|| panic!("mimalloc printed no options (not the global allocator?):\n{stderr}"));
    assert!(
        option.trim_end().ends_with(": 0"),
        "arena_eager_commit is not 0 (CFLAGS from the environment overrode .cargo/config.toml?): {option}"
    );
}

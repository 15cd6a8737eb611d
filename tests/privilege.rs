//! Privilege checks: tests that need root skip themselves (loudly) instead of failing.

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns true when the test may run; otherwise prints why it is skipped and returns false.
///
/// ```no_run
/// # fn t() {
/// if !keel_tests::privilege::root_or_skip("datapath_nodeport") {
///     return;
/// }
/// # }
/// ```
pub fn root_or_skip(test_name: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("SKIP {test_name}: needs root (CI runs as root)");
    false
}

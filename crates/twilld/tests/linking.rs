//! The daemon binary as built: it defines its own `pow` (main.rs says why) and so asks the
//! loader for no libm. A dependency that starts calling another libm function brings libm
//! back (0.5 MB resident per daemon); this says so rather than letting the figure drift.

use std::process::Command;

#[test]
fn twilld_needs_no_libm() {
    let bin = env!("CARGO_BIN_EXE_twilld");
    let out = Command::new("readelf")
        .args(["-dW", "--dyn-syms", bin])
        .output()
        .expect("readelf (binutils, which the linker comes with)");
    assert!(out.status.success(), "readelf {bin}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(needed.iter().any(|l| l.contains("libc.so")), "{needed:#?}");
    assert!(
        !needed.iter().any(|l| l.contains("libm.so")),
        "twilld links libm again: some dependency calls a libm function other than pow \
         (`nm -D --undefined-only twilld` names it): {needed:#?}"
    );
    // Our pow, defined in the binary (not an undefined symbol resolved elsewhere).
    assert!(
        text.lines()
            .any(|l| l.ends_with(" pow") && l.contains("FUNC") && !l.contains(" UND ")),
        "no pow defined in {bin}"
    );
}

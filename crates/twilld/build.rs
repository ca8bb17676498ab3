//! Release builds pack the functions twilld runs (`hot-text.txt`, made by
//! scripts/hot-text.sh, which says how and why) at the front of its text, so the pages
//! the daemon keeps resident hold code it uses. The linker script written here only adds an
//! output section in front of `.text` (`INSERT BEFORE`), which GNU ld and lld both take;
//! a name the build no longer has matches nothing and costs nothing. `TWILL_HOT_TEXT=0`
//! builds without it (a linker that takes no scripts, or a layout to compare with).
use std::fmt::Write as _;

fn main() {
    println!("cargo:rerun-if-changed=hot-text.txt");
    println!("cargo:rerun-if-env-changed=TWILL_HOT_TEXT");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    // Where the list was made and measured, and where rustc links with lld by default;
    // GNU ld takes the script too, but how long it takes over 8 000 patterns is unmeasured.
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64");
    let wanted = std::env::var("TWILL_HOT_TEXT").map_or(true, |v| v != "0");
    if !(release && linux && x86_64 && wanted) {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let names = std::fs::read_to_string(format!("{dir}/hot-text.txt"))
        .expect("crates/twilld/hot-text.txt (scripts/hot-text.sh writes it)");
    let script = format!("{out}/hot-text.ld");
    std::fs::write(&script, linker_script(&names)).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-arg-bin=twilld=-Wl,-T,{script}");
}

/// One input-section list per group of names (groups end at a `--` line), in order. LLVM
/// puts a function it knows to be cold (`#[cold]`: a Vec's growth, a lock's slow path,
/// which twilld does run) in `.text.unlikely.<name>` rather than `.text.<name>`, hence
/// both.
fn linker_script(names: &str) -> String {
    let mut s = String::from("SECTIONS\n{\n  .text.hot : {\n    *(\n");
    for line in names.lines().map(str::trim) {
        match line {
            "" => {}
            l if l.starts_with('#') => {}
            "--" => s.push_str("    )\n    *(\n"),
            name => {
                let _ = writeln!(s, "      .text.{name} .text.unlikely.{name}");
            }
        }
    }
    s.push_str("    )\n  }\n}\nINSERT BEFORE .text;\n");
    s
}

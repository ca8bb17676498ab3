//! `heap::trim` gives pages freed below live allocations back to the kernel, which glibc's
//! own `free` does not. Its own process (an integration test), so no other test's
//! allocations move the figures.

#[cfg(target_env = "gnu")]
#[test]
fn trimming_gives_pages_freed_below_live_allocations_back() {
    fn anon_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon in /proc/self/status")
    }
    // 64 MB in 4 KB blocks, written so their pages are resident; then every block but
    // each 64th is freed: 252 KB holes between live blocks, which free() keeps.
    let mut blocks: Vec<Option<Vec<u8>>> = (0..16_384)
        .map(|i| Some(vec![1 + (i % 200) as u8; 4096]))
        .collect();
    for (i, b) in blocks.iter_mut().enumerate() {
        if i % 64 != 63 {
            *b = None;
        }
    }
    let free = twilld::heap::free_bytes().expect("glibc reports its free bytes");
    assert!(twilld::heap::worth_trimming(free), "only {free} bytes free");
    let before = anon_kb();
    assert!(twilld::heap::trim(), "malloc_trim released nothing");
    let after = anon_kb();
    assert!(
        before.saturating_sub(after) >= 32 * 1024,
        "RssAnon {before} kB before the trim, {after} kB after"
    );
    // The live blocks are untouched.
    assert!(blocks
        .iter()
        .flatten()
        .all(|b| b.len() == 4096 && b[0] != 0));
}

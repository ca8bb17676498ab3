//! Other processes sharing this network namespace, by name: another twilld (cleanup), a
//! flanneld (doctor), either of which would fight over the same device and rules.

/// The pids of processes called `name` in this network namespace, other than us.
pub fn in_this_netns(name: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(my_net) = std::fs::read_link("/proc/self/ns/net") else {
        return Vec::new();
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let hit = pid != me
                && pid.bytes().all(|b| b.is_ascii_digit())
                && std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name)
                && std::fs::read_link(e.path().join("ns/net")).ok().as_ref() == Some(&my_net);
            hit.then_some(pid)
        })
        .collect()
}

//! "Is BGP actually working?": each configured peer's session as BIRD sees it, and what
//! this node announces over it.

use twill_config::NetConf;
use twill_store::LeaseKey;

use super::{Checks, Status};
use twill_bgp::BgpOptions;
use twill_bgp::{effective, protocol_name, sessions};

pub(super) async fn bgp(c: &mut Checks, conf: &NetConf, opts: &BgpOptions, own: Option<&LeaseKey>) {
    let bgp = match effective(conf, opts) {
        Ok(Some(b)) => b,
        Ok(None) => {
            c.pass(
                "bgp",
                "not configured (no BGP in net-conf.json, no --bgp-asn, no twill.io/bgp-asn on the node)",
            );
            return;
        }
        Err(e) => {
            c.add(
                "bgp",
                Status::Fail,
                format!("{e:#}"),
                "fix the BGP flags as twilld runs with them",
            );
            return;
        }
    };
    if bgp.peers.is_empty() {
        c.add(
            "bgp",
            Status::Warn,
            format!("AS {} with no peers", bgp.asn),
            "name the routers in net-conf.json's BGP.Peers or with --bgp-peers",
        );
        return;
    }
    let ours: Vec<String> = own
        .into_iter()
        .flat_map(|k| k.v4.into_iter().chain(k.v6))
        .map(|n| n.to_string())
        .collect();
    let file = std::fs::read_to_string(&opts.config_file).unwrap_or_default();
    let missing: Vec<&String> = ours
        .iter()
        .filter(|n| !file.contains(&format!("route {n} blackhole;")))
        .collect();
    if !missing.is_empty() {
        c.add("bgp", Status::Fail,
            format!("{} does not announce {missing:?}", opts.config_file.display()),
            "twilld writes it within seconds of holding a lease; is it running with the same --bgp-config-file?");
        return;
    }
    let found = match sessions(&opts.control_socket).await {
        Ok(s) => s,
        Err(e) => {
            c.add("bgp", Status::Fail,
                format!("BIRD not reachable at {}: {e:#}", opts.control_socket.display()),
                "start BIRD 2 with this config and socket: bird -c <--bgp-config-file> -s <--bgp-control-socket>");
            return;
        }
    };
    let mut lines = Vec::new();
    let mut down = 0;
    for p in &bgp.peers {
        let name = protocol_name(&p.address);
        match found.iter().find(|s| s.protocol == name) {
            Some(s) if s.up() => lines.push(format!(
                "{} AS {}: Established since {}, announcing {} ({})",
                p.address,
                p.asn,
                s.since,
                s.exported,
                ours.join(", ")
            )),
            Some(s) => {
                down += 1;
                lines.push(format!(
                    "{} AS {}: {} since {}{}",
                    p.address,
                    p.asn,
                    s.state,
                    s.since,
                    if s.info.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", s.info)
                    }
                ));
            }
            None => {
                down += 1;
                lines.push(format!(
                    "{} AS {}: not in BIRD's running config (reload pending or refused?)",
                    p.address, p.asn
                ));
            }
        }
    }
    // BIRD cannot know what a peer kept after its own import policy: say where to look.
    let detail = format!(
        "{}; what each router accepted: ask the router",
        lines.join("; ")
    );
    if down == 0 {
        c.pass("bgp", detail);
    } else {
        c.add("bgp", Status::Fail, detail,
            "the router must have this node's address as a neighbor with its AS; see birdc -s <socket> show protocols all");
    }
}

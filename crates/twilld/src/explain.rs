//! `twilld policy explain --from NS/POD --to NS/POD --port 80/TCP`: whether NetworkPolicy
//! lets that connection through and which policies and rules decide it, from the same
//! model (`twill_policy::Cluster`) and the same conversions the daemon programs from.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use twill_kube::KubeOptions;
use twill_policy::{Cluster, Endpoint, Proto, Side};

#[derive(Debug, Clone, clap::Args)]
pub struct PolicyCmd {
    #[command(subcommand)]
    pub what: PolicyWhat,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PolicyWhat {
    /// Allow or deny for one new connection, and the policies and rules that decide it.
    Explain(Explain),
}

#[derive(Debug, Clone, clap::Args)]
pub struct Explain {
    /// The client: NAMESPACE/POD, or an address outside the pods.
    #[arg(long)]
    pub from: String,
    /// The server: NAMESPACE/POD, or an address.
    #[arg(long)]
    pub to: String,
    /// PORT/PROTOCOL (TCP, UDP, SCTP); the protocol defaults to TCP.
    #[arg(long, value_parser = parse_port)]
    pub port: (u16, Proto),
}

fn parse_port(s: &str) -> Result<(u16, Proto), String> {
    let (n, p) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = n
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("--port {s:?}: {n:?} is not a port (1-65535)"))?;
    let proto = Proto::parse(&p.to_ascii_uppercase())
        .ok_or_else(|| format!("--port {s:?}: protocol {p:?} is not TCP, UDP or SCTP"))?;
    Ok((port, proto))
}

/// Prints the verdict; `Ok(true)` whether it is allow or deny (an answer either way).
pub async fn run(opts: &KubeOptions, cmd: &PolicyCmd) -> Result<bool> {
    let PolicyWhat::Explain(e) = &cmd.what;
    let client = twill_kube::connect_client(opts).await?;
    let cluster = twill_kube::list_cluster(client)
        .await
        .context("listing pods, namespaces and networkpolicies")?;
    print!("{}", explain(&cluster, e)?);
    Ok(true)
}

/// The explanation as printed (pure: tested without an API server).
pub fn explain(c: &Cluster, e: &Explain) -> Result<String> {
    let (port, proto) = e.port;
    let to = endpoint(c, &e.to, "--to", None)?;
    let from = endpoint(c, &e.from, "--from", Some(to.ip))?;
    let v = c.verdict(from, to, proto, port);
    let mut out = format!(
        "{}: {} ({}) -> {} ({}) {port}/{proto}\n",
        if v.allowed() { "allow" } else { "deny" },
        e.from,
        from.ip,
        e.to,
        to.ip
    );
    out.push_str(&side("egress", &e.from, &v.egress, from.pod.is_some()));
    out.push_str(&side("ingress", &e.to, &v.ingress, to.pod.is_some()));
    for id in v.egress.isolated_by.iter().chain(&v.ingress.isolated_by) {
        if let Some(p) = c.policies.get(id).filter(|p| !p.problems.is_empty()) {
            out.push_str(&format!(
                "  note: {id} has parts that match nothing: {}\n",
                p.problems.join("; ")
            ));
        }
    }
    Ok(out)
}

fn side(dir: &str, who: &str, s: &Side, is_pod: bool) -> String {
    if !is_pod {
        return format!("  {dir} of {who}: not a pod network pod, no policy applies\n");
    }
    if s.isolated_by.is_empty() {
        return format!("  {dir} of {who}: no policy selects it for {dir}: allowed\n");
    }
    let by: Vec<String> = s.isolated_by.iter().map(ToString::to_string).collect();
    let mut line = format!("  {dir} of {who}: selected by {}; ", by.join(", "));
    if s.allowed_by.is_empty() {
        line.push_str("no rule allows it: denied\n");
    } else {
        let rules: Vec<String> = s
            .allowed_by
            .iter()
            .map(|(id, i)| format!("{id} {dir}[{i}]"))
            .collect();
        line.push_str(&format!("allowed by {}\n", rules.join(", ")));
    }
    line
}

/// `NS/POD` (its address of `family`'s kind when given) or a plain address.
fn endpoint<'a>(
    c: &'a Cluster,
    s: &str,
    flag: &str,
    family: Option<IpAddr>,
) -> Result<Endpoint<'a>> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Endpoint::ip(ip));
    }
    let Some((ns, name)) = s.split_once('/') else {
        bail!("{flag} {s:?}: give NAMESPACE/POD or an address");
    };
    let pod = c
        .pod(ns, name)
        .ok_or_else(|| anyhow!("{flag} {s:?}: no pod {name} in namespace {ns}"))?;
    let ip = pod
        .ips
        .iter()
        .find(|ip| family.is_none_or(|f| f.is_ipv4() == ip.is_ipv4()))
        .copied()
        .ok_or_else(|| {
            anyhow!("{flag} {s:?}: the pod has no address (of the other end's family)")
        })?;
    Ok(Endpoint::pod(pod, ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_policy::{NamedPort, NsScope, Peer, Pod, Policy, PolicyId, Port, Rule, Selector};

    fn cluster() -> Cluster {
        let mut c = Cluster::default();
        for (ns, name, ip) in [("x", "a", "10.0.1.2"), ("x", "b", "10.0.2.2")] {
            c.pods.insert(
                (ns.into(), name.into()),
                Pod {
                    ns: ns.into(),
                    name: name.into(),
                    labels: [("pod".to_string(), name.to_string())].into(),
                    ips: vec![ip.parse().unwrap()],
                    node: Some("n1".into()),
                    host_network: false,
                    ports: vec![NamedPort {
                        name: "http".into(),
                        proto: Proto::Tcp,
                        port: 80,
                    }],
                },
            );
        }
        let p = Policy {
            id: PolicyId {
                ns: "x".into(),
                name: "allow-b".into(),
            },
            select: Selector::labels(&[("pod", "a")]),
            ingress: Some(vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: NsScope::Own("x".into()),
                    pods: Selector::labels(&[("pod", "b")]),
                }],
                ports: vec![Port::Named(Proto::Tcp, "http".into())],
            }]),
            egress: None,
            problems: vec![],
        };
        c.policies.insert(p.id.clone(), p);
        c
    }

    fn ask(from: &str, to: &str, port: &str) -> Result<String> {
        explain(
            &cluster(),
            &Explain {
                from: from.into(),
                to: to.into(),
                port: parse_port(port).map_err(|e| anyhow!(e))?,
            },
        )
    }

    #[test]
    fn names_the_policy_and_rule_that_decide() {
        let out = ask("x/b", "x/a", "80/tcp").unwrap();
        assert!(
            out.starts_with("allow: x/b (10.0.2.2) -> x/a (10.0.1.2) 80/TCP\n"),
            "{out}"
        );
        assert!(
            out.contains("egress of x/b: no policy selects it for egress: allowed"),
            "{out}"
        );
        assert!(
            out.contains("ingress of x/a: selected by x/allow-b; allowed by x/allow-b ingress[0]"),
            "{out}"
        );
        let out = ask("x/b", "x/a", "81").unwrap();
        assert!(out.starts_with("deny: "), "{out}");
        assert!(
            out.contains("selected by x/allow-b; no rule allows it: denied"),
            "{out}"
        );
        let out = ask("198.18.0.9", "x/a", "80/TCP").unwrap();
        assert!(
            out.starts_with("deny: ") && out.contains("egress of 198.18.0.9: not a pod"),
            "{out}"
        );
    }

    #[test]
    fn bad_arguments_name_the_flag() {
        assert!(ask("x/zz", "x/a", "80")
            .unwrap_err()
            .to_string()
            .contains("--from \"x/zz\": no pod zz in namespace x"));
        assert!(ask("x/a", "nope", "80")
            .unwrap_err()
            .to_string()
            .contains("--to \"nope\""));
        assert!(parse_port("80/ICMP")
            .unwrap_err()
            .contains("protocol \"ICMP\""));
        assert!(parse_port("0").unwrap_err().contains("not a port"));
    }
}

//! The process's own metrics under the names every Prometheus client library gives them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_threads`), read
//! from /proc at each scrape, so a dashboard's RSS and CPU panels work as for any exporter.
//! Written here because prometheus-client has no process collector; this is the part of
//! one twilld needs.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct ProcessCollector;

/// What /proc/self/stat and /proc/self/statm say, in the units the metrics use.
#[derive(Debug, PartialEq)]
pub struct ProcStat {
    pub cpu_seconds: f64,
    pub threads: i64,
    pub rss_bytes: i64,
}

/// Parses `stat` and `statm` (pure): user + system time in clock `ticks`, the thread
/// count, resident pages of `page` bytes. The command name may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse(stat: &str, statm: &str, ticks: f64, page: i64) -> Option<ProcStat> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name come field 3 (state) onwards: utime is field 14, stime 15, threads 20.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let threads = fields.get(17)?.parse().ok()?;
    let resident: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcStat {
        cpu_seconds: (utime + stime) / ticks,
        threads,
        rss_bytes: resident * page,
    })
}

fn read() -> Option<ProcStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    // SAFETY: sysconf only reads system constants.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    parse(&stat, &statm, ticks as f64, page)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(p.rss_bytes);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            rss.metric_type(),
        )?)?;
        let threads = ConstGauge::new(p.threads);
        threads.encode(encoder.encode_descriptor(
            "process_threads",
            "Number of OS threads in the process",
            None,
            threads.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat =
            "4242 (tw (il) d) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 7 0 123 0 0";
        let p = parse(stat, "5000 1200 300 0 0 0 0", 100.0, 4096).unwrap();
        assert_eq!(
            p,
            ProcStat {
                cpu_seconds: 3.0,
                threads: 7,
                rss_bytes: 1200 * 4096
            }
        );
        assert_eq!(parse("garbage", "1 2", 100.0, 4096), None);
        assert!(read().is_some_and(|p| p.rss_bytes > 0 && p.threads >= 1));
    }
}

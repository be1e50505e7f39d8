//! The standard `process_*` metrics (as client_golang names them) read from `/proc/self` at each
//! scrape, and `<prefix>_build_info`. On a system without `/proc` the process metrics are left out.

use std::fmt;

use nix::sys::resource::{Resource, getrlimit};
use nix::unistd::{SysconfVar, sysconf};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads `/proc/self` when scraped.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// One reading of the process's resources.
#[derive(Debug, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: f64,
    open_fds: f64,
    max_fds: f64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let ticks = sysconf(SysconfVar::CLK_TCK).ok()??;
        let page = sysconf(SysconfVar::PAGE_SIZE).ok()??;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        // RLIM_INFINITY is u64::MAX: reported as is, like client_golang.
        let max_fds = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft);
        let mut stats = parse_stat(&stat, boot_time, ticks as f64, page as f64)?;
        stats.open_fds = open_fds as f64;
        stats.max_fds = max_fds as f64;
        Some(stats)
    }
}

/// The fields of `/proc/self/stat` (proc(5)) that matter here; the command name in parentheses
/// may itself hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(
    stat: &str,
    boot_time: f64,
    ticks_per_second: f64,
    page_bytes: f64,
) -> Option<ProcessStats> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
    let (utime, stime) = (field(14)?, field(15)?);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / ticks_per_second,
        start_time_seconds: boot_time + field(22)? / ticks_per_second,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_bytes,
        open_fds: 0.0,
        max_fds: 0.0,
    })
}

/// `btime` of `/proc/stat`: the boot time in seconds since the Unix epoch.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 150 0 0 20 0 9 0 \
                    5000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stats = parse_stat(stat, 1_700_000_000.0, 100.0, 4096.0).unwrap();
        assert_eq!(stats.cpu_seconds, 4.0);
        assert_eq!(stats.start_time_seconds, 1_700_000_050.0);
        assert_eq!(stats.virtual_bytes, 123_456_789.0);
        assert_eq!(stats.resident_bytes, 300.0 * 4096.0);
        assert_eq!(parse_stat("garbage", 0.0, 100.0, 4096.0), None);
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
    }

    #[test]
    fn this_process_can_be_read() {
        let stats = ProcessStats::read().expect("/proc/self on Linux");
        assert!(
            stats.resident_bytes > 0.0 && stats.open_fds >= 3.0,
            "{stats:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            stats.start_time_seconds <= now + 1.0
                && stats.start_time_seconds > now - 86_400.0 * 365.0
        );
    }
}

//! A process's CPU time and resident memory, read from `/proc` (Linux), for the load generator and
//! the benchmarks to report their own cost beside the figures they measure.

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ: 100 on every Linux architecture this
/// project builds for).
const TICKS_PER_S: u64 = 100;

/// User plus system CPU time of `pid` (`None`: this process) in milliseconds, if `/proc` has it.
pub fn cpu_ms(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_cpu_ms(&std::fs::read_to_string(path).ok()?)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in milliseconds. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ms(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt,
    // majflt, cmajflt, utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 1000 / TICKS_PER_S)
}

/// Resident memory (`VmRSS`) of `pid` in KiB, if `/proc` has it.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kib(&status)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in KiB.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_cpu_ms(line), Some(3250));
        assert_eq!(parse_cpu_ms("garbage"), None);
        assert!(cpu_ms(None).is_some(), "this process has a stat file");
    }

    #[test]
    fn resident_memory_is_read_from_vmrss() {
        assert_eq!(parse_rss_kib("Name:\tx\nVmRSS:\t  12345 kB\nVmSwap:\t0 kB\n"), Some(12345));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}

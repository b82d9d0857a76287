//! What /proc says about this process and its network namespace: the
//! standard process metrics, and which TCP ports are listening and which
//! UDP ports are bound (so readiness asks the kernel whether a listener is
//! open rather than trusting that the relay task still holds it).

use std::collections::BTreeSet;
use std::path::Path;

/// The standard `process_*` metrics of the Prometheus client libraries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
    pub threads: u64,
}

/// Reads this process's statistics; a file that cannot be read leaves its
/// fields at 0 rather than failing the scrape.
pub fn process_stats() -> ProcessStats {
    let page = page_size();
    let ticks = clock_ticks();
    let mut stats = ProcessStats::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(s) = parse_stat(&stat)
    {
        stats.resident_bytes = s.rss_pages * page;
        stats.virtual_bytes = s.vsize;
        stats.threads = s.threads;
        stats.cpu_seconds = (s.utime + s.stime) as f64 / ticks;
        if let Some(btime) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_btime(&t))
        {
            stats.start_time_seconds = btime as f64 + s.starttime as f64 / ticks;
        }
    }
    stats.open_fds = count_entries(Path::new("/proc/self/fd"));
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        stats.max_fds = soft;
    }
    stats
}

fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    }
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as f64,
        _ => 100.0,
    }
}

fn count_entries(dir: &Path) -> u64 {
    // The directory handle itself shows up as one entry while it is read.
    std::fs::read_dir(dir)
        .map(|d| d.count().saturating_sub(1) as u64)
        .unwrap_or(0)
}

/// The fields of /proc/PID/stat that the metrics need.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

/// Parses /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.rsplit_once(')')?.1;
    // After `)`: field 3 (state) is index 0.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    Some(Stat {
        utime: at(14)?,
        stime: at(15)?,
        threads: at(20)?,
        starttime: at(22)?,
        vsize: at(23)?,
        rss_pages: at(24)?,
    })
}

/// The boot time (seconds since the epoch) from /proc/stat.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The ports sockets wait on in this network namespace, IPv4 and IPv6.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenPorts {
    /// TCP sockets in LISTEN.
    pub tcp: BTreeSet<u16>,
    /// Unconnected UDP sockets (what a server binds).
    pub udp: BTreeSet<u16>,
}

pub fn open_ports() -> std::io::Result<OpenPorts> {
    Ok(OpenPorts {
        tcp: ports_in(["/proc/self/net/tcp", "/proc/self/net/tcp6"], TCP_LISTEN)?,
        udp: ports_in(
            ["/proc/self/net/udp", "/proc/self/net/udp6"],
            UDP_UNCONNECTED,
        )?,
    })
}

/// Socket states as /proc/net prints them (include/net/tcp_states.h).
const TCP_LISTEN: &str = "0A";
const UDP_UNCONNECTED: &str = "07";

fn ports_in(files: [&str; 2], state: &str) -> std::io::Result<BTreeSet<u16>> {
    let mut ports = BTreeSet::new();
    let mut read_any = false;
    let mut last_error = None;
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                read_any = true;
                ports.extend(parse_ports(&text, state));
            }
            // The IPv6 table is absent when IPv6 is disabled in the kernel.
            Err(e) => last_error = Some(e),
        }
    }
    match (read_any, last_error) {
        (false, Some(e)) => Err(e),
        _ => Ok(ports),
    }
}

/// Local ports of the entries in `state` of a /proc/net/{tcp,udp}{,6} table.
fn parse_ports<'a>(table: &'a str, state: &'a str) -> impl Iterator<Item = u16> + 'a {
    table.lines().skip(1).filter_map(move |line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1)?;
        if cols.nth(1)? != state {
            return None;
        }
        let port = local.rsplit_once(':')?.1;
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let text = "4242 (vmpod (a) b) S 1 4242 4242 0 -1 4194560 1516 0 0 0 \
                    17 5 0 0 20 0 7 0 123456 104857600 2560 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 17,
                stime: 5,
                threads: 7,
                starttime: 123456,
                vsize: 104857600,
                rss_pages: 2560,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn btime_is_read_from_proc_stat() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(parse_btime(text), Some(1_700_000_000));
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn only_listening_sockets_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:2378 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:1FF5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n\
   2: 0200590A:2378 0100590A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        let ports: Vec<u16> = parse_ports(table, TCP_LISTEN).collect();
        assert_eq!(ports, [9080, 8181]);
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:24B9 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(parse_ports(v6, TCP_LISTEN).collect::<Vec<_>>(), [9401]);
        let udp = "   sl  local_address rem_address   st\n\
  1: 00000000:0035 00000000:0000 07 0\n\
  2: 0200590A:A000 0100590A:0035 01 0\n";
        assert_eq!(parse_ports(udp, UDP_UNCONNECTED).collect::<Vec<_>>(), [53]);
    }

    #[test]
    fn this_process_is_measured() {
        let s = process_stats();
        assert!(s.resident_bytes > 0, "{s:?}");
        assert!(s.open_fds >= 3, "{s:?}");
        assert!(s.max_fds >= s.open_fds, "{s:?}");
        assert!(s.threads >= 1, "{s:?}");
        assert!(s.start_time_seconds > 1.0e9, "{s:?}");
    }

    #[test]
    fn sockets_of_this_process_are_seen() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = l.local_addr().unwrap().port();
        let u = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let udp = u.local_addr().unwrap().port();
        let open = open_ports().unwrap();
        assert!(open.tcp.contains(&tcp), "{open:?}");
        assert!(open.udp.contains(&udp), "{open:?}");
        drop(l);
        assert!(!open_ports().unwrap().tcp.contains(&tcp));
    }
}

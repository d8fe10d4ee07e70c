//! CPU time of processes, from `/proc/<pid>/stat`, so each result says how busy the
//! server and the generator were while it was measured.

use std::time::Instant;

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds a process has used (`"self"` for this one).
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').context("stat format")?.1.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("stat field")?.parse::<f64>()?) };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SEC)
}

/// (busy, total) jiffies of one core, from `/proc/stat`: everything that ran on it,
/// the kernel's network processing included.
fn core_jiffies(core: usize) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{core} ");
    let line = stat.lines().find(|line| line.starts_with(&name)).with_context(|| format!("no {name}in /proc/stat"))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// CPU use of the generator, the server's processes and the server's core between
/// `start` and `cores`.
pub struct CpuMeter {
    server: Vec<String>,
    core: Option<usize>,
    at_start: (f64, f64),
    core_at_start: (u64, u64),
    started: Instant,
}

impl CpuMeter {
    /// Starts measuring this process, the server's `pids` and the server's `core`.
    pub fn start(pids: &[u32], core: Option<usize>) -> Result<Self> {
        let server: Vec<String> = pids.iter().map(u32::to_string).collect();
        let at_start = Self::now(&server)?;
        let core_at_start = core.map(core_jiffies).transpose()?.unwrap_or((0, 0));
        Ok(Self { server, core, at_start, core_at_start, started: Instant::now() })
    }

    fn now(server: &[String]) -> Result<(f64, f64)> {
        let mut total = 0.0;
        for pid in server {
            total += cpu_seconds(pid)?;
        }
        Ok((cpu_seconds("self")?, total))
    }

    /// (generator, server) CPU since the start, in cores (1.0: one core busy all along),
    /// and how busy the server's core was (0 to 1; 0 when no core was given).
    pub fn cores(&self) -> Result<(f64, f64, f64)> {
        let (generator, server) = Self::now(&self.server)?;
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let core_busy = match self.core {
            Some(core) => {
                let (busy, total) = core_jiffies(core)?;
                (busy - self.core_at_start.0) as f64 / (total - self.core_at_start.1).max(1) as f64
            }
            None => 0.0,
        };
        Ok(((generator - self.at_start.0) / wall, (server - self.at_start.1) / wall, core_busy))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn core_jiffies_count_busy_within_total() {
        let (busy, total) = super::core_jiffies(0).unwrap();
        assert!(total > 0 && busy <= total);
    }

    #[test]
    fn a_busy_loop_shows_as_cpu_time() {
        let before = super::cpu_seconds("self").unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let used = super::cpu_seconds("self").unwrap() - before;
        assert!(used > 0.1, "300 ms of spinning used {used} s of CPU");
    }
}

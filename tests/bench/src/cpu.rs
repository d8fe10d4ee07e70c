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

/// CPU use of the generator and the server between `start` and `cores`.
pub struct CpuMeter {
    server: Vec<String>,
    at_start: (f64, f64),
    started: Instant,
}

impl CpuMeter {
    /// Starts measuring this process and the server's `pids`.
    pub fn start(pids: &[u32]) -> Result<Self> {
        let server: Vec<String> = pids.iter().map(u32::to_string).collect();
        let at_start = Self::now(&server)?;
        Ok(Self { server, at_start, started: Instant::now() })
    }

    fn now(server: &[String]) -> Result<(f64, f64)> {
        let mut total = 0.0;
        for pid in server {
            total += cpu_seconds(pid)?;
        }
        Ok((cpu_seconds("self")?, total))
    }

    /// (generator, server) CPU since the start, in cores (1.0: one core busy all along).
    pub fn cores(&self) -> Result<(f64, f64)> {
        let (generator, server) = Self::now(&self.server)?;
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        Ok(((generator - self.at_start.0) / wall, (server - self.at_start.1) / wall))
    }
}

#[cfg(test)]
mod tests {
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

//! What the scenarios read from and ask of the operating system about a
//! process: memory and CPU time from `/proc`, and the open-file limit.

use anyhow::{bail, Context};

/// Resident memory of process `pid`, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

/// Raises this process's soft open-file limit to the hard one; returns it.
pub fn raise_fd_limit() -> anyhow::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur as usize)
}

/// User and system CPU time of process `pid` so far, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may
    // contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("no field {} in {path}", i + 3))
    };
    // SAFETY: sysconf has no preconditions.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / per_s.max(1.0))
}

/// `measure` summed over `pids`; `None` for no pid.
pub fn sum_over<T: std::iter::Sum<T>>(
    pids: &[u32],
    measure: impl Fn(u32) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let values: Vec<T> = pids
        .iter()
        .map(|&pid| measure(pid))
        .collect::<Result<_, _>>()?;
    Ok(Some(values.into_iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process: it has resident memory, and burns CPU when asked to.
    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        let before = cpu_seconds(pid).unwrap();
        // Spin until the clock-tick counter moves (at most 10 s of wall
        // time, whatever else the machine is doing).
        let started = std::time::Instant::now();
        let mut x = 1u64;
        while cpu_seconds(pid).unwrap() <= before
            && started.elapsed() < std::time::Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        assert!(x != 0);
        assert!(cpu_seconds(pid).unwrap() > before, "CPU time went up");
        assert!(rss_bytes(u32::MAX).is_err());
    }
}
